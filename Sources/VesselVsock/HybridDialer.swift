import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// The host side of hybrid vsock: connect to the backend's Unix socket, ask for a guest port,
/// and hand back the stream once the backend answered `OK <hostport>`.
public enum HybridDialer {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Returns a connected, blocking fd; the caller owns it.
    public static func connect(socketPath: String, port: UInt32, timeoutMilliseconds: Int32 = 20_000) throws -> Int32 {
        let fd: Int32
        do {
            fd = try Linux.connectUnix(socketPath)
        } catch {
            throw Failure(description: "hybrid vsock \(socketPath): \(error)")
        }
        let request = Array("CONNECT \(port)\n".utf8)
        var line: [UInt8] = []
        // MSG_NOSIGNAL: a backend that closes at once (its connection cap) must not SIGPIPE the caller.
        let sent = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == request.count
        let reply = sent ? readLine(fd, into: &line, timeoutMilliseconds: timeoutMilliseconds) : .closed
        let answer = String(decoding: line, as: UTF8.self)
        guard reply == .line, answer.hasPrefix("OK ") else {
            close(fd)
            // A guest that is stopped or hung never answers; one that has no listener refuses.
            let what =
                reply == .timedOut
                ? "did not answer within \(timeoutMilliseconds) ms" : "refused or unreachable\(answer.isEmpty ? "" : " (\(answer))")"
            throw Failure(description: "hybrid vsock \(socketPath): guest port \(port) \(what)")
        }
        return fd
    }

    private enum Reply { case line, timedOut, closed }

    /// Byte by byte: nothing after the newline may be consumed, it belongs to the stream.
    private static func readLine(_ fd: Int32, into line: inout [UInt8], timeoutMilliseconds: Int32) -> Reply {
        while line.count < 64 {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, timeoutMilliseconds)
            if ready == 0 { return .timedOut }
            guard ready > 0 else { return .closed }
            var byte: UInt8 = 0
            guard read(fd, &byte, 1) == 1 else { return .closed }
            if byte == UInt8(ascii: "\n") { return .line }
            line.append(byte)
        }
        return .closed
    }
}
