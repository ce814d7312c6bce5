import Foundation
import VesselLinux

/// A minimal QMP client (QEMU's JSON control socket): enough to ask for the run state and to quit
/// a guest that did not power itself off.
public struct QMPClient {
    let fd: Int32

    /// Connects, reads the greeting and negotiates capabilities.
    public init(socketPath: String, timeoutMilliseconds: Int32 = 2_000) throws {
        let fd: Int32
        do { fd = try Linux.connectUnix(socketPath) } catch { throw VMError("QMP: \(error)") }
        var timeout = timeval(tv_sec: Int(timeoutMilliseconds / 1000), tv_usec: Int(timeoutMilliseconds % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        self.fd = fd
        _ = try readMessage()  // {"QMP": {...}}
        _ = try execute("qmp_capabilities")
    }

    public func close() { Glibc.close(fd) }

    /// Sends one command and returns its "return" object (events that arrive first are skipped).
    public func execute(_ command: String) throws -> [String: Any] {
        let line = "{\"execute\": \"\(command)\"}\n"
        guard line.withCString({ write(fd, $0, strlen($0)) }) > 0 else { throw VMError("QMP: write failed") }
        while true {
            let message = try readMessage()
            if let error = message["error"] as? [String: Any] { throw VMError("QMP \(command): \(error["desc"] ?? error)") }
            if let result = message["return"] { return result as? [String: Any] ?? [:] }
        }
    }

    /// "running", "paused", "shutdown"...
    public func status() throws -> String { try execute("query-status")["status"] as? String ?? "unknown" }

    public func quit() throws { _ = try? execute("quit") }

    private func readMessage() throws -> [String: Any] {
        var line = [UInt8]()
        var byte: UInt8 = 0
        while true {
            let n = read(fd, &byte, 1)
            guard n == 1 else { throw VMError("QMP: connection closed") }
            if byte == UInt8(ascii: "\n") { break }
            line.append(byte)
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
            throw VMError("QMP: not JSON: \(String(decoding: line, as: UTF8.self))")
        }
        return object
    }
}
