import Foundation
import SwiftProtobuf
import VesselAgentClient
import VesselCore
import VesselProtocol
import VesselSpec

/// The Task API's operations on the owner's state (the ttrpc handlers in TaskService stay thin).
extension SandboxOwner {
    func liveAgent() throws(RuntimeError) -> (agent: AgentClient, streams: AgentClient) {
        guard let agent, let streams else {
            throw .precondition("sandbox \(sandboxRecord.id) is not running" + (sandboxFailure.map { ": \($0)" } ?? ""))
        }
        return (agent, streams)
    }

    func start(_ id: String, _ execID: String) async throws(RuntimeError) -> Int32 {
        let container = try container(id)
        let process = try container.process(execID)
        let (agent, _) = try liveAgent()
        if process === container.initProcess {
            // Checked before the guest is asked: the transition owns the wording.
            var next = process.lifecycle
            try next.apply(.started)
            try await during("start container \(id)") { try await agent.startContainer(id) }
            try transition(container, process, .started)
            events.publish(
                .start,
                Containerd_Events_TaskStart.with {
                    $0.containerID = id
                    $0.pid = UInt32(bitPattern: process.hostPid)
                })
            let state = OCIState.object(container.record)
            HostHooks.runAll(container.bundle.oci.hooks?.poststart, state: state, name: "poststart") { log.warning("\($0)") }
        } else {
            guard process.lifecycle.status == .created, let spec = process.spec else {
                throw .precondition("exec \(execID) in container \(id) was already started")
            }
            guard container.initProcess.lifecycle.status == .running else {
                throw .precondition("cannot exec in a \(container.record.status.rawValue) container")
            }
            do {
                try await during("exec in container \(id)") {
                    try await agent.exec(id, execID, process: spec, stdio: process.session?.ports ?? StdioPorts())
                }
            } catch {
                // It never ran: its waiters (ctr waits before it starts) hear of it as an exit.
                await process.session?.close()
                try? transition(container, process, .started)
                exited(container, process, status: 127)
                throw error
            }
            try transition(container, process, .started)
            process.session?.start()
            watchExit(container, process)
            events.publish(
                .execStarted,
                Containerd_Events_TaskExecStarted.with {
                    $0.containerID = id
                    $0.execID = execID
                    $0.pid = UInt32(bitPattern: process.hostPid)
                })
        }
        return process.hostPid
    }

    func exec(_ request: Containerd_Task_V2_ExecProcessRequest) async throws(RuntimeError) {
        let container = try container(request.id)
        let execID = request.execID
        try Self.validate(execID: execID)
        guard container.execs[execID] == nil, execID != container.id else {
            throw RuntimeError("exec id \(execID) already exists in container \(container.id)", kind: .alreadyExists)
        }
        guard container.initProcess.lifecycle.status == .running else {
            throw .precondition("cannot exec in a \(container.record.status.rawValue) container")
        }
        let (_, streams) = try liveAgent()
        let spec = try OCISpec.process(fromJSON: request.spec.value, field: "exec \(execID) spec")
        let stdio = StdioPaths(stdin: request.stdin, stdout: request.stdout, stderr: request.stderr, terminal: request.terminal)
        let process = OwnedProcess(execID: execID, stdio: stdio, spec: spec, hostPid: container.initProcess.hostPid)
        container.execs[execID] = process
        do throws(RuntimeError) {
            guard let vm else { throw RuntimeError("sandbox \(sandboxRecord.id) has no VM", kind: .unavailable) }
            process.session = try await ProcessSession.open(stdio, agent: streams, containerID: container.id, execID: execID) {
                () async throws(RuntimeError) in try await vm.dialStdio()
            }
        } catch {
            container.execs.removeValue(forKey: execID)
            throw error
        }
        try transition(container, process, .created)
        events.publish(
            .execAdded,
            Containerd_Events_TaskExecAdded.with {
                $0.containerID = container.id
                $0.execID = execID
            })
    }

    static func validate(execID: String) throws(RuntimeError) {
        do { try StateStore.validate(id: execID) } catch { throw .invalid("invalid exec id \"\(execID)\"") }
    }

    /// A created process that is killed never starts: it stops once the guest reaps its helper.
    func kill(_ id: String, _ execID: String, signal: UInt32, all: Bool) async throws(RuntimeError) {
        let container = try container(id)
        let process = try container.process(execID)
        guard signal > 0 && signal < 65 else { throw .invalid("signal \(signal) is not a valid signal number") }
        if process.lifecycle.isStopped && !all { throw .notFound("process already finished") }
        let (agent, _) = try liveAgent()
        try await during("signal container \(id)") {
            // The agent signals every process of the container for an empty exec id.
            try await agent.signal(id, all ? "" : (process.execID.isEmpty ? id : process.execID), signal: Int32(signal))
        }
    }

    func wait(_ id: String, _ execID: String) async throws(RuntimeError) -> ExitSignal.Exit {
        try await process(id, execID).exit.wait()
    }

    func delete(_ id: String, _ execID: String) async throws(RuntimeError) -> Containerd_Task_V2_DeleteResponse {
        // Its create still holds it (mounts, hooks, the guest's side): refuse rather than race it.
        if creating.contains(id) { throw .precondition("cannot delete container \(id) while it is being created") }
        let container = try container(id)
        let process = try container.process(execID)
        if process !== container.initProcess {
            guard process.lifecycle.status != .running && process.lifecycle.status != .paused else {
                throw .precondition("cannot delete exec \(execID) that is still running")
            }
            await process.session?.close()
            container.execs.removeValue(forKey: execID)
            return process.deleteResponse
        }
        switch process.lifecycle.status {
        case .stopped: break
        case .created, .creating:
            // As runc: a created container's never-started process goes with it.
            if let (agent, _) = try? liveAgent() { try? await agent.signal(id, "", signal: SIGKILL) }
            _ = try? await process.exit.wait()
        case .running, .paused:
            throw .precondition("cannot delete container \(id) that is not stopped: \(process.lifecycle.status.rawValue)")
        }
        if container.inGuest, let (agent, _) = try? liveAgent() {
            do { try await agent.removeContainer(id) } catch { log.warning("remove container \(id) in the guest: \(error)") }
        }
        containers.removeValue(forKey: id)
        await release(container)
        store.remove(id)
        events.publish(
            .delete,
            Containerd_Events_TaskDelete.with {
                $0.containerID = id
                $0.pid = UInt32(bitPattern: process.hostPid)
                $0.exitStatus = process.exitStatus
                if let time = process.exitedAt { $0.exitedAt = time }
            })
        let state = OCIState.object(container.record, status: .stopped)
        HostHooks.runAll(container.bundle.oci.hooks?.poststop, state: state, name: "poststop") { log.warning("\($0)") }
        // The OCI CLI has nobody to send Shutdown: its last delete ends the sandbox, once this
        // answer is on its way.
        if containers.isEmpty && creating.isEmpty && frontDoor == .oci { Task { await self.shutdown() } }
        return process.deleteResponse
    }

    func setPaused(_ id: String, _ paused: Bool) async throws(RuntimeError) {
        let container = try container(id)
        var next = container.initProcess.lifecycle
        try next.apply(paused ? .paused : .resumed)
        let (agent, _) = try liveAgent()
        try await during(paused ? "pause container \(id)" : "resume container \(id)") {
            paused ? try await agent.pause(id) : try await agent.resume(id)
        }
        try transition(container, container.initProcess, paused ? .paused : .resumed)
        if paused {
            events.publish(.paused, Containerd_Events_TaskPaused.with { $0.containerID = id })
        } else {
            events.publish(.resumed, Containerd_Events_TaskResumed.with { $0.containerID = id })
        }
    }

    func resize(_ id: String, _ execID: String, width: UInt32, height: UInt32) async throws(RuntimeError) {
        let process = try process(id, execID)
        guard process.stdio.terminal else { throw .precondition("process \(execID.isEmpty ? id : execID) has no terminal") }
        let (agent, _) = try liveAgent()
        try await during("resize the terminal") { try await agent.resize(id, process.execID, rows: height, columns: width) }
    }

    func closeStdin(_ id: String, _ execID: String) async throws(RuntimeError) {
        let process = try process(id, execID)
        try await during("close the stdin of \(execID.isEmpty ? id : execID)") { try await process.session?.closeStdin() }
    }

    func update(_ id: String, resources json: Data) async throws(RuntimeError) {
        _ = try container(id)
        let decoded = try OCISpec.decode(OCISpec.Resources.self, json, name: "resources")
        var resources = decoded.grpc()
        resources.cpu.clearHostPlacement()
        // The host cgroup is the sandbox's: its own container's limits hold QEMU.
        if id == sandboxRecord.id { HostCgroup.limit(decoded, in: sandboxRecord.hostCgroups) { log.warning("\($0)") } }
        let (agent, _) = try liveAgent()
        try await during("update container \(id)") {
            try await agent.call(
                AgentAPI.updateContainer,
                Grpc_UpdateContainerRequest.with {
                    $0.containerID = id
                    $0.resources = resources
                })
        }
    }

    func stats(_ id: String) async throws(RuntimeError) -> Grpc_StatsContainerResponse {
        _ = try container(id)
        let (agent, _) = try liveAgent()
        return try await during("stats of container \(id)") { try await agent.stats(id) }
    }

    /// containerd's Shutdown: only when no container is left (a pod's tasks each send one). The
    /// answer goes out first; containerd accepts a shim that is gone by then.
    func shutdownRequested(now: Bool) -> Bool {
        guard containers.isEmpty && creating.isEmpty || now else { return false }
        Task { await self.shutdown() }
        return true
    }
}
