import FoundationEssentials
import SwiftProtobuf
import VesselProtocol

/// The ttrpc face of the agent: `grpc.AgentService` and `grpc.Health`. Each handler only
/// translates the request; the work and the shared validation live in `Sandbox`.
enum AgentService {
    typealias Empty = Google_Protobuf_Empty

    static func make(_ sandbox: Sandbox, options: AgentOptions, termination: Termination) -> [TTRPCService] {
        let agent = TTRPCService(name: AgentAPI.service)
        func on<Req, Resp>(_ method: TTRPCMethod<Req, Resp>, _ body: @escaping @Sendable (Req) async throws -> Resp) {
            agent.register(method) { (request: Req) async throws -> Resp in
                do { return try await body(request) } catch { throw AgentError.status(for: error) }
            }
        }

        on(AgentAPI.createSandbox) { (r: Grpc_CreateSandboxRequest) in
            try await sandbox.createSandbox(r)
            return Empty()
        }
        on(AgentAPI.destroySandbox) { (_: Grpc_DestroySandboxRequest) in
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
        on(AgentAPI.createContainer) { (r: Grpc_CreateContainerRequest) in
            try await sandbox.createContainer(r)
            return Empty()
        }
        on(AgentAPI.startContainer) { (r: Grpc_StartContainerRequest) in
            try await sandbox.startContainer(r.containerID)
            return Empty()
        }
        on(AgentAPI.removeContainer) { (r: Grpc_RemoveContainerRequest) in
            try await sandbox.removeContainer(r.containerID, timeout: r.timeout)
            return Empty()
        }
        on(AgentAPI.execProcess) { (r: Grpc_ExecProcessRequest) in
            try await sandbox.execProcess(r)
            return Empty()
        }
        on(AgentAPI.signalProcess) { (r: Grpc_SignalProcessRequest) in
            try await sandbox.signalProcess(r)
            return Empty()
        }
        on(AgentAPI.waitProcess) { (r: Grpc_WaitProcessRequest) in
            var response = Grpc_WaitProcessResponse()
            response.status = try await sandbox.wait(r.containerID, r.execID)
            return response
        }
        on(AgentAPI.writeStdin) { (r: Grpc_WriteStreamRequest) in
            var response = Grpc_WriteStreamResponse()
            response.len = UInt32(try await sandbox.process(r.containerID, r.execID).io.writeStdin([UInt8](r.data)))
            return response
        }
        on(AgentAPI.readStdout) { (r: Grpc_ReadStreamRequest) in
            try await readResponse(sandbox.read(r.containerID, r.execID, stderr: false, max: readSize(r.len)))
        }
        on(AgentAPI.readStderr) { (r: Grpc_ReadStreamRequest) in
            try await readResponse(sandbox.read(r.containerID, r.execID, stderr: true, max: readSize(r.len)))
        }
        on(AgentAPI.closeStdin) { (r: Grpc_CloseStdinRequest) in
            try await sandbox.process(r.containerID, r.execID).io.closeStdin()
            return Empty()
        }
        on(AgentAPI.ttyWinResize) { (r: Grpc_TtyWinResizeRequest) in
            try await sandbox.process(r.containerID, r.execID).io.resize(rows: UInt16(clamping: r.row), columns: UInt16(clamping: r.column))
            return Empty()
        }
        on(AgentAPI.statsContainer) { (r: Grpc_StatsContainerRequest) in try await sandbox.stats(r.containerID) }
        on(AgentAPI.pauseContainer) { (r: Grpc_PauseContainerRequest) in
            try await sandbox.setPaused(r.containerID, true)
            return Empty()
        }
        on(AgentAPI.resumeContainer) { (r: Grpc_ResumeContainerRequest) in
            try await sandbox.setPaused(r.containerID, false)
            return Empty()
        }
        on(AgentAPI.updateContainer) { (r: Grpc_UpdateContainerRequest) in
            try await sandbox.update(r.containerID, r.resources)
            return Empty()
        }
        on(AgentAPI.getOOMEvent) { (_: Grpc_GetOOMEventRequest) in
            var event = Grpc_OOMEvent()
            event.containerID = try await sandbox.nextOOMEvent()
            return event
        }
        on(AgentAPI.getGuestDetails) { (r: Grpc_GuestDetailsRequest) in GuestInfo.details(r, initDaemon: !options.hostMode) }
        on(AgentAPI.setGuestDateTime) { (r: Grpc_SetGuestDateTimeRequest) in
            try GuestInfo.setClock(r, hostMode: options.hostMode)
            return Empty()
        }
        on(AgentAPI.copyFile) { (r: Grpc_CopyFileRequest) in
            try CopyFile.perform(r, base: options.runDirectory)
            return Empty()
        }
        on(AgentAPI.updateInterface) { (r: Grpc_UpdateInterfaceRequest) in
            try GuestNetwork.updateInterface(r.interface, pod: await sandbox.podNetwork)
        }
        on(AgentAPI.updateRoutes) { (r: Grpc_UpdateRoutesRequest) in
            let routes = try GuestNetwork.updateRoutes(r.routes.routes, pod: await sandbox.podNetwork)
            return Grpc_Routes.with { $0.routes = routes }
        }
        on(AgentAPI.listInterfaces) { (_: Grpc_ListInterfacesRequest) in
            let interfaces = try GuestNetwork.listInterfaces(pod: await sandbox.podNetwork)
            return Grpc_Interfaces.with { $0.interfaces = interfaces }
        }
        on(AgentAPI.listRoutes) { (_: Grpc_ListRoutesRequest) in
            let routes = try GuestNetwork.listRoutes(pod: await sandbox.podNetwork)
            return Grpc_Routes.with { $0.routes = routes }
        }
        on(AgentAPI.addARPNeighbors) { (r: Grpc_AddARPNeighborsRequest) in
            try GuestNetwork.addNeighbours(r.neighbors.arpneighbors, pod: await sandbox.podNetwork)
            return Empty()
        }

        let health = TTRPCService(name: HealthAPI.service)
        health.register(HealthAPI.check) { _ in
            var response = Grpc_HealthCheckResponse()
            response.status = .serving
            return response
        }
        health.register(HealthAPI.version) { _ in
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
