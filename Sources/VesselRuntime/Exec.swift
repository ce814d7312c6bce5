import Foundation
import VesselAgentClient
import VesselLinux
import VesselProtocol

extension Runtime {
    /// The process `vessel exec` runs: `--process FILE` (an OCI process JSON), or the container's
    /// own process with the given args, tty, cwd, env and user.
    public func execProcess(id: String, processFile: String?, args: [String], tty: Bool, cwd: String?, env: [String],
                            user: (uid: UInt32, gid: UInt32)?) throws(RuntimeError) -> Grpc_Process {
        if let processFile {
            guard let data = FileManager.default.contents(atPath: processFile) else { throw RuntimeError("--process \(processFile): cannot read file") }
            do {
                return try JSONDecoder().decode(OCISpec.Process.self, from: data).grpc()
            } catch let error as DecodingError {
                throw RuntimeError("--process \(processFile): \(describe(error))")
            } catch {
                throw RuntimeError("--process \(processFile): \(error)")
            }
        }
        if args.isEmpty { throw RuntimeError("exec: no command given (args or --process)") }
        var process = try store.guestSpec(id).process
        process.args = args
        process.terminal = tty
        if let cwd { process.cwd = cwd }
        process.env += env
        if let user { process.user.uid = user.uid; process.user.gid = user.gid }
        return process
    }

    /// Runs `process` in the container and relays its stdio here; returns its exit status. With
    /// `reportOn` (the detached exec helper), "ok" goes to that fd once the process runs.
    public func exec(id: String, execID: String, process: Grpc_Process, consoleSocket: String?, reportOn: Int32? = nil) async throws(RuntimeError) -> Int32 {
        let state = try store.load(id)
        guard state.status == .running || state.status == .created else {
            throw RuntimeError("cannot exec in a \(state.status.rawValue) container")
        }
        let ttrpc = try await SandboxVM.connectAgent(paths: store.paths(id), group: .singleton, timeoutMilliseconds: 5_000)
        let agent = AgentClient(ttrpc, timeout: .seconds(Int64(config.agent.requestTimeout)))
        defer { Task { await agent.close() } }
        try await during("exec in container \(id)") { try await agent.exec(id, execID, process: process) }
        let terminal: Int32? = process.terminal ? try consoleSocket.map(ConsoleSocket.sendPTYMaster(to:)) ?? 0 : nil
        if let reportOn {
            _ = try? Linux.writeAll(reportOn, Array("ok\n".utf8))
            close(reportOn)
        }
        let streams = AgentClient(ttrpc, timeout: nil)
        let relay = StdioRelay(agent: streams, containerID: id, execID: execID)
        relay.start(terminal: terminal)
        let forwarder = SignalForwarder(agent: agent, containerID: id, execID: execID, terminal: terminal)
        let status = (try? await streams.wait(id, execID)) ?? 255
        relay.finish()
        withExtendedLifetime(forwarder) {}
        return status
    }

    /// `exec --detach`: a helper process runs the exec and relays; returns its pid once the process runs.
    public func execDetached(id: String, execID: String, process: Grpc_Process, consoleSocket: String?) throws(RuntimeError) -> Int32 {
        let file = store.paths(id).directory + "/exec-\(execID).pb"
        try during("write \(file)") { try process.serializedData().write(to: URL(fileURLWithPath: file)) }
        defer { unlink(file) }
        return try spawnShim(["__exec"] + (consoleSocket.map { ["--console-socket", $0] } ?? []) + [id, execID], newSession: true)
    }

    /// The detached exec helper's side of `execDetached`.
    public func execHelper(id: String, execID: String, consoleSocket: String?) async -> Int32 {
        let file = store.paths(id).directory + "/exec-\(execID).pb"
        do {
            guard let data = FileManager.default.contents(atPath: file), let process = try? Grpc_Process(serializedBytes: data) else {
                throw RuntimeError("exec \(execID): unreadable \(file)")
            }
            return try await exec(id: id, execID: execID, process: process, consoleSocket: consoleSocket, reportOn: ContainerShim.syncFD)
        } catch {
            _ = try? Linux.writeAll(ContainerShim.syncFD, Array("error: \(error)\n".utf8))
            return 1
        }
    }
}
