import Foundation
import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// A listening Unix stream socket (close-on-exec, mode 0600) whose accept has a bound: for what
/// connects to a test (a guest's connection through the hybrid vsock backend, a console socket).
public final class UnixListener: Sendable {
    public let fd: Int32
    public let path: String

    public init(path: String, backlog: Int32 = 4) throws {
        self.path = path
        fd = try Linux.listenUnix(path, backlog: backlog)
    }

    /// The next connection (blocking, close-on-exec), waiting at most `timeout` seconds.
    public func accept(timeout: Double) throws -> Int32 {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, Int32(timeout * 1000)) == 1 else {
            throw TestSupportError("nobody connected to \(path) within \(Int(timeout)) s")
        }
        let connection = Glibc.accept(fd, nil, nil)
        guard connection >= 0 else { throw TestSupportError("accept on \(path): \(String(cString: strerror(errno)))") }
        _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
        return connection
    }

    public func close() { Linux.close(fd) }
}

/// What `fd` delivered until `needle` showed up, it ended, or `timeout` seconds passed.
public func readUntil(_ fd: Int32, _ needle: String, timeout: Double) -> String {
    var text = ""
    let deadline = ContinuousClock.now + .seconds(timeout)
    var buffer = [UInt8](repeating: 0, count: 4096)
    while !text.contains(needle) && ContinuousClock.now < deadline {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ready = poll(&p, 1, 200)
        if ready < 0 && errno == EINTR { continue }
        guard ready >= 0 else { break }
        guard p.revents != 0 else { continue }
        let n = read(fd, &buffer, buffer.count)
        if n <= 0 { break }
        text += String(decoding: buffer[0..<n], as: UTF8.self)
    }
    return text
}
