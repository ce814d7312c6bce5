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
        let ok =
            request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == request.count
            && readLine(fd, into: &line, timeoutMilliseconds: timeoutMilliseconds)
        let answer = String(decoding: line, as: UTF8.self)
        guard ok, answer.hasPrefix("OK ") else {
            close(fd)
            throw Failure(
                description: "hybrid vsock \(socketPath): guest port \(port) refused or unreachable\(answer.isEmpty ? "" : " (\(answer))")")
        }
        return fd
    }

    /// Byte by byte: nothing after the newline may be consumed, it belongs to the stream.
    private static func readLine(_ fd: Int32, into line: inout [UInt8], timeoutMilliseconds: Int32) -> Bool {
        while line.count < 64 {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, timeoutMilliseconds) > 0 else { return false }
            var byte: UInt8 = 0
            guard read(fd, &byte, 1) == 1 else { return false }
            if byte == UInt8(ascii: "\n") { return true }
            line.append(byte)
        }
        return false
    }
}
