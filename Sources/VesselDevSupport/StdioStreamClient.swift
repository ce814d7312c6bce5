import VesselAgentClient
import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// A blocking client end of one of the agent's stdio streams (`--stdio-addr`): connected, and
/// named by the id the agent writes first. For the host-mode tests and `make bench`.
public struct StdioStreamClient: Sendable {
    public let fd: Int32
    public let id: UInt32

    public static func dial(_ path: String) throws -> StdioStreamClient {
        let fd = try Linux.connectUnix(path)
        do {
            guard let bytes = try Linux.readExactly(fd, StdioStreamGreeting.length, timeoutMilliseconds: 10_000) else {
                throw DevSupportError("the agent closed a stdio stream before naming it")
            }
            guard let id = StdioStreamGreeting.id(bytes) else { throw DevSupportError("the agent named a stdio stream 0") }
            return StdioStreamClient(fd: fd, id: id)
        } catch {
            Linux.close(fd)
            throw error
        }
    }

    /// Everything until EOF, on a thread of its own: a read may wait for the process, and the
    /// cooperative pool (two threads here) must stay free.
    public func readAll() async throws -> [UInt8] {
        let fd = fd
        return try await Linux.blocking { Result { try Linux.readAll(fd) } }.get()
    }

    /// Bytes until EOF, counted, not kept.
    public func drain() async throws -> Int {
        let fd = fd
        return try await Linux.blocking {
            Result { () throws(LinuxError) -> Int in
                var total = 0
                var chunk = [UInt8](repeating: 0, count: 1 << 20)
                while true {
                    let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                    if n == 0 { return total }
                    if n < 0 { throw LinuxError(stage: "read") }
                    total += n
                }
            }
        }.get()
    }

    public func write(_ bytes: [UInt8]) async throws {
        let fd = fd
        try await Linux.blocking { Result { try Linux.writeAll(fd, bytes) } }.get()
    }

    /// Half-closes: the agent sees the end of the process's input.
    public func endInput() { shutdown(fd, Int32(SHUT_WR)) }
    public func close() { Linux.close(fd) }
}
