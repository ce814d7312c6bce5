import Foundation
import SwiftProtobuf
import VesselAgentClient
import VesselCore
import VesselLinux
import VesselProtocol

/// Which front door drives this owner: it decides where records live, what pids are reported and
/// whether events go anywhere.
public enum FrontDoor: Sendable, Equatable {
    /// `vessel create` (docker, podman, CRI-O style pods).
    case oci
    /// `containerd-shim-vessel-v2`: events to containerd's ttrpc address.
    case containerd(namespace: String, ttrpcAddress: String)
}

/// The sandbox owner: one per pod (or lone container). It owns QEMU, the vsock backend, the agent
/// connection, the share mounts and the state of every container and exec in the sandbox, and it
/// is the only writer of their status. Every operation of both front doors ends up here.
public actor SandboxOwner {
    let frontDoor: FrontDoor
    let config: RuntimeConfig
    let store: StateStore
    let paths: SandboxPaths
    let log: RuntimeLog
    let events: EventSink
    var sandboxRecord: SandboxRecord
    var vm: SandboxVM?
    var agent: AgentClient?
    /// The same connection without a request timeout: stdio reads and waits last as long as the process.
    var streams: AgentClient?
    var containers: [String: OwnedContainer] = [:]
    /// The pod's interfaces joined to QEMU's taps (nil: a sandbox without network).
    var network: PodNetwork?
    var creating: Set<String> = []
    var sandboxFailure: String?
    var shuttingDown = false
    private let done = ExitSignal()

    public init(frontDoor: FrontDoor, config: RuntimeConfig, store: StateStore, sandboxID: String, log: RuntimeLog) throws(RuntimeError) {
        self.frontDoor = frontDoor
        self.config = config
        self.store = store
        self.paths = store.sandboxPaths(sandboxID)
        self.log = log
        if case .containerd(let namespace, let address) = frontDoor {
            events = EventSink(ttrpcAddress: address, namespace: namespace, log: log)
        } else {
            events = .none
        }
        var record = SandboxRecord(id: sandboxID)
        record.ownerPid = getpid()
        record.ownerStartTime = ProcessIdentity.startTime(of: getpid()) ?? 0
        sandboxRecord = record
        try SharedMounts.makeRoot(paths.shared)
        try store.write(record)
    }

    /// Returns when the owner is done (the last container deleted, Shutdown, or SIGTERM).
    public func finished() async {
        _ = try? await done.wait()
    }

    // MARK: containers

    func container(_ id: String) throws(RuntimeError) -> OwnedContainer {
        guard let container = containers[id] else { throw .notFound("container \"\(id)\" does not exist") }
        return container
    }

    func process(_ id: String, _ execID: String) throws(RuntimeError) -> OwnedProcess {
        try container(id).process(execID)
    }

    /// Every change of a container's status goes through here: applied, persisted, then announced.
    func transition(_ container: OwnedContainer, _ process: OwnedProcess, _ event: Lifecycle.Event) throws(RuntimeError) {
        try process.lifecycle.apply(event)
        guard process === container.initProcess else { return }
        container.record.lifecycle = process.lifecycle
        persist(container)
    }

    func persist(_ container: OwnedContainer) {
        container.record.ownerPid = sandboxRecord.ownerPid
        container.record.ownerStartTime = sandboxRecord.ownerStartTime
        do { try store.write(container.record) } catch { log.warning("\(error)") }
    }

    func persistSandbox() {
        do { try store.write(sandboxRecord) } catch { log.warning("\(error)") }
    }

    /// A process's exit: after its output reached its fifos, so nothing is lost before waiters hear of it.
    func exited(_ container: OwnedContainer, _ process: OwnedProcess, status: Int32) {
        guard !process.lifecycle.isStopped else { return }
        let time = Date()
        try? transition(container, process, .exited(status: status, at: time))
        process.exit.fire(ExitSignal.Exit(status: status, time: time))
        events.publish(
            .exit,
            Containerd_Events_TaskExit.with {
                $0.containerID = container.id
                $0.id = process.execID.isEmpty ? container.id : process.execID
                $0.pid = UInt32(bitPattern: process.hostPid)
                $0.exitStatus = UInt32(bitPattern: status)
                $0.exitedAt = Google_Protobuf_Timestamp(date: time)
            })
    }

    /// Waits for the process in the guest, then for its output; then it has exited.
    func watchExit(_ container: OwnedContainer, _ process: OwnedProcess) {
        guard let streams else { return }
        let (id, execID) = (container.id, process.execID)
        Task {
            guard let status = try? await streams.wait(id, execID) else { return }  // the sandbox died: sandboxFailed reports it
            await process.session?.drain()
            self.exited(container, process, status: status)
        }
    }

    // MARK: the sandbox

    /// A guest that stops answering (QEMU stopped, its kernel hung, the agent wedged) is as dead
    /// as one whose QEMU exited: without this, every wait and exec in flight would hang until a
    /// forced delete. As Kata's shim: one health check at a time on the agent's connection.
    func watchAgent(_ vm: SandboxVM) {
        let seconds = config.agent.healthCheckTimeout
        guard seconds > 0, let agent else { return }
        let checks = AgentClient(agent.ttrpc, timeout: .seconds(seconds))
        // On the owner's actor (a Task inherits it): reads of `agent` need no hop.
        Task {
            while true {
                try? await Task.sleep(for: .seconds(min(5, seconds)))
                guard self.agent === agent else { return }
                do { _ = try await checks.check() } catch {
                    guard self.agent === agent else { return }
                    await self.sandboxFailed("the agent did not answer a health check within health_check_timeout (\(seconds) s)")
                    await Linux.blocking { vm.kill() }
                    return
                }
            }
        }
    }

    /// QEMU or the backend died: every process still running is reported stopped with status 255.
    func sandboxFailed(_ reason: String) async {
        guard !shuttingDown, sandboxFailure == nil else { return }
        sandboxFailure = reason
        log.error("sandbox \(sandboxRecord.id) failed: \(reason)")
        for container in containers.values.sorted(by: { $0.id < $1.id }) {
            container.record.failure = reason
            for process in [container.initProcess] + container.execs.values where !process.lifecycle.isStopped {
                await process.session?.close()
                exited(container, process, status: 255)
            }
            persist(container)
        }
        agent = nil
        streams = nil
    }

    /// Powers the guest off and releases everything the sandbox holds on the host; then `finished`.
    func shutdown() async {
        guard !shuttingDown else { return }
        shuttingDown = true
        for container in containers.values { await release(container) }
        containers = [:]
        await powerOff()
        network?.disconnect()
        network = nil
        SharedMounts.release(sandboxRecord.mounts)
        HostCgroup.leave(sandboxRecord.hostCgroups)
        await events.flush()
        Linux.removeTree(paths.directory)
        done.fire(ExitSignal.Exit(status: 0, time: Date()))
    }

    private func powerOff() async {
        let (vm, agent) = (self.vm, self.agent)
        self.vm = nil
        self.agent = nil
        streams = nil
        await vm?.shutdown(agent: agent)
        await agent?.close()
    }

    /// The sandbox's first container failed: the OCI CLI's owner ends (once the error is on its
    /// way), containerd's powers the guest off and waits for its Delete and Shutdown.
    func abandonSandbox() async {
        if frontDoor == .oci {
            Task { await self.shutdown() }
        } else if vm != nil {
            shuttingDown = true
            await powerOff()
            shuttingDown = false
            sandboxFailure = "the sandbox's first container could not be created"
        }
    }

    /// The host side of a container: its stdio, its mounts (newest first).
    func release(_ container: OwnedContainer) async {
        for process in [container.initProcess] + container.execs.values { await process.session?.close() }
        SharedMounts.release(container.mounts)
        sandboxRecord.mounts.removeAll { container.mounts.contains($0) }
        container.mounts = []
        persistSandbox()
    }
}
