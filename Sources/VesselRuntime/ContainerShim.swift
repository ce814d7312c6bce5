import Foundation
import NIOPosix
import Synchronization
import VesselAgentClient
import VesselLinux
import VesselProtocol

/// The per-container host process (`vessel __shim ID`): it owns the sandbox (QEMU + vsock
/// backend), creates the container in the guest, reports to `create` on fd 3, relays stdio,
/// forwards signals and exits with the container's exit status, so callers (conmon,
/// containerd-shim-runc-v2) can wait on it as if it were the container.
public enum ContainerShim {
    public static let syncFD: Int32 = 3

    @MainActor
    public static func run(store: StateStore, id: String, config: RuntimeConfig, consoleSocket: String?, log: RuntimeLog) async -> Int32 {
        let paths = store.paths(id)
        var sandbox: SandboxVM?
        var agent: AgentClient?
        do {
            let state = try store.load(id)
            let spec = try store.guestSpec(id)
            let cgroup = HostCgroup.relativePath(cgroupsPath: spec.linux.cgroupsPath, id: id)
            do {
                let joined = try HostCgroup.join(relativePath: cgroup, pid: getpid())
                try store.update(id) { (s: inout ContainerState) throws(RuntimeError) in s.hostCgroups = joined }
            } catch {
                log.warning("sandbox runs without its own host cgroup: \(error)")
            }
            let vm = try SandboxVM(config: config, paths: paths, log: log)
            sandbox = vm
            try vm.waitReady()
            let ttrpc = try await SandboxVM.connectAgent(paths: paths, group: .singleton)
            let client = AgentClient(ttrpc, timeout: .seconds(Int64(config.agent.requestTimeout)))
            agent = client
            let storage = GuestBundle.storage(msize: config.hypervisor.msize9p)
            try await during("create the sandbox") {
                try await client.call("CreateSandbox", Grpc_CreateSandboxRequest.with {
                    $0.hostname = spec.hostname; $0.storages = [storage]; $0.sandboxID = id
                })
            }
            try await during("create container \(id)") { try await client.createContainer(id, spec: spec) }
            let terminal: Int32? = spec.process.terminal ? try consoleSocket.map(ConsoleSocket.sendPTYMaster(to:)) ?? 0 : nil
            let startTime = ProcessIdentity.startTime(of: getpid()) ?? 0
            try store.update(id) { (s: inout ContainerState) throws(RuntimeError) in
                s.status = .created; s.pid = getpid(); s.pidStartTime = startTime; s.qemuPid = vm.vm.pid
            }
            report("ok")
            log.info("container \(id) created in sandbox (QEMU pid \(vm.vm.pid), console \(paths.consoleLog))")
            return await serve(store: store, state: state, sandbox: vm, ttrpc: ttrpc, agent: client, terminal: terminal, log: log)
        } catch {
            report("error: \(error)")
            await sandbox?.shutdown(agent: agent)
            return 1
        }
    }

    private static func serve(store: StateStore, state: ContainerState, sandbox: SandboxVM, ttrpc: TTRPCClient, agent: AgentClient,
                              terminal: Int32?, log: RuntimeLog) async -> Int32 {
        let id = state.id
        let streams = AgentClient(ttrpc, timeout: nil)
        let relay = StdioRelay(agent: streams, containerID: id, execID: id)
        relay.start(terminal: terminal)
        let forwarder = SignalForwarder(agent: agent, containerID: id, execID: id, terminal: terminal)
        let shuttingDown = Atomic<Bool>(false)
        sandbox.watch(isShuttingDown: { shuttingDown.load(ordering: .acquiring) }) { reason in
            log.error("sandbox of container \(id) failed: \(reason)")
            _ = try? store.update(id) { (s: inout ContainerState) throws(RuntimeError) in
                s.status = .stopped; s.exitStatus = 255; s.failure = reason
            }
            SharedMounts.release(state.sharedMounts)
            TerminalMode.restore()
            exit(255)
        }
        var status: Int32 = 255
        var failure: String?
        do {
            status = try await streams.wait(id, id)
        } catch {
            // The agent went away without the process exiting: the sandbox died under us.
            shuttingDown.store(true, ordering: .releasing)
            let qemu = try? sandbox.vm.waitForExit(timeout: 2)
            failure = qemu.map { "QEMU exited with status \($0)" } ?? "lost the agent: \(error)"
            log.error("sandbox of container \(id) failed: \(failure!)")
        }
        relay.finish()
        shuttingDown.store(true, ordering: .releasing)
        _ = try? store.update(id) { (s: inout ContainerState) throws(RuntimeError) in
            s.status = .stopped; s.exitStatus = status; s.failure = failure
        }
        await sandbox.shutdown(agent: agent)
        SharedMounts.release(state.sharedMounts)
        withExtendedLifetime(forwarder) {}
        log.info("container \(id) exited with status \(status)")
        return status
    }

    private static func report(_ message: String) {
        _ = try? Linux.writeAll(syncFD, Array((message + "\n").utf8))
        close(syncFD)
    }
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
}

/// Raw mode for a terminal the shim relays byte for byte (the guest's pty does the line
/// discipline), restored on exit.
enum TerminalMode {
    nonisolated(unsafe) private static var saved: (Int32, termios)?  // set once by the main flow, read at exit

    static func makeRaw(_ fd: Int32) {
        var original = termios()
        guard isatty(fd) == 1, tcgetattr(fd, &original) == 0 else { return }
        saved = (fd, original)
        var raw = original
        cfmakeraw(&raw)
        tcsetattr(fd, TCSANOW, &raw)
    }

    static func restore() {
        guard let (fd, original) = saved else { return }
        var attributes = original
        tcsetattr(fd, TCSANOW, &attributes)
    }
}
