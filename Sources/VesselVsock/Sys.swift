import CVesselVsock
import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

@inline(__always) func nowNs() -> UInt64 { cvv_monotonic_ns() }
@inline(__always) func nowMs() -> UInt64 { cvv_monotonic_ns() / 1_000_000 }

func closeFd(_ fd: Int32) {
    if fd >= 0 { _ = cvv_close(fd) }
}

func unixListen(_ path: String, backlog: Int32 = 128) throws -> Int32 {
    let fd = path.withCString { cvv_unix_listen($0, backlog) }
    if fd < 0 { throw LinuxError(stage: "listen \(path)", errno: -fd) }
    return fd
}

/// A non-blocking connect to a Unix socket; returns fd or -errno.
func unixConnect(_ path: String) -> Int32 {
    path.withCString { cvv_unix_connect($0) }
}

/// An epoll loop; handlers are keyed by token so that stale events for a closed fd never reach a new owner.
final class EventLoop {
    typealias Handler = (UInt32) -> Void
    let epfd: Int32
    private var handlers: [UInt64: Handler] = [:]
    private var nextToken: UInt64 = 1
    private var events = [cvv_event](repeating: cvv_event(), count: 64)

    init() throws {
        let fd = cvv_epoll_create()
        if fd < 0 { throw LinuxError(stage: "epoll_create1", errno: -fd) }
        epfd = fd
    }

    deinit { closeFd(epfd) }

    @discardableResult
    func register(fd: Int32, events: UInt32, handler: @escaping Handler) throws -> UInt64 {
        let token = nextToken
        nextToken += 1
        let rc = cvv_epoll_ctl(epfd, CVV_CTL_ADD, fd, events, token)
        if rc < 0 { throw LinuxError(stage: "epoll_ctl add", errno: -rc) }
        handlers[token] = handler
        return token
    }

    func modify(fd: Int32, token: UInt64, events: UInt32) {
        _ = cvv_epoll_ctl(epfd, CVV_CTL_MOD, fd, events, token)
    }

    /// Removes the registration (call before closing the fd).
    func unregister(fd: Int32, token: UInt64) {
        if fd >= 0 { _ = cvv_epoll_ctl(epfd, CVV_CTL_DEL, fd, 0, 0) }
        handlers[token] = nil
    }

    /// Waits up to `timeoutMs` (-1: forever) and dispatches events. Returns the number of events.
    @discardableResult
    func runOnce(timeoutMs: Int32) -> Int {
        let n = events.withUnsafeMutableBufferPointer { cvv_epoll_wait(epfd, $0.baseAddress, 64, timeoutMs) }
        if n <= 0 { return 0 }
        for i in 0..<Int(n) {
            let ev = events[i]
            if let h = handlers[ev.data] { h(ev.events) }
        }
        return Int(n)
    }
}
