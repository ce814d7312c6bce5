import FoundationEssentials
import NIOCore
import SwiftProtobuf
import VesselProtocol

/// Typed calls to a Vessel (or Kata) agent over one ttrpc connection: what the host runtime, the
/// shim, the tests and the benchmarks use instead of raw method names.
public final class AgentClient: Sendable {
    public typealias Empty = Google_Protobuf_Empty

    public let ttrpc: TTRPCClient
    public let timeout: Duration?

    public init(_ ttrpc: TTRPCClient, timeout: Duration? = nil) {
        self.ttrpc = ttrpc
        self.timeout = timeout
    }

    public static func connect(unixPath: String, group: any EventLoopGroup, timeout: Duration? = nil) async throws -> AgentClient {
        AgentClient(try await TTRPCClient.connect(unixPath: unixPath, group: group), timeout: timeout)
    }

    public func close() async { await ttrpc.close() }

    /// Any method of `AgentAPI` or `HealthAPI`, with this client's timeout.
    @discardableResult
    public func call<Req, Resp>(_ method: TTRPCMethod<Req, Resp>, _ request: Req) async throws -> Resp {
        try await ttrpc.call(method, request, timeout: timeout)
    }

    public func check() async throws -> Grpc_HealthCheckResponse { try await call(HealthAPI.check, Grpc_CheckRequest()) }

    public func version() async throws -> Grpc_VersionCheckResponse { try await call(HealthAPI.version, Grpc_CheckRequest()) }

    /// `stdio`: the ids of streams dialed to the agent's stdio port (Vessel's agent only); none
    /// leaves the process's stdio to ReadStdout/WriteStdin.
    public func createContainer(_ id: String, spec: Grpc_Spec, stdio: StdioPorts = StdioPorts()) async throws {
        try await call(
            AgentAPI.createContainer,
            Grpc_CreateContainerRequest.with {
                $0.containerID = id
                $0.oci = spec
                $0.stdinPort = stdio.stdin
                $0.stdoutPort = stdio.stdout
                $0.stderrPort = stdio.stderr
            })
    }

    public func startContainer(_ id: String) async throws {
        try await call(AgentAPI.startContainer, Grpc_StartContainerRequest.with { $0.containerID = id })
    }

    public func removeContainer(_ id: String, timeout seconds: UInt32 = 0) async throws {
        try await call(
            AgentAPI.removeContainer,
            Grpc_RemoveContainerRequest.with {
                $0.containerID = id
                $0.timeout = seconds
            })
    }

    public func exec(_ id: String, _ execID: String, process: Grpc_Process, stdio: StdioPorts = StdioPorts()) async throws {
        try await call(
            AgentAPI.execProcess,
            Grpc_ExecProcessRequest.with {
                $0.containerID = id
                $0.execID = execID
                $0.process = process
                $0.stdinPort = stdio.stdin
                $0.stdoutPort = stdio.stdout
                $0.stderrPort = stdio.stderr
            })
    }

    /// Exit code, or 128+signal.
    public func wait(_ id: String, _ execID: String = "") async throws -> Int32 {
        try await call(
            AgentAPI.waitProcess,
            Grpc_WaitProcessRequest.with {
                $0.containerID = id
                $0.execID = execID
            }
        ).status
    }

    /// An empty execID signals every process of the container.
    public func signal(_ id: String, _ execID: String = "", signal: Int32) async throws {
        try await call(
            AgentAPI.signalProcess,
            Grpc_SignalProcessRequest.with {
                $0.containerID = id
                $0.execID = execID
                $0.signal = UInt32(signal)
            })
    }

    /// Up to `max` bytes; empty at EOF.
    public func read(_ id: String, _ execID: String = "", stderr: Bool = false, max: UInt32 = 32 << 10) async throws -> [UInt8] {
        let request = Grpc_ReadStreamRequest.with {
            $0.containerID = id
            $0.execID = execID
            $0.len = max
        }
        return [UInt8](try await call(stderr ? AgentAPI.readStderr : AgentAPI.readStdout, request).data)
    }

    public func readAll(_ id: String, _ execID: String = "", stderr: Bool = false) async throws -> [UInt8] {
        var out: [UInt8] = []
        while true {
            let chunk = try await read(id, execID, stderr: stderr)
            if chunk.isEmpty { return out }
            out += chunk
        }
    }

    @discardableResult
    public func writeStdin(_ id: String, _ execID: String = "", _ bytes: [UInt8]) async throws -> Int {
        let request = Grpc_WriteStreamRequest.with {
            $0.containerID = id
            $0.execID = execID
            $0.data = Data(bytes)
        }
        return Int(try await call(AgentAPI.writeStdin, request).len)
    }

    public func closeStdin(_ id: String, _ execID: String = "") async throws {
        try await call(
            AgentAPI.closeStdin,
            Grpc_CloseStdinRequest.with {
                $0.containerID = id
                $0.execID = execID
            })
    }

    public func resize(_ id: String, _ execID: String = "", rows: UInt32, columns: UInt32) async throws {
        try await call(
            AgentAPI.ttyWinResize,
            Grpc_TtyWinResizeRequest.with {
                $0.containerID = id
                $0.execID = execID
                $0.row = rows
                $0.column = columns
            })
    }

    public func stats(_ id: String) async throws -> Grpc_StatsContainerResponse {
        try await call(AgentAPI.statsContainer, Grpc_StatsContainerRequest.with { $0.containerID = id })
    }

    public func pause(_ id: String) async throws {
        try await call(AgentAPI.pauseContainer, Grpc_PauseContainerRequest.with { $0.containerID = id })
    }

    public func resume(_ id: String) async throws {
        try await call(AgentAPI.resumeContainer, Grpc_ResumeContainerRequest.with { $0.containerID = id })
    }
}

/// Stream ids for a process's stdio (0: that fd has no stream).
public struct StdioPorts: Sendable, Equatable {
    public var stdin: UInt32 = 0
    public var stdout: UInt32 = 0
    public var stderr: UInt32 = 0

    public init(stdin: UInt32 = 0, stdout: UInt32 = 0, stderr: UInt32 = 0) {
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
    }
}

/// The agent's answer to each stdio stream it accepts: the stream's id, 4 bytes big-endian,
/// never 0, which CreateContainer/ExecProcess name back.
public enum StdioStreamGreeting {
    public static let length = 4

    /// nil for anything the agent never sends (a short read, an id 0).
    public static func id(_ bytes: [UInt8]) -> UInt32? {
        guard bytes.count == length else { return nil }
        let id = bytes.reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        return id == 0 ? nil : id
    }
}
