import Foundation
import Testing
import VesselVM

/// Boots the guest kernel + initrd that `make kernel initrd` built (paths from VESSEL_KERNEL and
/// VESSEL_INITRD, which `make test` sets; without them these tests are skipped, so a plain
/// `swift test` works on a machine without the guest images).
let kernel = ProcessInfo.processInfo.environment["VESSEL_KERNEL"] ?? ""
let initrd = ProcessInfo.processInfo.environment["VESSEL_INITRD"] ?? ""

@Suite(.serialized, .enabled(if: !kernel.isEmpty && !initrd.isEmpty, "VESSEL_KERNEL/VESSEL_INITRD not set (make test sets them)"))
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
