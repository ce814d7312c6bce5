import Foundation
import SwiftProtobuf
import VesselAgentClient
import VesselCore
import VesselLinux
import VesselProtocol
import VesselSpec

/// What a Create needs, from either front door.
struct CreateRequest: Sendable {
    var id: String
    var bundle: String
    /// containerd's rootfs mounts, mounted onto `<bundle>/rootfs` (empty: the bundle has its rootfs).
    var rootfs: [Containerd_Types_Mount] = []
    var stdio = StdioPaths()
    /// The OCI CLI's process monitor, reported as the container's pid; 0 for containerd.
    var monitorPid: Int32 = 0
}

extension SandboxOwner {
    func create(_ request: CreateRequest) async throws(RuntimeError) -> Int32 {
        let id = request.id
        try StateStore.validate(id: id)
        guard containers[id] == nil, !creating.contains(id) else {
            throw RuntimeError("container with id exists: \(id)", kind: .alreadyExists)
        }
        guard !shuttingDown, sandboxFailure == nil else {
            throw .precondition("sandbox \(sandboxRecord.id) is \(sandboxFailure.map { "dead: \($0)" } ?? "shutting down")")
        }
        creating.insert(id)
        defer { creating.remove(id) }
        if case .containerd = frontDoor { try store.claim(id) }
        var rootfsMounts: [String] = []
        do {
            rootfsMounts = try RootfsMounts.mount(request.rootfs, bundle: request.bundle)
            let bundle = try GuestBundle(bundle: request.bundle, container: id)
            for hooks in bundle.hooksNotRun {
                log.warning("container \(id): \(hooks) not run: they belong in the container's namespaces, inside its VM")
            }
            try checkRole(bundle, id: id)
            return try await create(request, bundle: bundle, rootfsMounts: rootfsMounts)
        } catch {
            SharedMounts.release(rootfsMounts)
            store.remove(id)
            if containers.isEmpty { await abandonSandbox() }
            throw error
        }
    }

    /// The first container of a sandbox is its sandbox container; a pod's others join it.
    private func checkRole(_ bundle: GuestBundle, id: String) throws(RuntimeError) {
        switch bundle.pod {
        case .member(let sandbox) where sandbox != sandboxRecord.id:
            throw .invalid("container \(id) belongs to sandbox \(sandbox), not to \(sandboxRecord.id)")
        case .member(let sandbox) where vm == nil:
            throw .precondition("sandbox \(sandbox) is not running: create its sandbox container first")
        case .sandbox where vm != nil || !containers.isEmpty:
            throw RuntimeError("sandbox \(sandboxRecord.id) already has a sandbox container", kind: .alreadyExists)
        default:
            break
        }
    }

    private func create(_ request: CreateRequest, bundle: GuestBundle, rootfsMounts: [String]) async throws(RuntimeError) -> Int32 {
        let id = request.id
        var record = ContainerRecord(id: id, sandbox: sandboxRecord.id, bundle: bundle.bundle, rootfs: bundle.rootfs)
        record.annotations = bundle.oci.annotations ?? [:]
        record.terminal = request.stdio.terminal
        record.pid = request.monitorPid
        let initProcess = OwnedProcess(execID: "", stdio: request.stdio, spec: nil, hostPid: request.monitorPid)
        let container = OwnedContainer(record: record, bundle: bundle, initProcess: initProcess)
        // "creating" while a cold sandbox boots.
        persist(container)
        do throws(RuntimeError) {
            container.mounts = try SharedMounts.make(bundle.hostMounts, in: paths.shared) + rootfsMounts
            sandboxRecord.mounts += container.mounts
            persistSandbox()
            // The sandbox's network namespace exists before the hooks (docker's libnetwork configures
            // it from its prestart hook, through the pid the hooks get); QEMU boots after them.
            let holder = vm == nil ? try NamespaceHolder.make(for: bundle, monitor: request.monitorPid) : nil
            var state = OCIState.object(container.record, status: .creating)
            if let holder { state["pid"] = .int(Int(holder.pid)) }
            do throws(RuntimeError) {
                try HostHooks.run(bundle.oci.hooks?.createRuntime, state: state, name: "createRuntime")
                // Prestart hooks see the container created, as crun and runtime-tools' hooks_stdin
                // have it (runc says creating).
                state["status"] = .string(Lifecycle.Status.created.rawValue)
                try HostHooks.run(bundle.oci.hooks?.prestart, state: state, name: "prestart")
                if vm == nil { try await boot(for: bundle, namespace: holder?.namespace) }
            } catch {
                holder?.end()
                // Unless PodNetwork took the namespace over (it closes it), it ends here.
                if let holder, network == nil { Linux.close(holder.namespace) }
                throw error
            }
            holder?.end()
            // The pid callers get (runc's container process) sits in the container's cgroup, as under runc.
            if request.monitorPid > 0, bundle.pod == .sandbox {
                HostCgroup.add(request.monitorPid, to: sandboxRecord.hostCgroups) { log.warning("\($0)") }
            }
            guard let agent, let streams, let vm else { throw RuntimeError("sandbox \(sandboxRecord.id) has no agent", kind: .unavailable) }
            let hostPid = request.monitorPid > 0 ? request.monitorPid : vm.qemuPid
            container.record.pid = hostPid
            initProcess.hostPid = hostPid
            let session = try await ProcessSession.open(request.stdio, agent: streams, containerID: id, execID: "") {
                () async throws(RuntimeError) in try await vm.dialStdio()
            }
            initProcess.session = session
            try await during("create container \(id)") { try await agent.createContainer(id, spec: bundle.guestSpec, stdio: session.ports) }
            container.inGuest = true
        } catch {
            if container.inGuest { try? await agent?.removeContainer(id) }
            await release(container)
            throw error
        }
        guard let vm else { throw RuntimeError("sandbox \(sandboxRecord.id) has no VM", kind: .unavailable) }
        initProcess.session?.start()
        containers[id] = container
        try transition(container, initProcess, .created)
        watchExit(container, initProcess)
        if request.monitorPid > 0 { watchMonitor(request.monitorPid, of: container) }
        events.publish(
            .create,
            Containerd_Events_TaskCreate.with {
                $0.containerID = id
                $0.bundle = bundle.bundle
                $0.rootfs = request.rootfs
                $0.io = .with {
                    $0.stdin = request.stdio.stdin
                    $0.stdout = request.stdio.stdout
                    $0.stderr = request.stdio.stderr
                    $0.terminal = request.stdio.terminal
                }
                $0.pid = UInt32(bitPattern: initProcess.hostPid)
            })
        log.info("container \(id) created in sandbox \(sandboxRecord.id) (QEMU pid \(vm.qemuPid))")
        return initProcess.hostPid
    }

    /// As runc's container process: the monitor's death (SIGKILL included) kills the container.
    private func watchMonitor(_ pid: Int32, of container: OwnedContainer) {
        let (id, agent) = (container.id, agent)
        Task {
            _ = await Linux.blocking { Linux.waitGone(pid: pid, timeout: .infinity) }
            guard await !container.initProcess.isStoppedOnActor(self) else { return }
            try? await agent?.signal(id, "", signal: SIGKILL)
        }
    }

    /// QEMU (with a virtio-net device per interface of the pod's network namespace), the agent
    /// connection, the sandbox-wide storages (the 9p share, the pod's /dev/shm), then the guest's
    /// side of the network.
    private func boot(for bundle: GuestBundle, namespace: Int32?) async throws(RuntimeError) {
        let cgroup = HostCgroup.relativePath(cgroupsPath: bundle.guestSpec.linux.cgroupsPath, id: sandboxRecord.id)
        var vmmCgroups = HostCgroup.VMMCgroups()
        do {
            sandboxRecord.hostCgroups = try HostCgroup.join(relativePath: cgroup, pid: getpid())
            // On record before anything else can fail: a dead owner's cleanup removes only what it finds.
            persistSandbox()
            HostCgroup.limit(bundle.oci.linux?.resources, in: sandboxRecord.hostCgroups) { log.warning("\($0)") }
            vmmCgroups = try HostCgroup.vmmCgroups(in: sandboxRecord.hostCgroups)
        } catch {
            log.warning("sandbox runs without its own host cgroup: \(error)")
        }
        switch (bundle.networkNamespace, namespace) {
        case (_, let fd?): network = try PodNetwork(namespace: fd)
        case (.path(let path), nil): network = try PodNetwork(namespace: try PodNetwork.open(path: path))
        case (.host, nil):
            log.info("sandbox \(sandboxRecord.id): the spec has no network namespace; a VM cannot share the host's: no network")
        case (.new, nil): break
        }
        let vm: SandboxVM
        do {
            vm = try SandboxVM(config: config, paths: paths, log: log, networks: network?.devices ?? [], cgroups: vmmCgroups)
        } catch {
            network?.disconnect()
            network = nil
            throw error
        }
        // QEMU holds the taps now: they end with it.
        network?.closeTaps()
        self.vm = vm
        sandboxRecord.qemuPid = vm.qemuPid
        persistSandbox()
        Task {
            let reason = await vm.failure()
            await self.sandboxFailed(reason)
        }
        try await vm.waitReady()
        let ttrpc = try await vm.connectAgent()
        let agent = AgentClient(ttrpc, timeout: .seconds(Int64(config.agent.requestTimeout)))
        self.agent = agent
        streams = AgentClient(ttrpc, timeout: nil)
        let storages = [GuestBundle.storage(msize: config.hypervisor.msize9p), GuestBundle.shmStorage]
        try await during("create the sandbox") {
            try await agent.call(
                AgentAPI.createSandbox,
                Grpc_CreateSandboxRequest.with {
                    $0.hostname = bundle.guestSpec.hostname
                    $0.storages = storages
                    $0.sandboxID = sandboxRecord.id
                })
        }
        if let network { try await configureGuest(network, agent: agent) }
        watchOOM()
        watchAgent(vm)
    }

    /// The guest's side of each interface (found by MAC), then the namespace's routes and static ARP entries.
    private func configureGuest(_ network: PodNetwork, agent: AgentClient) async throws(RuntimeError) {
        try await during("configure the guest's network") {
            for interface in network.guestInterfaces {
                _ = try await agent.call(AgentAPI.updateInterface, Grpc_UpdateInterfaceRequest.with { $0.interface = interface })
            }
            let routes = network.guestRoutes
            if !routes.isEmpty {
                _ = try await agent.call(AgentAPI.updateRoutes, Grpc_UpdateRoutesRequest.with { $0.routes.routes = routes })
            }
            let neighbours = network.guestNeighbours
            if !neighbours.isEmpty {
                try await agent.call(AgentAPI.addARPNeighbors, Grpc_AddARPNeighborsRequest.with { $0.neighbors.arpneighbors = neighbours })
            }
        }
    }

    /// The agent's GetOOMEvent blocks until a container's cgroup counts an OOM kill.
    private func watchOOM() {
        guard let streams else { return }
        let events = events
        Task {
            while let response = try? await streams.call(AgentAPI.getOOMEvent, Grpc_GetOOMEventRequest()) {
                events.publish(.oom, Containerd_Events_TaskOOM.with { $0.containerID = response.containerID })
            }
        }
    }
}

extension OwnedProcess {
    /// Read on the owner's actor (the process is owner state).
    func isStoppedOnActor(_ owner: isolated SandboxOwner) -> Bool { lifecycle.isStopped }
}

extension GuestBundle {
    public static func storage(msize: Int) -> Grpc_Storage {
        Grpc_Storage.with {
            $0.driver = "9p"
            $0.source = shareTag
            $0.fstype = "9p"
            $0.options = ["trans=virtio", "version=9p2000.L", "msize=\(msize)", "cache=mmap"]
            $0.mountPoint = guestShare
        }
    }

    static let shmStorage = Grpc_Storage.with {
        $0.driver = "ephemeral"
        $0.source = "shm"
        $0.fstype = "tmpfs"
        $0.options = ["nosuid", "nodev", "noexec", "mode=1777", "size=65536k"]
        $0.mountPoint = sandboxShm
    }
}

/// containerd's rootfs mounts (an overlay, or a bind of one layer) onto the bundle's rootfs directory.
enum RootfsMounts {
    static func mount(_ mounts: [Containerd_Types_Mount], bundle: String) throws(RuntimeError) -> [String] {
        guard !mounts.isEmpty else { return [] }
        let target = URL(fileURLWithPath: bundle).standardizedFileURL.path + "/rootfs"
        var made: [String] = []
        do {
            try Linux.mkdirAll(target, mode: 0o755)
            for (index, mount) in mounts.enumerated() {
                let options = MountOptions(mount.options)
                let isBind = mount.type == "bind" || options.isBind
                guard isBind || ["overlay", "tmpfs"].contains(mount.type) else {
                    throw LinuxError(stage: "rootfs[\(index)].type", errno: EINVAL, detail: mount.type)
                }
                let flags = isBind ? options.flags.subtracting(.readOnly) : options.flags
                try Linux.mount(mount.source, target, isBind ? nil : mount.type, flags.rawValue, isBind ? nil : options.dataString)
                made.append(target)
                if isBind && options.flags.contains(.readOnly) {
                    try Linux.mount("", target, nil, MountFlags([.bind, .remount, .readOnly]).rawValue, nil)
                }
            }
        } catch {
            SharedMounts.release(made)
            throw RuntimeError("mount the rootfs of \(bundle): \(error)", kind: .invalidArgument)
        }
        return made
    }
}

/// A network namespace of the sandbox's own, for a spec that asks for a new one and has hooks
/// that configure it (docker's libnetwork, from its prestart hook): a process holds it while the
/// hooks run, so they have a pid inside it; the owner keeps an fd to it after.
struct NamespaceHolder {
    let pid: Int32
    let namespace: Int32
    private let release: Int32

    /// The OCI CLI's monitor was started in the new namespace (`monitor`, its pid): the hooks see
    /// it as the container's process. Otherwise (containerd's shim) a holder process is made.
    static func make(for bundle: GuestBundle, monitor: Int32) throws(RuntimeError) -> NamespaceHolder? {
        guard bundle.hooksConfigureNetwork else { return nil }
        if monitor > 0, bundle.pod == .sandbox {
            do {
                return NamespaceHolder(pid: monitor, namespace: try Linux.open("/proc/\(monitor)/ns/net", O_RDONLY), release: -1)
            } catch {
                throw RuntimeError(stage: "open the network namespace of the container's monitor", error)
            }
        }
        do {
            let pipe = try Linux.pipe()
            defer { Linux.close(pipe.read) }
            let null = try Linux.open("/dev/null", O_RDWR)
            defer { Linux.close(null) }
            let spawned = try spawn(
                exeFD: -1, path: "/proc/self/exe", arguments: ["vessel", "__hold"], environment: [],
                fds: [(pipe.read, 0), (null, 1), (null, 2)], namespaces: Namespace.network.cloneFlag,
                parentDeathSignal: SIGKILL)
            let namespace = try Linux.open("/proc/\(spawned.pid)/ns/net", O_RDONLY)
            return NamespaceHolder(pid: spawned.pid, namespace: namespace, release: pipe.write)
        } catch {
            throw RuntimeError(stage: "create the sandbox's network namespace", error)
        }
    }

    /// The holder exits; the namespace lives on through `namespace`.
    func end() {
        guard release >= 0 else { return }
        Linux.close(release)
        Linux.reap(pid)
    }
}
