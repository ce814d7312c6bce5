import Foundation
import NIOPosix
import Testing
import VesselAgentClient
import VesselProtocol
import VesselTestSupport
import VesselVM
import VesselVsock

/// Boots the guest kernel + initrd that `make kernel initrd` built (paths from VESSEL_KERNEL and
/// VESSEL_INITRD, which `make test` sets; without them these tests are skipped, so a plain
/// `swift test` works on a machine without the guest images).
let kernel = TestGuest.kernel ?? ""
let initrd = TestGuest.initrd ?? ""
let debugInitrd = TestGuest.debugInitrd ?? ""

@Suite(
    .timeLimit(.minutes(10)), .serialized,
    .enabled(if: !kernel.isEmpty && !initrd.isEmpty, "VESSEL_KERNEL/VESSEL_INITRD not set (make test sets them)"))
struct BootTests {
    func config(_ parameters: [String]) -> VMConfig {
        var config = VMConfig(kernel: kernel, initrd: initrd)
        config.memoryMiB = 256
        config.kernelParameters = parameters
        if let accel = ProcessInfo.processInfo.environment["VESSEL_ACCEL"], let a = VMConfig.Accelerator(rawValue: accel) {
            config.accelerator = a
        }
        return config
    }

    @Test func agentBecomesReadySurvivesACrashingChildAndPowersOff() throws {
        let vm = try GuestVM(config(["agent.selftest=crash,poweroff"]))
        defer { vm.kill() }
        let ready = try vm.waitFor("vessel-agent ready in", timeout: 120)
        try vm.waitFor("crashing child reaped with status 139, PID 1 still serving", timeout: 60)
        try vm.waitFor("vessel-agent: powering off", timeout: 60)
        let status = try vm.waitForExit(timeout: 60)
        #expect(status == 0, "QEMU exit status after power-off; console:\n\(vm.consoleTail())")
        #expect(!vm.output.contains("Kernel panic"), "\(vm.consoleTail())")
        let line = vm.output.split(separator: "\n").first { $0.contains("vessel-agent ready in") } ?? ""
        print("boot (\(vm.accelerator.rawValue)): QEMU start -> ready line \(String(format: "%.2f", ready)) s; \(line)")
    }

    @Test func unknownKernelOptionsAreLoggedAndTheGuestStillBoots() throws {
        let vm = try GuestVM(config(["agent.no_such_option=1", "agent.selftest=poweroff"]))
        defer { vm.kill() }
        try vm.waitFor("unknown kernel option agent.no_such_option=1 ignored", timeout: 120)
        try vm.waitFor("vessel-agent ready in", timeout: 60)
        #expect(try vm.waitForExit(timeout: 60) == 0)
    }
}

/// A guest with vsock through our hybrid backend; everything is torn down when `body` returns.
/// `shares` are exported with virtio-9p (the guest mounts them by tag).
func withVsockGuest<T>(
    initrd: String, parameters: [String] = [], shares: [SharedDirectory] = [],
    _ body: (GuestVM, VsockBackend) async throws -> T
) async throws -> T {
    let dir = try temporaryDirectory("vessel-vm")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let backend = try VsockBackend(vhostUserSocketPath: dir + "/vhost.sock", hybridSocketPath: dir + "/vsock.sock", guestCID: 3)
    let thread = backend.start()
    defer {
        backend.stop()
        _ = thread.join()
    }
    var config = VMConfig(kernel: kernel, initrd: initrd)
    config.vsockSocket = backend.vhostUserSocketPath
    config.kernelParameters = parameters
    config.shares = shares
    config.qmpSocket = dir + "/qmp.sock"
    let vm = try GuestVM(config)
    defer { vm.kill() }
    try vm.waitFor("vessel-agent ready in", timeout: 120)
    return try await body(vm, backend)
}

/// The host reaches the agent in the guest: QEMU's vhost-user-vsock device, our backend, CONNECT
/// 1024, then ttrpc. DestroySandbox then powers the guest off.
@Suite(
    .timeLimit(.minutes(10)), .serialized,
    .enabled(if: !kernel.isEmpty && !initrd.isEmpty, "VESSEL_KERNEL/VESSEL_INITRD not set (make test sets them)"))
struct GuestAgentOverVsockTests {
    @Test func healthCheckThenDestroySandboxPowersOff() async throws {
        try await withVsockGuest(initrd: initrd) { vm, backend in
            let fd = try HybridDialer.connect(socketPath: backend.hybridSocketPath, port: 1024)
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let client = AgentClient(try await TTRPCClient.connect(connectedSocket: fd, group: group), timeout: .seconds(60))
            #expect(try await client.check().status == .serving)
            #expect(!(try await client.version().agentVersion.isEmpty))
            let details = try await client.call(AgentAPI.getGuestDetails, Grpc_GuestDetailsRequest.with { $0.memBlockSize = true })
            #expect(details.agentDetails.initDaemon)
            // QMP answers next to the agent (the runtime's fallback for a guest that will not power off).
            let qmp = try QMPClient(socketPath: vm.config.qmpSocket!)
            #expect(try qmp.status() == "running")
            qmp.close()
            try await client.call(AgentAPI.destroySandbox, Grpc_DestroySandboxRequest())
            await client.close()
            try? await group.shutdownGracefully()
            #expect(try vm.waitForExit(timeout: 60) == 0, "\(vm.consoleTail())")
            #expect(vm.output.contains("vessel-agent: powering off"))
        }
    }
}

/// `agent.debug_console`: a shell on a pty, reached through hybrid vsock port 1026.
@Suite(
    .timeLimit(.minutes(10)), .serialized,
    .enabled(if: !kernel.isEmpty && !debugInitrd.isEmpty, "VESSEL_KERNEL/VESSEL_DEBUG_INITRD not set (make test sets them)"))
struct DebugConsoleTests {
    @Test func debugConsoleRunsAShell() async throws {
        try await withVsockGuest(initrd: debugInitrd, parameters: ["agent.debug_console"]) { vm, backend in
            let fd = try HybridDialer.connect(socketPath: backend.hybridSocketPath, port: 1026)
            defer { close(fd) }
            let command = Array("echo console-$((40+2)) $$ $(tty)\n".utf8)
            #expect(command.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == command.count)
            var seen = ""
            let deadline = Date().addingTimeInterval(60)
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !seen.contains("console-42 ") && Date() < deadline {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 1000) >= 0 else { break }
                if p.revents & Int16(POLLIN) != 0 {
                    let n = read(fd, &buffer, buffer.count)
                    if n <= 0 { break }
                    seen += String(decoding: buffer[0..<n], as: UTF8.self)
                }
            }
            #expect(seen.contains("console-42 "), "console output: \(seen)\nguest console:\n\(vm.consoleTail())")
            #expect(seen.contains("/dev/pts/"), "the shell runs on a pty: \(seen)")
            // QMP's quit ends a guest from the outside.
            let qmp = try QMPClient(socketPath: vm.config.qmpSocket!)
            try qmp.quit()
            qmp.close()
            #expect(try vm.waitForExit(timeout: 30) == 0)
        }
    }
}
