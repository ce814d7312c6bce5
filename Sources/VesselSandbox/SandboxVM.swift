import Foundation
import NIOPosix
import VesselAgentClient
import VesselCore
import VesselLinux
import VesselProtocol
import VesselVM
import VesselVsock

/// One sandbox's QEMU guest and its hybrid-vsock backend. The backend is a thread of the owner;
/// QEMU is a child that gets SIGKILL when the owner dies.
final class SandboxVM: Sendable {
    static let agentPort: UInt32 = 1024
    static let stdioPort: UInt32 = 1025
    static let readyLine = "vessel-agent ready in"

    let paths: SandboxPaths
    let config: RuntimeConfig
    let vm: GuestVM
    private let backend: VsockBackend
    private let backendThread: BackendThread

    /// Starts the backend and QEMU; the guest then boots on its own (`waitReady`).
    init(
        config: RuntimeConfig, paths: SandboxPaths, log: RuntimeLog, networks: [NetworkDevice] = [],
        cgroups: HostCgroup.VMMCgroups = .init()
    ) throws(RuntimeError) {
        self.paths = paths
        self.config = config
        try config.checkGuestFiles()
        for socket in [paths.vhostUserSocket, paths.hybridSocket, paths.qmpSocket] { unlink(socket) }
        backend = try during("start the vsock backend") {
            var options = VsockBackend.Options()
            options.logger.logLevel = log.debugEnabled ? .debug : .error
            return try VsockBackend(
                vhostUserSocketPath: paths.vhostUserSocket, hybridSocketPath: paths.hybridSocket, guestCID: 3,
                options: options)
        }
        backendThread = backend.start()
        var vmConfig = Self.vmConfig(config, paths: paths)
        vmConfig.networks = networks
        vmConfig.cgroup = cgroups.devices
        vmConfig.unifiedCgroup = cgroups.unified
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

    static func vmConfig(_ config: RuntimeConfig, paths: SandboxPaths) -> VMConfig { SandboxVMConfig.make(config, paths: paths) }
}

/// The QEMU command for a sandbox (the benchmark boots its lower bound with the same one).
public enum SandboxVMConfig {
    public static func make(_ config: RuntimeConfig, paths: SandboxPaths) -> VMConfig {
        let h = config.hypervisor
        var vmConfig = VMConfig(kernel: h.kernel, initrd: h.initrd)
        vmConfig.qemu = h.path
        vmConfig.machine = VMConfig.Machine(rawValue: h.machineType) ?? .q35
        vmConfig.vcpus = h.vcpus
        vmConfig.memoryMiB = h.memoryMiB
        vmConfig.translationCacheMiB = h.tcgCacheMiB > 0 ? h.tcgCacheMiB : nil
        vmConfig.freePageReporting = h.freePageReporting
        vmConfig.accelerator = VMConfig.Accelerator(rawValue: h.accelerator) ?? .auto
        vmConfig.kernelParameters =
            ["agent.log=\(config.agent.logLevel)"] + (config.agent.debugConsole ? ["agent.debug_console"] : [])
            + h.kernelParams
        vmConfig.vsockSocket = paths.vhostUserSocket
        vmConfig.shares = [SharedDirectory(tag: GuestBundle.shareTag, path: paths.shared)]
        vmConfig.qmpSocket = paths.qmpSocket
        return vmConfig
    }
}

extension SandboxVM {

    var qemuPid: Int32 { vm.pid }

    /// SIGKILL to QEMU (a stopped one too), then reaped.
    func kill() { vm.kill() }

    /// Until the agent announces itself on the console (no polling of the socket). The error is
    /// the one line the CLI prints: the console's raw tail (escape sequences that reset the
    /// caller's terminal included) stays out of it, its last line of text is kept.
    func waitReady() async throws(RuntimeError) {
        let (vm, timeout) = (vm, TimeInterval(config.hypervisor.bootTimeout))
        let result = await Linux.blocking { Result { try vm.waitFor(Self.readyLine, timeout: timeout) } }
        guard case .failure = result else { return }
        let last = Self.lastLine(of: vm.consoleTail())
        let what =
            vm.exitStatus.map { "QEMU exited (status \($0)) before the agent was ready" }
            ?? "the agent was not ready within boot_timeout (\(config.hypervisor.bootTimeout) s)"
        throw RuntimeError("start the sandbox: \(what); last console line: \(last.isEmpty ? "none" : last)", kind: .unavailable)
    }

    /// The last line with text in `console`, without its escape sequences and control characters.
    static func lastLine(of console: String) -> String {
        var lines: [String] = []
        var line = ""
        var scalars = console.unicodeScalars.makeIterator()
        while let scalar = scalars.next() {
            switch scalar {
            case "\n", "\r":
                lines.append(line)
                line = ""
            case "\u{1B}":
                // CSI: parameters up to a final byte in @...~; any other escape is one character.
                if scalars.next() == "[" {
                    while let next = scalars.next(), !("@"..."~").contains(next) {}
                }
            case _ where scalar.value < 0x20 || scalar.value == 0x7F: break
            default: line.unicodeScalars.append(scalar)
            }
        }
        lines.append(line)
        return lines.last { !$0.trimmingCharacters(in: .whitespaces).isEmpty }?.trimmingCharacters(in: .whitespaces) ?? ""
    }

    /// A ttrpc connection to the agent through the backend's CONNECT handshake.
    func connectAgent() async throws(RuntimeError) -> TTRPCClient {
        let (socket, timeout) = (paths.hybridSocket, dialMilliseconds)
        return try await during("reach the agent") {
            let fd = try await Linux.blocking {
                Result { try HybridDialer.connect(socketPath: socket, port: Self.agentPort, timeoutMilliseconds: timeout) }
            }
            .get()
            return try await TTRPCClient.connect(connectedSocket: fd, group: MultiThreadedEventLoopGroup.singleton)
        }
    }

    /// How long a dial into the guest may take: 10 s, less when requests may take less (a stopped
    /// guest then fails an exec as soon as it fails a kill).
    var dialMilliseconds: Int32 { Int32(clamping: min(10, max(1, config.agent.requestTimeout)) * 1000) }

    /// A stdio stream to the agent (its `StdioStreams` on vsock 1025) and the id it was given.
    func dialStdio() async throws(RuntimeError) -> StdioStream {
        let (socket, timeout) = (paths.hybridSocket, dialMilliseconds)
        return try await during("open a stdio stream to the agent") {
            try await Linux.blocking {
                Result { () throws -> StdioStream in
                    let fd = try HybridDialer.connect(socketPath: socket, port: Self.stdioPort, timeoutMilliseconds: timeout)
                    do {
                        let length = StdioStreamGreeting.length
                        guard let bytes = try Linux.readExactly(fd, length, timeoutMilliseconds: timeout) else {
                            throw RuntimeError("the agent closed a stdio stream before naming it", kind: .unavailable)
                        }
                        guard let id = StdioStreamGreeting.id(bytes) else {
                            throw RuntimeError("the agent named a stdio stream 0", kind: .unavailable)
                        }
                        return StdioStream(fd: fd, id: id)
                    } catch {
                        Linux.close(fd)
                        throw error
                    }
                }
            }.get()
        }
    }

    /// Returns once QEMU or the backend is gone, with what happened.
    func failure() async -> String {
        let (vm, backendThread) = (vm, backendThread)
        return await withTaskGroup(of: String.self) { group in
            group.addTask {
                await Linux.blocking {
                    var status: Int32?
                    while status == nil { status = try? vm.waitForExit(timeout: 86_400) }
                    return "QEMU exited with status \(status!)"
                }
            }
            group.addTask {
                let result = await Linux.blocking { backendThread.join() }
                return "the vsock backend stopped (\(result))"
            }
            let first = await group.next()!
            vm.kill()
            return first
        }
    }

    /// DestroySandbox powers the guest off; QEMU is asked to quit, then killed, if it does not.
    func shutdown(agent: AgentClient?) async {
        let asked = agent != nil && vm.isRunning
        if let agent, asked {
            _ = try? await agent.call(AgentAPI.destroySandbox, Grpc_DestroySandboxRequest())
        }
        let (vm, paths, backend, backendThread) = (vm, paths, backend, backendThread)
        await Linux.blocking {
            // Only a guest that was asked to power off is given time to (one without an agent,
            // its boot failed, would only make the failing create wait).
            if (try? vm.waitForExit(timeout: asked ? 10 : 0)) == nil {
                if let qmp = try? QMPClient(socketPath: paths.qmpSocket) {
                    try? qmp.quit()
                    qmp.close()
                }
                if (try? vm.waitForExit(timeout: 3)) == nil { vm.kill() }
            }
            backend.stop()
            _ = backendThread.join()
        }
    }
}
