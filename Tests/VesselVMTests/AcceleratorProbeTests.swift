import Foundation
import Testing
import VesselVM

/// The KVM probe with stand-ins for QEMU: on a host where KVM opens but never boots a guest, the
/// probe's QEMU outlived SIGTERM and the probe, which only sent SIGTERM, waited for it forever
/// (make run hung).
@Suite(
    .timeLimit(.minutes(1)), .serialized,
    .enabled(if: access("/dev/kvm", R_OK | W_OK) == 0, "the probe only runs where /dev/kvm opens"))
struct AcceleratorProbeTests {
    func probe(_ script: String) throws -> (VMConfig.Accelerator, seconds: Double, pids: String) {
        let dir = NSTemporaryDirectory() + "vessel-probe-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let qemu = dir + "/qemu", pidFile = dir + "/pid", kernel = dir + "/bzImage"
        try "#!/bin/sh\necho $$ > \(pidFile)\n\(script)\n".write(toFile: qemu, atomically: true, encoding: .utf8)
        chmod(qemu, 0o755)
        try "".write(toFile: kernel, atomically: true, encoding: .utf8)
        let start = Date()
        let answer = AcceleratorProbe.resolve(.auto, kernel: kernel, qemu: qemu, cacheDirectory: dir)
        let pid = (try? String(contentsOfFile: pidFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        return (answer, Date().timeIntervalSince(start), pid)
    }

    @Test func aQEMUThatIgnoresSIGTERMIsKilledAndMeansTCG() throws {
        let (answer, seconds, pid) = try probe("trap '' TERM\nwhile :; do sleep 1; done")
        #expect(answer == .tcg)
        #expect(seconds < 10, "the probe took \(seconds) s")
        #expect(!pid.isEmpty && kill(Int32(pid) ?? 0, 0) != 0, "the stand-in QEMU \(pid) still runs")
    }

    @Test func aKernelThatPrintsMeansKVM() throws {
        let (answer, _, _) = try probe("echo 'Linux version 6.1'\nexec sleep 30")
        #expect(answer == .kvm)
    }
}
