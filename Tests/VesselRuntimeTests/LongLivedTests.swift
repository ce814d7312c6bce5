import Foundation
import Testing
import VesselCore
import VesselDevSupport

/// Containers as users run them: for minutes, with a lot of output. The sandbox owner once lost
/// QEMU 5 s after it went idle (the parent-death signal followed a dispatch worker thread).
@Suite(
    .timeLimit(.minutes(10)), .serialized,
    .enabled(if: VesselCLI.guestAvailable, "VESSEL_KERNEL/VESSEL_INITRD not set (make test sets them)"))
struct LongLivedTests {
    @Test(.timeLimit(.minutes(4)))
    func aContainerThatSleeps60sIsStillRunningAt50s() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["sleep", "60"])
        let pidFile = cli.directory + "/pid"
        var result = try cli.run(["create", "--bundle", bundle, "--pid-file", pidFile, "l1"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try cli.run(["start", "l1"]).status == 0)
        let started = Date()
        let owner = Int32(try String(contentsOfFile: pidFile, encoding: .utf8)) ?? 0
        while Date().timeIntervalSince(started) < 50 {
            sleep(5)
            let state = try cli.state("l1")
            #expect(state["status"] as? String == "running", "at \(Int(Date().timeIntervalSince(started))) s: \(state)")
            if state["status"] as? String != "running" { return }
        }
        result = try cli.run(["exec", "l1", "sh", "-c", "echo still-here"])
        #expect(result.status == 0 && result.stdout.contains("still-here"), "\(result.stderr)")
        // The container ends by itself at 60 s: its status is then stopped and its owner is gone.
        #expect(ProcessIdentity.waitGone(pid: owner, timeout: 60))
        #expect(try cli.state("l1")["status"] as? String == "stopped")
        #expect(try cli.run(["delete", "l1"]).status == 0)
        try cli.expectNothingLeft("l1")
    }

    /// A foreground run that outlives request_timeout (2 s here) and the 5-s idle, printing as it goes.
    @Test(.timeLimit(.minutes(3)))
    func aLongRunKeepsPrintingAndExitsWithItsStatus() throws {
        let cli = try VesselCLI(agent: "request_timeout = 2")
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo tick $i; sleep 1; done; echo done; exit 3"])
        let result = try cli.run(["run", "--bundle", bundle, "l2"])
        #expect(result.status == 3, "\(result.stderr)")
        let expected = (1...12).map { "tick \($0)\n" }.joined() + "done\n"
        #expect(result.stdout == expected, "stderr: \(result.stderr)")
        try cli.expectNothingLeft("l2")
    }

    /// 100 MB of distinct bytes through `vessel run`'s stdout, compared byte for byte.
    @Test(.timeLimit(.minutes(5)))
    func hundredMegabytesOfStdoutArriveIntact() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["cat", "/payload"])
        let payload = Self.payload(count: 100 << 20)
        try payload.write(to: URL(fileURLWithPath: bundle + "/rootfs/payload"))
        let output = cli.directory + "/stdout"
        let result = try cli.run(["run", "--bundle", bundle, "l3"], stdoutFile: output)
        #expect(result.status == 0, "\(result.stderr)")
        try Self.expectFile(output, holds: payload)
        try cli.expectNothingLeft("l3")
    }

    /// 100 MB into `vessel exec cat` and back out, byte for byte: stdin to its end, then stdout,
    /// with the exec's status reported only after the last byte.
    @Test(.timeLimit(.minutes(6)))
    func hundredMegabytesThroughAnExecsStdinAndStdout() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["sleep", "100000"])
        let started = try cli.run(["run", "--detach", "--bundle", bundle, "l4"])
        #expect(started.status == 0, "\(started.stderr)")
        let payload = Self.payload(count: 100 << 20)
        let input = cli.directory + "/stdin", output = cli.directory + "/stdout"
        try payload.write(to: URL(fileURLWithPath: input))
        let result = try cli.run(["exec", "l4", "sh", "-c", "cat; exit 7"], stdoutFile: output, stdinFile: input)
        #expect(result.status == 7, "\(result.stderr)")
        try Self.expectFile(output, holds: payload)
        #expect(try cli.run(["delete", "--force", "l4"]).status == 0)
        try cli.expectNothingLeft("l4")
    }

    static func expectFile(_ path: String, holds payload: Data, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let received = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(received.count == payload.count, sourceLocation: sourceLocation)
        if received != payload {
            let first =
                zip(received, payload).enumerated().first { $0.element.0 != $0.element.1 }?.offset
                ?? min(received.count, payload.count)
            Issue.record(
                "output differs from byte \(first) on (\(received.count) of \(payload.count) bytes)", sourceLocation: sourceLocation)
        }
    }

    /// xorshift64: no block repeats, so a lost, doubled or reordered chunk shows.
    static func payload(count: Int) -> Data {
        var data = Data(count: count)
        var x: UInt64 = 0x9E37_79B9_7F4A_7C15
        data.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for i in 0..<words.count {
                x ^= x << 13
                x ^= x >> 7
                x ^= x << 17
                words[i] = x
            }
        }
        return data
    }
}
