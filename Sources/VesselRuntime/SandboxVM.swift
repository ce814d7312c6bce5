import Foundation
import NIOPosix
import VesselAgentClient
import VesselLinux
import VesselProtocol
import VesselVM
import VesselVsock

/// One sandbox's QEMU guest and its hybrid-vsock backend, owned by the container's shim process.
/// The backend is a thread of the shim; QEMU is a child that gets SIGKILL when the shim dies.
public final class SandboxVM: @unchecked Sendable {
    // @unchecked: every stored property is immutable or itself thread-safe.
    public static let agentPort: UInt32 = 1024
    public static let readyLine = "vessel-agent ready in"

    public let paths: ContainerPaths
    public let config: RuntimeConfig
    public let vm: GuestVM
    let backend: VsockBackend
    let backendThread: BackendThread

    /// Boots the guest.
    public init(config: RuntimeConfig, paths: ContainerPaths, log: RuntimeLog) throws(RuntimeError) {
        self.paths = paths
        self.config = config
        try config.checkGuestFiles()
        do { try Linux.mkdirAll(paths.socketDirectory, mode: 0o700) } catch { throw RuntimeError(stage: "create \(paths.socketDirectory)", error) }
        for socket in [paths.vhostUserSocket, paths.hybridSocket, paths.qmpSocket] { unlink(socket) }
        backend = try during("start the vsock backend") {
            var options = VsockBackend.Options()
            // The caller's stderr belongs to the container: the backend only speaks up when something is wrong.
            options.logger.logLevel = log.debugEnabled ? .debug : .error
            return try VsockBackend(vhostUserSocketPath: paths.vhostUserSocket, hybridSocketPath: paths.hybridSocket, guestCID: 3,
                                    options: options)
        }
        backendThread = backend.start()
        let vmConfig = Self.vmConfig(config, paths: paths)
        do {
            vm = try GuestVM(vmConfig, consoleLog: paths.consoleLog, dieWithParent: true)
        } catch {
            backend.stop()
            _ = backendThread.join()
            throw RuntimeError("start QEMU: \(error)")
        }
        if vm.accelerator == .tcg && vmConfig.accelerator == .auto {
            log.warning("KVM does not work on this host: the guest runs under TCG emulation (slow)")
        }
    }

    /// The QEMU command for this sandbox (the benchmark boots its lower bound with the same one).
    public static func vmConfig(_ config: RuntimeConfig, paths: ContainerPaths) -> VMConfig {
        let h = config.hypervisor
        var vmConfig = VMConfig(kernel: h.kernel, initrd: h.initrd)
        vmConfig.qemu = h.path
        vmConfig.machine = VMConfig.Machine(rawValue: h.machineType) ?? .q35
        vmConfig.vcpus = h.vcpus
        vmConfig.memoryMiB = h.memoryMiB
        vmConfig.accelerator = VMConfig.Accelerator(rawValue: h.accelerator) ?? .auto
        vmConfig.kernelParameters = ["agent.log=\(config.agent.logLevel)"] + (config.agent.debugConsole ? ["agent.debug_console"] : []) + h.kernelParams
        vmConfig.vsockSocket = paths.vhostUserSocket
        vmConfig.shares = [SharedDirectory(tag: GuestBundle.shareTag, path: paths.shared)]
        vmConfig.qmpSocket = paths.qmpSocket
        return vmConfig
    }

    /// Blocks until the agent announces itself on the console (no polling of the socket).
    public func waitReady() throws(RuntimeError) {
        try during("start the sandbox") { try vm.waitFor(Self.readyLine, timeout: TimeInterval(config.hypervisor.bootTimeout)) }
    }

    /// A ttrpc connection to the agent through the backend's CONNECT handshake.
    public static func connectAgent(paths: ContainerPaths, group: MultiThreadedEventLoopGroup, timeoutMilliseconds: Int32 = 10_000) async throws(RuntimeError) -> TTRPCClient {
        try await during("reach the agent of \(paths.id)") {
            let fd = try HybridDialer.connect(socketPath: paths.hybridSocket, port: agentPort, timeoutMilliseconds: timeoutMilliseconds)
            return try await TTRPCClient.connect(connectedSocket: fd, group: group)
        }
    }

    /// Watches QEMU and the backend: `onFailure` runs once if either dies while `isShuttingDown` is false.
    public func watch(isShuttingDown: @escaping @Sendable () -> Bool, onFailure: @escaping @Sendable (String) -> Void) {
        let once = FailureOnce(isShuttingDown: isShuttingDown, onFailure: onFailure)
        Thread.detachNewThread { [vm] in
            var status: Int32?
            while status == nil { status = try? vm.waitForExit(timeout: 86_400) }
            once.fail("QEMU exited with status \(status!)")
        }
        Thread.detachNewThread { [backendThread, vm] in
            let result = backendThread.join()
            if !isShuttingDown() { vm.kill() }
            once.fail("the vsock backend stopped (\(result))")
        }
    }

    /// DestroySandbox powers the guest off; QEMU is killed if it does not exit in time.
    public func shutdown(agent: AgentClient?) async {
        if let agent, vm.isRunning {
            _ = try? await agent.call("DestroySandbox", Grpc_DestroySandboxRequest())
        }
        // A guest that does not power off is asked to quit through QMP, then killed.
        if (try? vm.waitForExit(timeout: 10)) == nil {
            if let qmp = try? QMPClient(socketPath: paths.qmpSocket) {
                try? qmp.quit()
                qmp.close()
            }
            if (try? vm.waitForExit(timeout: 3)) == nil { vm.kill() }
        }
        backend.stop()
        _ = backendThread.join()
        try? FileManager.default.removeItem(atPath: paths.socketDirectory)
    }
}

/// Both watchers may see the same death: the failure is handled by the first one only.
private final class FailureOnce: @unchecked Sendable {
    // @unchecked: `fired` is only touched under `lock`.
    private let lock = NSLock()
    private var fired = false
    private let isShuttingDown: @Sendable () -> Bool
    private let onFailure: @Sendable (String) -> Void

    init(isShuttingDown: @escaping @Sendable () -> Bool, onFailure: @escaping @Sendable (String) -> Void) {
        self.isShuttingDown = isShuttingDown
        self.onFailure = onFailure
    }

    func fail(_ reason: String) {
        let first = lock.withLock { () -> Bool in
            defer { fired = true }
            return !fired && !isShuttingDown()
        }
        if first { onFailure(reason) }
    }
}
