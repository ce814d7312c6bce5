import Foundation
import SwiftProtobuf
import VesselCore
import VesselLinux
import VesselProtocol
import VesselSandbox

/// What every command needs: the records, the configuration, the log, and the global flags each
/// re-executed helper (owner, monitor) is given again.
struct Context: Sendable {
    let store: StateStore
    let config: RuntimeConfig
    let configPath: String?
    let log: RuntimeLog
    let globalTokens: [String]

    func selfCommand(_ arguments: [String]) -> [String] { ["vessel"] + globalTokens + arguments }

    // MARK: create

    /// Claims the id, starts the sandbox's owner (or finds the pod's), then the container's monitor,
    /// which creates the container through the owner; returns the monitor's pid once it is created.
    func create(id: String, bundle path: String, consoleSocket: String?, detach: Bool = true) throws(RuntimeError) -> Int32 {
        try StateStore.validate(id: id)
        let bundle = try GuestBundle(bundle: path, container: id)
        if bundle.terminal && consoleSocket == nil && detach {
            throw RuntimeError("cannot allocate tty if vessel will detach without setting console socket")
        }
        if !bundle.terminal && consoleSocket != nil {
            throw RuntimeError("cannot use console socket if process.terminal is false")
        }
        try config.checkGuestFiles()
        let sandbox = bundle.pod.sandboxID(container: id)
        try store.claim(id)
        var owner: Int32?
        do throws(RuntimeError) {
            if bundle.pod == .sandbox { owner = try startOwner(sandbox) }
            guard store.loadSandbox(sandbox)?.ownerAlive == true else {
                throw .precondition("sandbox \(sandbox) of container \(id) is not running")
            }
            // Flags before the id: our parser stops at the first positional argument.
            let arguments =
                ["__shim", "--bundle", bundle.bundle, "--sandbox", sandbox] + (consoleSocket.map { ["--console-socket", $0] } ?? [])
                + [id]
            // The container's host network namespace is the monitor's own (what `state.pid` and the
            // hooks' pid show, and where docker's prestart hook moves the interfaces); QEMU's taps
            // come from it.
            let network = bundle.pod == .sandbox && bundle.hooksConfigureNetwork ? Namespace.network.cloneFlag : 0
            return try SelfExec.start(selfCommand(arguments), newSession: detach, namespaces: network)
        } catch {
            if bundle.pod == .sandbox { stopOwner(sandbox, started: owner) }
            store.remove(id)
            throw error
        }
    }

    /// An owner whose first container failed has nothing to own; one that died (crashed) while
    /// creating it left its mounts, cgroups and directory for us. The one this create started is
    /// our child: waited for even when it removed its record already and is only exiting.
    private func stopOwner(_ sandbox: String, started: Int32?) {
        let record = store.loadSandbox(sandbox)
        if let pid = record.flatMap({ $0.ownerAlive ? $0.ownerPid : nil }) ?? started {
            Foundation.kill(pid, SIGTERM)
            if !Linux.waitGone(pid: pid, timeout: 30) { Foundation.kill(pid, SIGKILL) }
            _ = Linux.waitGone(pid: pid, timeout: 10)
        }
        if let started { _ = Linux.reap(started) }
        SandboxCleanup.afterDeadOwner(store, sandbox: sandbox)
    }

    /// The owner of a new sandbox: detached, its stderr in the sandbox directory's owner.log.
    private func startOwner(_ sandbox: String) throws(RuntimeError) -> Int32 {
        SandboxCleanup.afterDeadOwner(store, sandbox: sandbox)
        let paths = store.sandboxPaths(sandbox)
        do { try Linux.mkdirAll(paths.directory, mode: 0o700) } catch { throw RuntimeError(stage: "create \(paths.directory)", error) }
        let devNull: Int32, logFD: Int32
        do {
            devNull = try Linux.open("/dev/null", O_RDWR)
            logFD = try Linux.open(paths.ownerLog, O_WRONLY | O_CREAT | O_APPEND, 0o640)
        } catch {
            throw RuntimeError(stage: "open the owner's stdio", error)
        }
        defer {
            Linux.close(devNull)
            Linux.close(logFD)
        }
        return try SelfExec.start(selfCommand(["__owner", sandbox]), stdio: [devNull, devNull, logFD], newSession: true)
    }

    func ownerMain(sandbox: String, signals: AsyncStream<Int32>?) async throws(RuntimeError) -> Int32 {
        let owner: SandboxOwner
        do {
            owner = try SandboxOwner(frontDoor: .oci, config: config, store: store, sandboxID: sandbox, log: log)
        } catch {
            SelfExec.report(.failure(error))
            return 1
        }
        return await OwnerMain.run(
            owner: owner, listener: .path(store.sandboxPaths(sandbox).ownerSocket),
            signals: signals ?? AsyncStream { $0.finish() }, log: log
        ) { SelfExec.report(.success(())) }
    }

    /// `vessel __shim`: the monitor of a container's init (`--bundle`) or of a detached exec
    /// (`--exec ID`, the process as JSON on fd 4).
    func monitorMain(
        id: String, sandbox: String?, bundle: String?, execID: String?, consoleSocket: String?,
        signals: AsyncStream<Int32>?
    ) async -> Int32 {
        do throws(RuntimeError) {
            let role: ProcessMonitor.Role
            let terminal: Bool
            let sandboxID: String
            if let execID {
                let json = Data(try during("read the exec's process") { try Linux.readAll(4) })
                Linux.close(4)
                terminal = (try? OCISpec.decode(OCISpec.Process.self, json, name: "process"))?.terminal ?? false
                role = .exec(execID: execID, processJSON: json)
                sandboxID = try store.load(id).sandbox
            } else {
                guard let bundle, let sandbox else { throw RuntimeError("__shim \(id): needs --bundle and --sandbox") }
                terminal = try OCISpec.load(bundle + "/config.json").process?.terminal ?? false
                role = .initProcess(bundle: bundle)
                sandboxID = sandbox
            }
            return try await monitor(
                id, sandbox: sandboxID, role: role, terminal: terminal, consoleSocket: consoleSocket,
                signals: signals
            ) { SelfExec.report(.success(())) }
        } catch {
            SelfExec.report(.failure(error))
            return 1
        }
    }

    func monitor(
        _ id: String, sandbox: String, role: ProcessMonitor.Role, terminal: Bool, consoleSocket: String?,
        signals: AsyncStream<Int32>?, ready: @Sendable () -> Void
    ) async throws(RuntimeError) -> Int32 {
        let owner = try await OwnerClient.connect(store.sandboxPaths(sandbox))
        defer { Task { await owner.close() } }
        let name: String
        if case .exec(let execID, _) = role { name = "io-" + execID } else { name = "io" }
        let monitor = ProcessMonitor(
            owner: owner, containerID: id, role: role, terminal: terminal, consoleSocket: consoleSocket,
            directory: store.directory(id) + "/" + name)
        let status = try await monitor.run(signals: signals, ready: ready)
        // 255 is also what a dead sandbox reports: then the caller learns why.
        if status == 255, let failure = try? store.load(id).failure { log.error("sandbox \(sandbox) failed: \(failure)") }
        return status
    }

    // MARK: lifecycle

    func start(id: String) async throws(RuntimeError) {
        let record = try store.load(id)
        if record.status == .stopped { throw .precondition("cannot start a container that has stopped") }
        try await OwnerClient.with(store, record) { owner throws(RuntimeError) in
            _ = try await owner.call(TaskAPI.start, .with { $0.id = id })
        }
    }

    func kill(id: String, signal: Int32, all: Bool) async throws(RuntimeError) {
        let record = try store.load(id)
        guard [.created, .running, .paused].contains(record.status) else { throw .precondition("container not running") }
        try await OwnerClient.with(store, record) { owner throws(RuntimeError) in
            _ = try await owner.call(
                TaskAPI.kill,
                .with {
                    $0.id = id
                    $0.signal = UInt32(signal)
                    $0.all = all
                })
        }
    }

    func pause(id: String, resume: Bool) async throws(RuntimeError) {
        let record = try store.load(id)
        try await OwnerClient.with(store, record) { owner throws(RuntimeError) in
            if resume {
                _ = try await owner.call(TaskAPI.resume, .with { $0.id = id })
            } else {
                _ = try await owner.call(TaskAPI.pause, .with { $0.id = id })
            }
        }
    }

    /// As runc: --force of an unknown (or half-created) container succeeds and clears what is there;
    /// --force of a running one kills it first. A dead owner's leftovers are cleaned here.
    func delete(id: String, force: Bool) async throws(RuntimeError) {
        var record: ContainerRecord
        do {
            record = try store.load(id)
        } catch {
            guard force else { throw error }
            try StateStore.validate(id: id)
            store.remove(id)
            return
        }
        if record.status == .creating {
            guard force else { throw .precondition("cannot delete container \(id) while it is being created") }
            // Its create owns it until it ends either way (a failed create removes it itself).
            guard let settled = await settled(id) else { return }
            record = settled
        }
        let status = record.status
        if (status == .running || status == .paused) && !force {
            throw .precondition("cannot delete container \(id) that is not stopped: \(status.rawValue)")
        }
        if store.loadSandbox(record.sandbox)?.ownerAlive == true {
            do {
                try await OwnerClient.with(store, record) { owner throws(RuntimeError) in
                    if status == .running || status == .paused {
                        _ = try await owner.call(
                            TaskAPI.kill,
                            .with {
                                $0.id = id
                                $0.signal = UInt32(SIGKILL)
                                $0.all = true
                            })
                        _ = try await owner.call(TaskAPI.wait, .with { $0.id = id }, timeout: .seconds(30))
                    }
                    _ = try await owner.call(TaskAPI.delete, .with { $0.id = id })
                }
            } catch  where force {
                // An owner that does not answer goes, with its sandbox.
                log.warning("delete \(id): \(error); killing sandbox \(record.sandbox)")
                if let sandbox = store.loadSandbox(record.sandbox), sandbox.ownerAlive { Foundation.kill(sandbox.ownerPid, SIGKILL) }
                _ = store.loadSandbox(record.sandbox).map { Linux.waitGone(pid: $0.ownerPid, timeout: 10) }
            }
        }
        store.remove(id)
        // The sandbox's last container: its owner powers the guest off and exits; wait for that,
        // so that nothing of the container is left when delete returns.
        if !store.list().contains(where: { $0.sandbox == record.sandbox }), let sandbox = store.loadSandbox(record.sandbox) {
            if !Linux.waitGone(pid: sandbox.ownerPid, timeout: 30) { log.warning("sandbox \(record.sandbox) still shutting down") }
        }
        SandboxCleanup.afterDeadOwner(store, sandbox: record.sandbox)
    }

    /// The record once its create has ended: nil when the create failed and took it away.
    private func settled(_ id: String) async -> ContainerRecord? {
        let deadline = ContinuousClock.now + .seconds(config.hypervisor.bootTimeout + 60)
        while ContinuousClock.now < deadline {
            guard let record = try? store.load(id) else { return nil }
            let ownerGone = record.ownerPid > 0 && !ProcessIdentity.isAlive(pid: record.ownerPid, startTime: record.ownerStartTime)
            if record.status != .creating || ownerGone { return record }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return try? store.load(id)
    }

    func pids(id: String) async throws(RuntimeError) -> [Int32] {
        let record = try store.load(id)
        guard record.status != .stopped else { return [] }
        return try await OwnerClient.with(store, record) { owner throws(RuntimeError) in
            try await owner.call(TaskAPI.pids, .with { $0.id = id }).processes.map { Int32(bitPattern: $0.pid) }
        }
    }

    func stats(id: String) async throws(RuntimeError) -> Google_Protobuf_Any {
        let record = try store.load(id)
        return try await OwnerClient.with(store, record) { owner throws(RuntimeError) in
            try await owner.call(TaskAPI.stats, .with { $0.id = id }).stats
        }
    }

    func update(id: String, resources: OCISpec.Resources) async throws(RuntimeError) {
        let record = try store.load(id)
        let json = try during("encode the resources") { try JSONEncoder().encode(resources) }
        try await OwnerClient.with(store, record) { owner throws(RuntimeError) in
            _ = try await owner.call(
                TaskAPI.update,
                .with {
                    $0.id = id
                    $0.resources = .with {
                        $0.typeURL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
                        $0.value = json
                    }
                })
        }
    }
}
