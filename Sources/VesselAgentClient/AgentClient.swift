import FoundationEssentials
import NIOCore
import SwiftProtobuf
import VesselProtocol

/// Typed calls to a Vessel (or Kata) agent over one ttrpc connection: what the host runtime, the
/// shim, the tests and the benchmarks use instead of raw method names.
public final class AgentClient: Sendable {
    public typealias Empty = Google_Protobuf_Empty
    public static let service = "grpc.AgentService"

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

    @discardableResult
    public func call<Req: Message, Resp: Message>(_ method: String, _ request: Req, as: Resp.Type = Empty.self) async throws -> Resp {
        try await ttrpc.call(service: Self.service, method: method, request: request, as: Resp.self, timeout: timeout)
    }

    public func check() async throws -> Grpc_HealthCheckResponse {
        try await ttrpc.call(service: "grpc.Health", method: "Check", request: Grpc_CheckRequest(), as: Grpc_HealthCheckResponse.self, timeout: timeout)
    }

    public func version() async throws -> Grpc_VersionCheckResponse {
        try await ttrpc.call(service: "grpc.Health", method: "Version", request: Grpc_CheckRequest(), as: Grpc_VersionCheckResponse.self, timeout: timeout)
    }

    public func createContainer(_ id: String, spec: Grpc_Spec) async throws {
        try await call("CreateContainer", Grpc_CreateContainerRequest.with { $0.containerID = id; $0.oci = spec })
    }

    public func startContainer(_ id: String) async throws {
        try await call("StartContainer", Grpc_StartContainerRequest.with { $0.containerID = id })
    }

    public func removeContainer(_ id: String, timeout seconds: UInt32 = 0) async throws {
        try await call("RemoveContainer", Grpc_RemoveContainerRequest.with { $0.containerID = id; $0.timeout = seconds })
    }

    public func exec(_ id: String, _ execID: String, process: Grpc_Process) async throws {
        try await call("ExecProcess", Grpc_ExecProcessRequest.with { $0.containerID = id; $0.execID = execID; $0.process = process })
    }

    /// Exit code, or 128+signal.
    public func wait(_ id: String, _ execID: String = "") async throws -> Int32 {
        try await call("WaitProcess", Grpc_WaitProcessRequest.with { $0.containerID = id; $0.execID = execID },
                       as: Grpc_WaitProcessResponse.self).status
    }

    /// An empty execID signals every process of the container.
    public func signal(_ id: String, _ execID: String = "", signal: Int32) async throws {
        try await call("SignalProcess", Grpc_SignalProcessRequest.with { $0.containerID = id; $0.execID = execID; $0.signal = UInt32(signal) })
    }

    /// Up to `max` bytes; empty at EOF.
    public func read(_ id: String, _ execID: String = "", stderr: Bool = false, max: UInt32 = 32 << 10) async throws -> [UInt8] {
        let request = Grpc_ReadStreamRequest.with { $0.containerID = id; $0.execID = execID; $0.len = max }
        return [UInt8](try await call(stderr ? "ReadStderr" : "ReadStdout", request, as: Grpc_ReadStreamResponse.self).data)
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
        let request = Grpc_WriteStreamRequest.with { $0.containerID = id; $0.execID = execID; $0.data = Data(bytes) }
        return Int(try await call("WriteStdin", request, as: Grpc_WriteStreamResponse.self).len)
    }

    public func closeStdin(_ id: String, _ execID: String = "") async throws {
        try await call("CloseStdin", Grpc_CloseStdinRequest.with { $0.containerID = id; $0.execID = execID })
    }

    public func resize(_ id: String, _ execID: String = "", rows: UInt32, columns: UInt32) async throws {
        try await call("TtyWinResize", Grpc_TtyWinResizeRequest.with { $0.containerID = id; $0.execID = execID; $0.row = rows; $0.column = columns })
    }

    public func stats(_ id: String) async throws -> Grpc_StatsContainerResponse {
        try await call("StatsContainer", Grpc_StatsContainerRequest.with { $0.containerID = id }, as: Grpc_StatsContainerResponse.self)
    }

    public func pause(_ id: String) async throws {
        try await call("PauseContainer", Grpc_PauseContainerRequest.with { $0.containerID = id })
    }

    public func resume(_ id: String) async throws {
        try await call("ResumeContainer", Grpc_ResumeContainerRequest.with { $0.containerID = id })
    }
}
