import SwiftProtobuf

/// One unary method: its service, its name and its message types. Servers register and clients
/// call the same value, so a method's name is spelled once, in its service's table.
public struct TTRPCMethod<Request: SwiftProtobuf.Message, Response: SwiftProtobuf.Message>: Sendable {
    public let service: String
    public let name: String

    public init(_ service: String, _ name: String) {
        self.service = service
        self.name = name
    }
}

extension TTRPCService {
    public func register<Req, Resp>(_ method: TTRPCMethod<Req, Resp>, _ handler: @escaping @Sendable (Req) async throws -> Resp) {
        precondition(method.service == name, "\(method.service)/\(method.name) registered on \(name)")
        register(method.name, handler)
    }
}

extension TTRPCClient {
    /// `metadata` goes out as the request's key-value pairs (containerd reads its namespace from one).
    public func call<Req, Resp>(
        _ method: TTRPCMethod<Req, Resp>, _ request: Req, timeout: Duration? = nil,
        metadata: [String: String] = [:]
    ) async throws -> Resp {
        try await call(
            service: method.service, method: method.name, request: request, as: Resp.self, timeout: timeout,
            metadata: metadata)
    }
}

/// containerd's shim v2 Task API (runtime/v2/task/shim.proto).
public enum TaskAPI {
    public static let service = "containerd.task.v2.Task"
    public typealias Empty = Google_Protobuf_Empty
    public static let state = TTRPCMethod<Containerd_Task_V2_StateRequest, Containerd_Task_V2_StateResponse>(service, "State")
    public static let create = TTRPCMethod<Containerd_Task_V2_CreateTaskRequest, Containerd_Task_V2_CreateTaskResponse>(service, "Create")
    public static let start = TTRPCMethod<Containerd_Task_V2_StartRequest, Containerd_Task_V2_StartResponse>(service, "Start")
    public static let delete = TTRPCMethod<Containerd_Task_V2_DeleteRequest, Containerd_Task_V2_DeleteResponse>(service, "Delete")
    public static let pids = TTRPCMethod<Containerd_Task_V2_PidsRequest, Containerd_Task_V2_PidsResponse>(service, "Pids")
    public static let pause = TTRPCMethod<Containerd_Task_V2_PauseRequest, Empty>(service, "Pause")
    public static let resume = TTRPCMethod<Containerd_Task_V2_ResumeRequest, Empty>(service, "Resume")
    public static let checkpoint = TTRPCMethod<Containerd_Task_V2_CheckpointTaskRequest, Empty>(service, "Checkpoint")
    public static let kill = TTRPCMethod<Containerd_Task_V2_KillRequest, Empty>(service, "Kill")
    public static let exec = TTRPCMethod<Containerd_Task_V2_ExecProcessRequest, Empty>(service, "Exec")
    public static let resizePty = TTRPCMethod<Containerd_Task_V2_ResizePtyRequest, Empty>(service, "ResizePty")
    public static let closeIO = TTRPCMethod<Containerd_Task_V2_CloseIORequest, Empty>(service, "CloseIO")
    public static let update = TTRPCMethod<Containerd_Task_V2_UpdateTaskRequest, Empty>(service, "Update")
    public static let wait = TTRPCMethod<Containerd_Task_V2_WaitRequest, Containerd_Task_V2_WaitResponse>(service, "Wait")
    public static let stats = TTRPCMethod<Containerd_Task_V2_StatsRequest, Containerd_Task_V2_StatsResponse>(service, "Stats")
    public static let connect = TTRPCMethod<Containerd_Task_V2_ConnectRequest, Containerd_Task_V2_ConnectResponse>(service, "Connect")
    public static let shutdown = TTRPCMethod<Containerd_Task_V2_ShutdownRequest, Empty>(service, "Shutdown")
}

/// containerd's event intake for shims (api/services/ttrpc/events/v1/events.proto).
public enum EventsAPI {
    public static let service = "containerd.services.events.ttrpc.v1.Events"
    public static let forward = TTRPCMethod<Containerd_Services_Events_Ttrpc_V1_ForwardRequest, Google_Protobuf_Empty>(service, "Forward")
    /// The ttrpc metadata key containerd reads the namespace from.
    public static let namespaceKey = "containerd-namespace-ttrpc"
}

extension Google_Protobuf_Any {
    /// containerd's typeurl wants the bare message name ("containerd.events.TaskExit"), which
    /// SwiftProtobuf's initializers never produce (they prefix type.googleapis.com/).
    public init(bareTypeOf message: some SwiftProtobuf.Message) throws {
        self.init()
        typeURL = type(of: message).protoMessageName
        value = try message.serializedData()
    }
}
