import CVessel

#if canImport(Glibc)
    import Glibc
#endif

/// epoll's event bits (the same on every Linux architecture).
public struct EpollEvents: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let readable = EpollEvents(rawValue: 0x001)
    public static let writable = EpollEvents(rawValue: 0x004)
    public static let error = EpollEvents(rawValue: 0x008)
    public static let hangUp = EpollEvents(rawValue: 0x010)
    /// The peer shut down its writing side.
    public static let readHangUp = EpollEvents(rawValue: 0x2000)
    /// Reported once per change of state: the handler reads or writes until EAGAIN.
    public static let edgeTriggered = EpollEvents(rawValue: 0x8000_0000)
}

/// An epoll loop on the calling thread. Handlers are keyed by a token, not by fd, so that an event
/// still queued for a closed fd never reaches the next owner of that fd number.
public final class EpollLoop {
    public typealias Handler = (EpollEvents) -> Void
    public let fd: Int32
    private var handlers: [UInt64: Handler] = [:]
    private var nextToken: UInt64 = 1
    private var events = [vessel_epoll_event](repeating: vessel_epoll_event(), count: 64)

    public init() throws(LinuxError) {
        fd = try cvessel("epoll_create1") { vessel_epoll_create() }
    }

    deinit { Linux.close(fd) }

    /// Watches `fd` for `events`; the token unregisters it.
    @discardableResult
    public func register(fd watched: Int32, events: EpollEvents, handler: @escaping Handler) throws(LinuxError) -> UInt64 {
        let token = nextToken
        nextToken += 1
        try cvessel("epoll_ctl add") { vessel_epoll_ctl(fd, 1, watched, events.rawValue, token) }
        handlers[token] = handler
        return token
    }

    /// Forgets the registration; call before closing the fd.
    public func unregister(fd watched: Int32, token: UInt64) {
        if watched >= 0 { _ = vessel_epoll_ctl(fd, 2, watched, 0, 0) }
        handlers[token] = nil
    }

    /// Waits up to `timeoutMilliseconds` (-1: without end) and runs the handlers of what came;
    /// returns how many events did.
    @discardableResult
    public func runOnce(timeoutMilliseconds: Int32) -> Int {
        let count = Int(events.withUnsafeMutableBufferPointer { vessel_epoll_wait(fd, $0.baseAddress, 64, timeoutMilliseconds) })
        guard count > 0 else { return 0 }
        for i in 0..<count {
            let event = events[i]
            handlers[event.data]?(EpollEvents(rawValue: event.events))
        }
        return count
    }
}

extension Linux {
    /// A non-blocking, close-on-exec eventfd: one fd to wake an epoll loop from another thread.
    public static func eventFD() throws(LinuxError) -> Int32 {
        try cvessel("eventfd") { vessel_eventfd() }
    }

    /// Adds 1 to the eventfd's counter. Nothing to report: a counter at its limit (EAGAIN) is
    /// signalled already, and an fd that is no eventfd is the caller's bug.
    public static func signal(eventFD fd: Int32) {
        var one: UInt64 = 1
        while Glibc.write(fd, &one, 8) < 0 && Glibc.errno == EINTR {}
    }

    /// Resets the counter to 0 so that the fd is quiet until the next signal; one at 0 already
    /// (EAGAIN) is as good.
    public static func drain(eventFD fd: Int32) {
        var count: UInt64 = 0
        while Glibc.read(fd, &count, 8) < 0 && Glibc.errno == EINTR {}
    }
}
