import FoundationEssentials
import SwiftProtobuf
import VesselProtocol

/// The ttrpc face of the agent: `grpc.AgentService` and `grpc.Health`. Each handler only
/// translates the request; the work and the shared validation live in `Sandbox`.
enum AgentService {
    typealias Empty = Google_Protobuf_Empty

    static func make(_ sandbox: Sandbox, options: AgentOptions, termination: Termination) -> [TTRPCService] {
        let agent = TTRPCService(name: "grpc.AgentService")
        func on<Req: Message, Resp: Message>(_ method: String, _ body: @escaping @Sendable (Req) async throws -> Resp) {
            agent.register(method) { (request: Req) async throws -> Resp in
                do { return try await body(request) } catch { throw AgentError.status(for: error) }
            }
        }

        on("CreateSandbox") { (r: Grpc_CreateSandboxRequest) in try await sandbox.createSandbox(r); return Empty() }
        on("DestroySandbox") { (_: Grpc_DestroySandboxRequest) in
            await sandbox.destroySandbox()
            // In the guest this ends the VM; let the response leave first.
            if !options.hostMode {
                Task {
                    try? await Task.sleep(for: .milliseconds(50))
                    termination.request()
                }
            }
            return Empty()
        }
        on("CreateContainer") { (r: Grpc_CreateContainerRequest) in try await sandbox.createContainer(r); return Empty() }
        on("StartContainer") { (r: Grpc_StartContainerRequest) in try await sandbox.startContainer(r.containerID); return Empty() }
        on("RemoveContainer") { (r: Grpc_RemoveContainerRequest) in
            try await sandbox.removeContainer(r.containerID, timeout: r.timeout)
            return Empty()
        }
        on("ExecProcess") { (r: Grpc_ExecProcessRequest) in try await sandbox.execProcess(r); return Empty() }
        on("SignalProcess") { (r: Grpc_SignalProcessRequest) in try await sandbox.signalProcess(r); return Empty() }
        on("WaitProcess") { (r: Grpc_WaitProcessRequest) in
            var response = Grpc_WaitProcessResponse()
            response.status = try await sandbox.wait(r.containerID, r.execID)
            return response
        }
        on("WriteStdin") { (r: Grpc_WriteStreamRequest) in
            var response = Grpc_WriteStreamResponse()
            response.len = UInt32(try await sandbox.process(r.containerID, r.execID).io.writeStdin([UInt8](r.data)))
            return response
        }
        on("ReadStdout") { (r: Grpc_ReadStreamRequest) in
            try await readResponse(sandbox.read(r.containerID, r.execID, stderr: false, max: readSize(r.len)))
        }
        on("ReadStderr") { (r: Grpc_ReadStreamRequest) in
            try await readResponse(sandbox.read(r.containerID, r.execID, stderr: true, max: readSize(r.len)))
        }
        on("CloseStdin") { (r: Grpc_CloseStdinRequest) in
            try await sandbox.process(r.containerID, r.execID).io.closeStdin()
            return Empty()
        }
        on("TtyWinResize") { (r: Grpc_TtyWinResizeRequest) in
            try await sandbox.process(r.containerID, r.execID).io.resize(rows: UInt16(clamping: r.row), columns: UInt16(clamping: r.column))
            return Empty()
        }
        on("StatsContainer") { (r: Grpc_StatsContainerRequest) in try await sandbox.stats(r.containerID) }
        on("PauseContainer") { (r: Grpc_PauseContainerRequest) in try await sandbox.setPaused(r.containerID, true); return Empty() }
        on("ResumeContainer") { (r: Grpc_ResumeContainerRequest) in try await sandbox.setPaused(r.containerID, false); return Empty() }
        on("UpdateContainer") { (r: Grpc_UpdateContainerRequest) in try await sandbox.update(r.containerID, r.resources); return Empty() }
        on("GetOOMEvent") { (_: Grpc_GetOOMEventRequest) in
            var event = Grpc_OOMEvent()
            event.containerID = try await sandbox.nextOOMEvent()
            return event
        }
        on("GetGuestDetails") { (r: Grpc_GuestDetailsRequest) in GuestInfo.details(r, initDaemon: !options.hostMode) }
        on("SetGuestDateTime") { (r: Grpc_SetGuestDateTimeRequest) in
            try GuestInfo.setClock(r, hostMode: options.hostMode)
            return Empty()
        }
        on("CopyFile") { (r: Grpc_CopyFileRequest) in try CopyFile.perform(r, base: options.runDirectory); return Empty() }
        on("UpdateInterface") { (r: Grpc_UpdateInterfaceRequest) in try GuestNetwork.updateInterface(r.interface, pod: await sandbox.podNetwork) }
        on("UpdateRoutes") { (r: Grpc_UpdateRoutesRequest) in
            let routes = try GuestNetwork.updateRoutes(r.routes.routes, pod: await sandbox.podNetwork)
            return Grpc_Routes.with { $0.routes = routes }
        }
        on("ListInterfaces") { (_: Grpc_ListInterfacesRequest) in
            let interfaces = try GuestNetwork.listInterfaces(pod: await sandbox.podNetwork)
            return Grpc_Interfaces.with { $0.interfaces = interfaces }
        }
        on("ListRoutes") { (_: Grpc_ListRoutesRequest) in
            let routes = try GuestNetwork.listRoutes(pod: await sandbox.podNetwork)
            return Grpc_Routes.with { $0.routes = routes }
        }
        on("AddARPNeighbors") { (r: Grpc_AddARPNeighborsRequest) in
            try GuestNetwork.addNeighbours(r.neighbors.arpneighbors, pod: await sandbox.podNetwork)
            return Empty()
        }

        let health = TTRPCService(name: "grpc.Health")
        health.register("Check") { (_: Grpc_CheckRequest) async throws -> Grpc_HealthCheckResponse in
            var response = Grpc_HealthCheckResponse()
            response.status = .serving
            return response
        }
        health.register("Version") { (_: Grpc_CheckRequest) async throws -> Grpc_VersionCheckResponse in
            var response = Grpc_VersionCheckResponse()
            response.agentVersion = GuestInfo.version
            response.grpcVersion = "ttrpc"
            return response
        }
        return [agent, health]
    }

    /// Kata's shim asks for its buffer size; 0 would mean "nothing", so give a sane default.
    private static func readSize(_ len: UInt32) -> Int {
        len == 0 ? 32 << 10 : Int(min(len, 4 << 20 - 64))
    }

    private static func readResponse(_ bytes: [UInt8]) -> Grpc_ReadStreamResponse {
        var response = Grpc_ReadStreamResponse()
        response.data = Data(bytes)
        return response
    }
}
