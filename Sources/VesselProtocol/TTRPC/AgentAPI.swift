import SwiftProtobuf

/// Kata's agent service (agent.proto), the methods Vessel's agent serves: the one table its
/// service registers from and its clients call through.
public enum AgentAPI {
    public static let service = "grpc.AgentService"
    public typealias Empty = Google_Protobuf_Empty
    typealias M = TTRPCMethod

    public static let createSandbox = M<Grpc_CreateSandboxRequest, Empty>(service, "CreateSandbox")
    public static let destroySandbox = M<Grpc_DestroySandboxRequest, Empty>(service, "DestroySandbox")
    public static let createContainer = M<Grpc_CreateContainerRequest, Empty>(service, "CreateContainer")
    public static let startContainer = M<Grpc_StartContainerRequest, Empty>(service, "StartContainer")
    public static let removeContainer = M<Grpc_RemoveContainerRequest, Empty>(service, "RemoveContainer")
    public static let execProcess = M<Grpc_ExecProcessRequest, Empty>(service, "ExecProcess")
    public static let signalProcess = M<Grpc_SignalProcessRequest, Empty>(service, "SignalProcess")
    public static let waitProcess = M<Grpc_WaitProcessRequest, Grpc_WaitProcessResponse>(service, "WaitProcess")
    public static let writeStdin = M<Grpc_WriteStreamRequest, Grpc_WriteStreamResponse>(service, "WriteStdin")
    public static let readStdout = M<Grpc_ReadStreamRequest, Grpc_ReadStreamResponse>(service, "ReadStdout")
    public static let readStderr = M<Grpc_ReadStreamRequest, Grpc_ReadStreamResponse>(service, "ReadStderr")
    public static let closeStdin = M<Grpc_CloseStdinRequest, Empty>(service, "CloseStdin")
    public static let ttyWinResize = M<Grpc_TtyWinResizeRequest, Empty>(service, "TtyWinResize")
    public static let statsContainer = M<Grpc_StatsContainerRequest, Grpc_StatsContainerResponse>(service, "StatsContainer")
    public static let pauseContainer = M<Grpc_PauseContainerRequest, Empty>(service, "PauseContainer")
    public static let resumeContainer = M<Grpc_ResumeContainerRequest, Empty>(service, "ResumeContainer")
    public static let updateContainer = M<Grpc_UpdateContainerRequest, Empty>(service, "UpdateContainer")
    public static let getOOMEvent = M<Grpc_GetOOMEventRequest, Grpc_OOMEvent>(service, "GetOOMEvent")
    public static let getGuestDetails = M<Grpc_GuestDetailsRequest, Grpc_GuestDetailsResponse>(service, "GetGuestDetails")
    public static let setGuestDateTime = M<Grpc_SetGuestDateTimeRequest, Empty>(service, "SetGuestDateTime")
    public static let copyFile = M<Grpc_CopyFileRequest, Empty>(service, "CopyFile")
    public static let updateInterface = M<Grpc_UpdateInterfaceRequest, Types_Interface>(service, "UpdateInterface")
    public static let updateRoutes = M<Grpc_UpdateRoutesRequest, Grpc_Routes>(service, "UpdateRoutes")
    public static let listInterfaces = M<Grpc_ListInterfacesRequest, Grpc_Interfaces>(service, "ListInterfaces")
    public static let listRoutes = M<Grpc_ListRoutesRequest, Grpc_Routes>(service, "ListRoutes")
    public static let addARPNeighbors = M<Grpc_AddARPNeighborsRequest, Empty>(service, "AddARPNeighbors")
}

/// The agent's health service (health.proto).
public enum HealthAPI {
    public static let service = "grpc.Health"
    public static let check = TTRPCMethod<Grpc_CheckRequest, Grpc_HealthCheckResponse>(service, "Check")
    public static let version = TTRPCMethod<Grpc_CheckRequest, Grpc_VersionCheckResponse>(service, "Version")
}
