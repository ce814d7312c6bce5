import Logging
import NIOCore
import NIOPosix
import VesselLinux
import VesselProtocol
import VesselSpec

#if canImport(Glibc)
    import Glibc
#endif

/// A container in this sandbox. Lives inside the `Sandbox` actor only.
final class Container {
    enum Phase { case created, running, paused }

    let id: String
    let spec: Grpc_Spec
    let initProcess: ContainerProcess
    var execs: [String: ContainerProcess] = [:]
    /// Opened from /proc/<init>/ns while init is our unreaped child, so they always name its namespaces.
    let namespaceFDs: [(name: String, fd: Int32)]
    var syncFD: Int32
    var phase = Phase.created
    let cgroup: Cgroup?
    /// OOM kills already reported by GetOOMEvent.
    var oomReported: UInt64 = 0
    /// The attached device-filter eBPF program (cgroup v2), or -1.
    var deviceProgram: Int32 = -1
    /// Mount points of the request's storages, released at removal.
    var storages: [String] = []
    /// The removal under way: a second RemoveContainer waits for it instead of releasing twice.
    var removal: Task<Void, any Error>?

    init(
        id: String, spec: Grpc_Spec, initProcess: ContainerProcess, namespaceFDs: [(name: String, fd: Int32)], syncFD: Int32,
        cgroup: Cgroup?
    ) {
        self.id = id
        self.spec = spec
        self.initProcess = initProcess
        self.namespaceFDs = namespaceFDs
        self.syncFD = syncFD
        self.cgroup = cgroup
    }

    var processes: [ContainerProcess] { [initProcess] + execs.values }
    var stopped: Bool { initProcess.exitStatus != nil }

    func process(_ execID: String) throws -> ContainerProcess {
        if execID.isEmpty || execID == id { return initProcess }
        guard let process = execs[execID] else {
            throw AgentError.notFound("process \(execID) not found in container \(id)")
        }
        return process
    }

    /// Pids to signal for "all processes": everything in the container's pid namespace (found by
    /// the namespace inode, so descendants we never spawned are included) plus what we track.
    func allPids() -> [pid_t] {
        var pids = Set(processes.filter { $0.exitStatus == nil }.map(\.pid))
        guard let nsFD = namespaceFDs.first(where: { $0.name == "pid" })?.fd else { return Array(pids) }
        var own = stat()
        guard fstat(nsFD, &own) == 0 else { return Array(pids) }
        var agentNS = stat()
        if stat("/proc/self/ns/pid", &agentNS) == 0 && agentNS.st_ino == own.st_ino { return Array(pids) }
        guard let dir = opendir("/proc") else { return Array(pids) }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let pid = pid_t(name) else { continue }
            var ns = stat()
            if stat("/proc/\(pid)/ns/pid", &ns) == 0 && ns.st_ino == own.st_ino && ns.st_dev == own.st_dev {
                pids.insert(pid)
            }
        }
        return Array(pids)
    }

    /// Closes what the agent holds for the container; the stdio channels close separately (async).
    func release() {
        for process in processes { Reaper.shared.forget(process.pid) }
        for (_, fd) in namespaceFDs { Linux.close(fd) }
        Linux.close(deviceProgram)
        Linux.close(syncFD)
        syncFD = -1
        cgroup?.remove()
    }
}

/// All state of the agent: one sandbox with its containers. Validation shared by the RPCs is here;
/// the ttrpc handlers in AgentService stay thin.
public actor Sandbox {
    let options: AgentOptions
    let launcher: Launcher
    let logger: Logger
    let cgroupLayout: Cgroup.Layout?
    var sandboxID = ""
    var hostname = ""
    var containers: [String: Container] = [:]
    var storages: StorageTable
    var sandboxStorages: [String] = []
    /// The pod's IPC, UTS and network namespaces, which every container of the sandbox joins.
    var sharedNamespaces: [(name: String, fd: Int32)] = []
    /// Ids being created: the actor is re-entered while a create awaits its helper.
    var creating: Set<String> = []

    let stdioStreams: StdioStreams

    init(options: AgentOptions, launcher: Launcher, stdioStreams: StdioStreams, logger: Logger) {
        self.options = options
        self.stdioStreams = stdioStreams
        self.launcher = launcher
        self.logger = logger
        self.storages = StorageTable(base: options.hostMode ? options.runDirectory : "/run")
        self.cgroupLayout = Cgroup.detect()
        if cgroupLayout == nil {
            logger.warning("no usable cgroup hierarchy: limits, stats and pause are not available")
        }
    }

    // MARK: sandbox

    func createSandbox(_ request: Grpc_CreateSandboxRequest) async throws {
        guard sandboxID.isEmpty, !creating.contains("") else { throw AgentError.alreadyExists("sandbox \(sandboxID) already exists") }
        // It names the sandbox's cgroup directory.
        if !request.sandboxID.isEmpty { try SpecRules.identifier(request.sandboxID, field: "sandbox_id") }
        try Validation.storages(request.storages, base: storages.base)
        creating.insert("")
        defer { creating.remove("") }
        let acquired = try storages.acquire(request.storages, log: logWarning)
        do {
            sharedNamespaces = try await launcher.sandboxNamespaces(hostname: request.hostname)
        } catch {
            storages.release(acquired, log: logWarning)
            throw error
        }
        sandboxStorages = acquired
        sandboxID = request.sandboxID.isEmpty ? "sandbox" : request.sandboxID
        hostname = request.hostname
    }

    func destroySandbox() async {
        for id in containers.keys { try? await removeContainer(id, timeout: 0) }
        storages.release(sandboxStorages, log: logWarning)
        sandboxStorages = []
        for (_, fd) in sharedNamespaces { Linux.close(fd) }
        sharedNamespaces = []
        sandboxID = ""
    }

    private func logWarning(_ line: String) { logger.warning("\(line)") }

    /// The pod's network namespace (an fd the sandbox keeps), nil before CreateSandbox.
    var podNetwork: Int32? { sharedNamespaces.first { $0.name == "net" }?.fd }

    // MARK: containers

    func createContainer(_ request: Grpc_CreateContainerRequest) async throws {
        let id = request.containerID
        try Validation.containerID(id)
        guard containers[id] == nil, !creating.contains(id) else {
            throw AgentError.alreadyExists("container \(id) already exists")
        }
        try Validation.storages(request.storages, base: storages.base)
        let streams = try stdioStreams.claim(
            stdin: request.stdinPort, stdout: request.stdoutPort, stderr: request.stderrPort,
            terminal: request.oci.process.terminal)
        creating.insert(id)
        defer { creating.remove(id) }
        do {
            // Before the spec's checks: the root may live on one of them.
            let acquired = try storages.acquire(request.storages, log: logWarning)
            do {
                try await createContainer(request, storages: acquired)
            } catch {
                storages.release(acquired, log: logWarning)
                throw error
            }
        } catch {
            streams.close()
            throw error
        }
        bind(streams, to: try process(id, ""), of: id)
    }

    /// From here the process's stdio flows through its streams; an exec is forgotten once it
    /// was waited for and its output reached the host.
    private func bind(_ streams: StdioStreams.Claimed, to process: ContainerProcess, of containerID: String) {
        guard !streams.isEmpty else { return }
        streams.bind(to: process.io) { [weak self] stderr in
            process.noteEnd(stderr: stderr)
            await self?.forgetIfFinished(containerID, process)
        }
    }

    private func createContainer(_ request: Grpc_CreateContainerRequest, storages: [String]) async throws {
        let id = request.containerID
        let namespaces = try Validation.spec(request.oci)

        var spec = request.oci
        if spec.hostname.isEmpty && (namespaces.contains(.uts) || !sharedNamespaces.isEmpty) { spec.hostname = hostname }
        if cgroupLayout == nil, spec.mounts.contains(where: { $0.type.hasPrefix("cgroup") }) {
            logger.info("container \(id): no cgroup v2 here, cgroup mounts skipped")
        }
        // The network namespace stays the guest root's, so a user namespace's root has no
        // CAP_NET_BIND_SERVICE or CAP_NET_RAW there: low ports and ping open to everyone instead,
        // as docker sets them for every container (the VM is the pod's boundary).
        if namespaces.contains(.user) {
            for (key, value) in [("net.ipv4.ip_unprivileged_port_start", "0"), ("net.ipv4.ping_group_range", "0 2147483647")]
            where spec.linux.sysctl[key] == nil { spec.linux.sysctl[key] = value }
        }
        // A pod's containers share its IPC and UTS namespaces (Kubernetes' pod model; in a VM the
        // "host's" are the pod's anyway) and, unless they asked for none, its network namespace.
        let joined = sharedNamespaces.filter { shared in shared.name != "net" || namespaces.contains(.network) }
        for name in ["ipc", "uts"] where !joined.isEmpty && !spec.linux.namespaces.contains(where: { $0.type == name }) {
            spec.linux.namespaces.append(.with { $0.type = name })
        }
        // The cgroup namespace is not a clone flag: the init helper unshares it once it is inside
        // the container's cgroup (it starts there), so the container sees its own cgroup as "/".
        // The user namespace neither: the helper enters it last, once the rootfs is set up.
        let flags = namespaces.filter { ns in ns != .cgroup && ns != .user && !joined.contains { $0.name == ns.procName } }
            .reduce(UInt64(0)) { $0 | $1.cloneFlag }
        let cgroup = try cgroupLayout.map { try Cgroup.create($0, relative: "vessel/\(sandboxID.isEmpty ? "agent" : sandboxID)/\(id)") }
        let initProcess: ContainerProcess, syncFD: Int32
        do {
            (initProcess, syncFD) = try await launcher.createInit(id: id, spec: spec, namespaces: flags, joined: joined, cgroup: cgroup)
        } catch {
            cgroup?.remove()
            throw error
        }
        do {
            // cgroup: an exec joins the init's view of the hierarchy (its own namespace, or the agent's).
            let names = ["ipc", "uts", "net", "pid", "cgroup", "mnt"] + (namespaces.contains(.user) ? ["user"] : [])
            let fds = try names.map { ($0, try Linux.open("/proc/\(initProcess.pid)/ns/\($0)", O_RDONLY)) }
            let container = Container(id: id, spec: spec, initProcess: initProcess, namespaceFDs: fds, syncFD: syncFD, cgroup: cgroup)
            container.storages = storages
            do {
                // Also without resources: the device filter's defaults apply to every container.
                try applyResources(spec.linux.resources, to: container)
            } catch {
                container.release()
                throw error
            }
            containers[id] = container
        } catch {
            try? Linux.kill(initProcess.pid, SIGKILL)
            _ = await initProcess.wait()
            Linux.close(syncFD)
            await initProcess.io.close()
            cgroup?.remove()
            throw error
        }
    }

    func startContainer(_ id: String) async throws {
        let container = try self.container(id)
        guard container.phase == .created, container.syncFD >= 0 else {
            throw AgentError.failedPrecondition("container \(id) is not in the created state")
        }
        let fd = container.syncFD
        container.syncFD = -1
        container.phase = .running
        try await launcher.start(syncFD: fd)
        // A failing poststart hook is logged and the container keeps running (OCI runtime spec).
        do {
            try await Hooks.run(
                container.spec.hooks.poststart, kind: "poststart",
                state: Hooks.state(spec: container.spec, id: id, status: "running", pid: container.initProcess.pid))
        } catch {
            logger.warning("container \(id): \(error)")
        }
    }

    /// Overlapping calls share one removal: namespace fds, storages and hooks are released once.
    func removeContainer(_ id: String, timeout: UInt32) async throws {
        let container = try self.container(id)
        if let removal = container.removal { return try await removal.value }
        let removal = Task { try await self.remove(container, timeout: timeout) }
        container.removal = removal
        do {
            try await removal.value
        } catch {
            // Processes still alive after the timeout: a later call may try again.
            container.removal = nil
            throw error
        }
    }

    private func remove(_ container: Container, timeout: UInt32) async throws {
        let id = container.id
        for pid in container.allPids() { kill(pid, SIGKILL) }
        // A frozen process cannot die: thaw after the kill is queued.
        if container.phase == .paused { try? container.cgroup?.freeze(false) }
        let processes = container.processes
        let waitAll: @Sendable () async -> Void = { for process in processes { _ = await process.wait() } }
        if timeout > 0 {
            let finished = await withTaskGroup(of: Bool.self) { group in
                group.addTask {
                    await waitAll()
                    return true
                }
                group.addTask {
                    try? await Task.sleep(for: .seconds(Int(timeout)))
                    return false
                }
                let first = await group.next()!
                group.cancelAll()
                return first
            }
            if !finished {
                throw AgentError(kind: .deadlineExceeded, message: "container \(id): processes still alive after \(timeout)s")
            }
        } else {
            await waitAll()
        }
        container.release()
        storages.release(container.storages, log: logWarning)
        for process in processes { await process.io.close() }
        do {
            try await Hooks.run(
                container.spec.hooks.poststop, kind: "poststop",
                state: Hooks.state(spec: container.spec, id: id, status: "stopped", pid: 0))
        } catch {
            logger.warning("container \(id): \(error)")
        }
        // Known until its removal is over: a RemoveContainer arriving meanwhile joins this one.
        containers.removeValue(forKey: id)
    }

    func execProcess(_ request: Grpc_ExecProcessRequest) async throws {
        let container = try self.container(request.containerID)
        try Validation.execID(request.execID)
        guard container.execs[request.execID] == nil, request.execID != container.id else {
            throw AgentError.alreadyExists("exec id \(request.execID) already exists in container \(container.id)")
        }
        guard container.phase == .running, !container.stopped else {
            throw AgentError.failedPrecondition("container \(container.id) is not running")
        }
        try Validation.process(request.process, field: "process")
        let streams = try stdioStreams.claim(
            stdin: request.stdinPort, stdout: request.stdoutPort, stderr: request.stderrPort,
            terminal: request.process.terminal)
        let process: ContainerProcess
        do {
            process = try await launcher.exec(
                execID: request.execID, process: request.process, containerSpec: container.spec,
                namespaceFDs: container.namespaceFDs, cgroup: container.cgroup)
        } catch {
            streams.close()
            throw error
        }
        container.execs[request.execID] = process
        bind(streams, to: process, of: container.id)
    }

    func signalProcess(_ request: Grpc_SignalProcessRequest) throws {
        let container = try self.container(request.containerID)
        guard request.signal > 0 && request.signal < 65 else {
            throw AgentError.invalidArgument("signal \(request.signal) is not a valid signal number")
        }
        let pids: [pid_t]
        if request.execID.isEmpty {
            pids = container.allPids()
        } else {
            // An exited process's pid may be someone else's by now.
            let process = try container.process(request.execID)
            guard process.exitStatus == nil else { return }
            pids = [process.pid]
        }
        for pid in pids where Reaper.shared.exitStatus(pid) == nil {
            // ESRCH: it died meanwhile, which is what the caller wanted anyway.
            if kill(pid, Int32(request.signal)) != 0 && errno != ESRCH {
                throw AgentError(LinuxError(stage: "kill", detail: "\(pid)"))
            }
        }
    }

    func update(_ id: String, _ resources: Grpc_LinuxResources) throws {
        let container = try self.container(id)
        guard container.cgroup != nil else {
            throw AgentError.failedPrecondition("container \(id): no cgroups on this machine, limits cannot be applied")
        }
        try applyResources(resources, to: container)
    }

    /// Limits, then the device rules: a new program is attached before the old one goes, so the
    /// container is never without a filter.
    private func applyResources(_ resources: Grpc_LinuxResources, to container: Container) throws {
        guard let cgroup = container.cgroup else { return }
        for line in try cgroup.apply(resources) { logger.info("container \(container.id): \(line)") }
        // An update without device rules keeps the filter the container has.
        guard !resources.devices.isEmpty || container.deviceProgram < 0 else { return }
        guard let directory = cgroup.unifiedDirectory else {
            logger.info("container \(container.id): device rules not enforced in host mode (no cgroup v2)")
            return
        }
        let program = try DeviceFilter.attach(resources.devices, cgroup: directory)
        if container.deviceProgram >= 0 { DeviceFilter.detach(container.deviceProgram, cgroup: directory) }
        container.deviceProgram = program
    }

    /// Blocks until a container's cgroup counts an OOM kill it has not reported yet.
    func nextOOMEvent() async throws -> String {
        while true {
            for (id, container) in containers.sorted(by: { $0.key < $1.key }) {
                guard let kills = container.cgroup?.oomKills, kills > container.oomReported else { continue }
                container.oomReported = kills
                return id
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    func process(_ containerID: String, _ execID: String) throws -> ContainerProcess {
        try container(containerID).process(execID)
    }

    func wait(_ containerID: String, _ execID: String) async throws -> Int32 {
        let process = try process(containerID, execID)
        let status = await process.wait()
        forgetIfFinished(containerID, process)
        return status
    }

    func read(_ containerID: String, _ execID: String, stderr: Bool, max: Int) async throws -> [UInt8] {
        let process = try process(containerID, execID)
        let bytes = try await stderr ? process.io.readStderr(max: max) : process.io.readStdout(max: max)
        if bytes.isEmpty {
            process.noteEnd(stderr: stderr)
            forgetIfFinished(containerID, process)
        }
        return bytes
    }

    /// An exec that was waited for and read to EOF is dropped (as Kata's agent drops it after
    /// WaitProcess): its id can be used again, and no later call can reach a reused pid.
    private func forgetIfFinished(_ containerID: String, _ process: ContainerProcess) {
        guard !process.execID.isEmpty, process.finished, let container = containers[containerID],
            container.execs[process.execID] === process
        else { return }
        container.execs.removeValue(forKey: process.execID)
        Reaper.shared.forget(process.pid)
    }

    func stats(_ id: String) throws -> Grpc_StatsContainerResponse {
        let container = try self.container(id)
        guard let cgroup = container.cgroup else {
            throw AgentError.failedPrecondition("container \(id): no cgroups on this machine, no stats")
        }
        var response = Grpc_StatsContainerResponse()
        response.cgroupStats = cgroup.stats()
        response.networkStats = NetworkStats.read(pid: container.initProcess.pid)
        return response
    }

    func setPaused(_ id: String, _ paused: Bool) throws {
        let container = try self.container(id)
        guard let cgroup = container.cgroup else {
            throw AgentError.failedPrecondition("container \(id): no freezer cgroup on this machine")
        }
        guard container.phase == (paused ? .running : .paused) else {
            throw AgentError.failedPrecondition("container \(id) is not \(paused ? "running" : "paused")")
        }
        try cgroup.freeze(paused)
        container.phase = paused ? .paused : .running
    }

    private func container(_ id: String) throws -> Container {
        guard let container = containers[id] else { throw AgentError.notFound("container \(id) not found") }
        return container
    }
}

enum NetworkStats {
    /// /proc/PID/net/dev of the container's init: its network namespace's interfaces.
    static func read(pid: pid_t) -> [Grpc_NetworkStats] {
        guard let text = try? Linux.readFile("/proc/\(pid)/net/dev") else { return [] }
        return text.split(separator: "\n").dropFirst(2).compactMap { line in
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { return nil }
            let n = parts[1].split(separator: " ").compactMap { UInt64($0) }
            guard n.count >= 12 else { return nil }
            var s = Grpc_NetworkStats()
            s.name = parts[0].trimmed
            (s.rxBytes, s.rxPackets, s.rxErrors, s.rxDropped) = (n[0], n[1], n[2], n[3])
            (s.txBytes, s.txPackets, s.txErrors, s.txDropped) = (n[8], n[9], n[10], n[11])
            return s
        }
    }
}
