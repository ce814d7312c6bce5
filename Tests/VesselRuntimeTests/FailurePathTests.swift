import Foundation
import Testing
import VesselCore
import VesselDevSupport
import VesselTestSupport

@testable import VesselSandbox

/// What goes wrong in production, driven through `vessel` as docker and podman drive it: a guest
/// that stops answering, one that never boots, a paused container removed; and what callers do
/// at once (two sandboxes, kill --all, parallel execs). Each ends with nothing left on the host.
@Suite(
    .timeLimit(.minutes(10)), .serialized,
    .enabled(if: VesselCLI.guestAvailable, "VESSEL_KERNEL/VESSEL_INITRD not set (make test sets them)"))
struct FailurePathTests {
    /// A QEMU that no longer runs (SIGSTOP: what a hung host or a debugger leaves) must not hang
    /// exec or kill: they give up with one line within request_timeout (exec when its stdio stream
    /// cannot be dialed); delete --force then removes the sandbox, QEMU included.
    @Test func aStoppedQEMUFailsExecAndKillInBoundedTimeAndForceDeleteRemovesIt() throws {
        let requestTimeout = 3.0
        // Without health checks: the requests' own bounds are what this test pins.
        let cli = try VesselCLI(agent: "request_timeout = \(Int(requestTimeout))\nhealth_check_timeout = 0")
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["sleep", "1000"])
        let started = try cli.run(["run", "--detach", "--bundle", bundle, "stop1"])
        #expect(started.status == 0, "\(started.stderr)")
        let qemu = try cli.sandbox("stop1").qemuPid
        #expect(qemu > 0 && kill(qemu, SIGSTOP) == 0)

        var (result, took) = try timed { try cli.run(["exec", "stop1", "echo", "never-printed"], timeout: 60) }
        // The stdio stream is dialed before any request, within request_timeout as well.
        #expect(took < requestTimeout + 5, "exec took \(took) s")
        expectOneLineError(result, "open a stdio stream to the agent")
        #expect(result.stderr.contains("did not answer within \(Int(requestTimeout * 1000)) ms"), "\(result.stderr)")
        #expect(!result.stdout.contains("never-printed"))

        (result, took) = try timed { try cli.run(["kill", "stop1", "TERM"], timeout: 60) }
        #expect(took < requestTimeout + 5, "kill took \(took) s")
        expectOneLineError(result, "signal container stop1")

        (result, took) = try timed { try cli.run(["delete", "--force", "stop1"], timeout: 60) }
        #expect(result.status == 0, "\(result.stderr)")
        #expect(took < requestTimeout + 15, "delete --force took \(took) s")
        #expect(ProcessIdentity.waitGone(pid: qemu, timeout: 0), "QEMU outlived delete --force")
        try cli.expectNothingLeft("stop1")
    }

    /// An exec already waiting when the guest stops answering has no request to time out: the
    /// owner's health check ends it, with status 255 and one line naming the check, within
    /// health_check_timeout and the 5-s interval. QEMU is killed, the container reads stopped
    /// (the guest could resume otherwise) and a plain delete removes everything.
    @Test func anExecWaitingWhenTheGuestStopsAnsweringEndsOnceAHealthCheckFails() throws {
        let healthTimeout = 3.0
        let cli = try VesselCLI(agent: "health_check_timeout = \(Int(healthTimeout))")
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["sleep", "1000"])
        var result = try cli.run(["run", "--detach", "--bundle", bundle, "hc1"])
        #expect(result.status == 0, "\(result.stderr)")
        let exec = Background { try cli.run(["exec", "hc1", "sh", "-c", "echo started; exec sleep 2000"], timeout: 120) }
        let running = { try cli.run(["exec", "hc1", "sh", "-c", "ps | grep -c '[s]leep 2000'"]).stdout == "1\n" }
        try waitUntil(timeout: 60, every: 0.2) { try running() }
        let qemu = try cli.sandbox("hc1").qemuPid
        #expect(qemu > 0 && kill(qemu, SIGSTOP) == 0)

        let (waited, took) = try timed { try exec.value(timeout: 60) }
        #expect(took < healthTimeout + 5 + 5, "the exec ended \(took) s after QEMU stopped")
        result = try #require(waited, "the exec still waits 60 s after QEMU stopped")
        #expect(result.status == 255 && result.stdout == "started\n", "status \(result.status), stdout \(result.stdout)")
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].contains("health_check_timeout (3 s)"), "\(result.stderr)")
        #expect(ProcessIdentity.waitGone(pid: qemu, timeout: 10), "QEMU outlived the failed health check")
        #expect(try cli.state("hc1")["status"] as? String == "stopped")
        result = try cli.run(["delete", "hc1"])
        #expect(result.status == 0, "\(result.stderr)")
        try cli.expectNothingLeft("hc1")
    }

    /// A guest whose agent never announces itself fails `create` and `run` once boot_timeout is
    /// up, with one line that names it, and leaves nothing (QEMU, still running the guest, included).
    @Test func aGuestThatNeverBecomesReadyFailsOnceTheBootTimeoutIsUp() throws {
        let guest = try temporaryDirectory("vessel-silent")
        defer { try? FileManager.default.removeItem(atPath: guest) }
        let cli = try VesselCLI(hypervisor: "boot_timeout = 3", initrd: try silentInitrd(in: guest))
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["true"])
        for (id, command) in [("boot1", ["create"]), ("boot2", ["run"])] {
            let (result, took) = try timed { try cli.run(command + ["--bundle", bundle, id], timeout: 90) }
            expectOneLineError(result, "boot_timeout (3 s)")
            #expect(took < 3 + 7, "\(command[0]) took \(took) s")
            try cli.expectNothingLeft(id)
        }
    }

    /// As with runc: a paused container is not stopped, so plain delete refuses it and leaves it
    /// paused; delete --force kills it (frozen processes included) and removes everything.
    @Test func aPausedContainerIsDeletedOnlyWithForce() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["sleep", "1000"])
        let pidFile = cli.directory + "/pid"
        var result = try cli.run(["run", "--detach", "--bundle", bundle, "--pid-file", pidFile, "p1"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try cli.run(["pause", "p1"]).status == 0)
        result = try cli.run(["delete", "p1"])
        expectOneLineError(result, "cannot delete container p1 that is not stopped: paused")
        #expect(try cli.state("p1")["status"] as? String == "paused")

        let (qemu, monitor) = (try cli.sandbox("p1").qemuPid, Int32(try String(contentsOfFile: pidFile, encoding: .utf8)) ?? 0)
        let took: Double
        (result, took) = try timed { try cli.run(["delete", "--force", "p1"], timeout: 90) }
        #expect(result.status == 0, "\(result.stderr)")
        // Through the owner, not its fallback (killing it after a 30-s wait for the frozen process).
        #expect(result.stderr.isEmpty && took < 20, "delete --force took \(took) s: \(result.stderr)")
        #expect(ProcessIdentity.waitGone(pid: qemu, timeout: 0) && ProcessIdentity.waitGone(pid: monitor, timeout: 0))
        try cli.expectNothingLeft("p1")
    }
}

extension FailurePathTests {
    /// Two lone containers are two VMs (two kernels) at once: `list --format json` shows both with
    /// the pids callers wait on, and stopping one leaves the other running.
    @Test func twoSandboxesAtOnceAreListedAndStoppedApart() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["sleep", "1000"])
        var pids: [String: Int] = [:]
        for id in ["two1", "two2"] {
            let pidFile = cli.directory + "/\(id).pid"
            let result = try cli.run(["run", "--detach", "--bundle", bundle, "--pid-file", pidFile, id])
            #expect(result.status == 0, "\(result.stderr)")
            pids[id] = Int(try String(contentsOfFile: pidFile, encoding: .utf8))
        }
        #expect(try listed(cli) == ["two1": "running \(pids["two1"] ?? -1)", "two2": "running \(pids["two2"] ?? -1)"])
        let boots = try ["two1", "two2"].map { try cli.run(["exec", $0, "cat", "/proc/sys/kernel/random/boot_id"]).stdout }
        #expect(!boots[0].isEmpty && boots[0] != boots[1], "one kernel each: \(boots)")

        #expect(try cli.run(["kill", "two1", "KILL"]).status == 0)
        #expect(ProcessIdentity.waitGone(pid: Int32(pids["two1"] ?? 0), timeout: 60))
        #expect(try listed(cli) == ["two1": "stopped 0", "two2": "running \(pids["two2"] ?? -1)"])
        #expect(try cli.run(["delete", "two1"]).status == 0)
        try cli.expectNothingLeft("two1")
        let result = try cli.run(["exec", "two2", "echo", "still-here"])
        #expect(result.status == 0 && result.stdout == "still-here\n", "\(result.stderr)")
        #expect(try cli.run(["delete", "--force", "two2"]).status == 0)
        try cli.expectNothingLeft("two2")
    }

    /// `list --format json`, parsed: "status pid" by id.
    private func listed(_ cli: VesselCLI) throws -> [String: String] {
        let result = try cli.run(["list", "--format", "json"])
        let entries = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]] ?? []
        return Dictionary(
            entries.map { ($0["id"] as? String ?? "?", "\($0["status"] as? String ?? "?") \($0["pid"] as? Int ?? -1)") }
        ) { $1 }
    }

    /// As runc's: kill signals the container's init only, --all every process in it (an exec
    /// too). The init, PID 1 of its namespace, ignores a SIGTERM it has no handler for.
    @Test func killAllReachesEveryProcessOfTheContainer() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["sleep", "1000"])
        #expect(try cli.run(["run", "--detach", "--bundle", bundle, "ka1"]).status == 0)
        let execPidFile = cli.directory + "/exec.pid"
        var result = try cli.run(["exec", "--detach", "--pid-file", execPidFile, "ka1", "sleep", "2000"])
        #expect(result.status == 0, "\(result.stderr)")
        let execMonitor = Int32(try String(contentsOfFile: execPidFile, encoding: .utf8)) ?? 0
        let count = { try cli.run(["exec", "ka1", "sh", "-c", "ps | grep -c '[s]leep 2000'"]).stdout }
        #expect(try count() == "1\n")

        #expect(try cli.run(["kill", "ka1", "TERM"]).status == 0)
        #expect(try count() == "1\n", "a kill without --all reached the exec")
        #expect(try cli.run(["kill", "--all", "ka1", "TERM"]).status == 0)
        #expect(ProcessIdentity.waitGone(pid: execMonitor, timeout: 30), "the exec outlived kill --all")
        #expect(try count() == "0\n")
        #expect(try cli.state("ka1")["status"] as? String == "running")

        #expect(try cli.run(["kill", "--all", "ka1", "KILL"]).status == 0)
        try waitUntil(timeout: 30, every: 0.1) { try cli.state("ka1")["status"] as? String == "stopped" }
        result = try cli.run(["delete", "ka1"])
        #expect(result.status == 0, "\(result.stderr)")
        try cli.expectNothingLeft("ka1")
    }

    /// Three `vessel exec` at once into one container: each gets its own stdin, output and status.
    @Test func threeExecsAtOnceEachGetTheirOwnStdioAndStatus() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["sleep", "1000"])
        #expect(try cli.run(["run", "--detach", "--bundle", bundle, "px1"]).status == 0)
        // Interleaved in time: each prints over a second while the others do.
        let execs = (1...3).map { n in
            Background {
                try cli.run(
                    ["exec", "px1", "sh", "-c", "read x; for i in 1 2 3 4; do echo $x-$i; sleep 0.3; done; echo err-$x >&2; exit 1\(n)"],
                    stdin: "in\(n)\n", timeout: 120)
            }
        }
        for (index, exec) in execs.enumerated() {
            let n = index + 1
            let result = try exec.value(timeout: 150)
            #expect(result?.status == Int32(10 + n), "exec \(n): \(result?.stderr ?? "still running")")
            #expect(result?.stdout == (1...4).map { "in\(n)-\($0)\n" }.joined(), "exec \(n): \(result?.stdout ?? "")")
            #expect(result?.stderr == "err-in\(n)\n")
        }
        #expect(try cli.run(["delete", "--force", "px1"]).status == 0)
        try cli.expectNothingLeft("px1")
    }
}

/// `body` and how long it took, in seconds.
func timed<T>(_ body: () throws -> T) rethrows -> (T, Double) {
    let start = Date()
    let value = try body()
    return (value, Date().timeIntervalSince(start))
}

/// A failed command as callers see it: status 1 and one line on stderr that says what failed.
func expectOneLineError(_ result: VesselCLI.Result, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(result.status == 1, "status \(result.status): \(result.stderr)", sourceLocation: sourceLocation)
    let lines = result.stderr.split(separator: "\n")
    #expect(lines.count == 1 && lines[0].contains(fragment), "\(result.stderr)", sourceLocation: sourceLocation)
}

/// An initrd whose /init only waits: the guest boots, and no agent ever answers.
func silentInitrd(in directory: String) throws -> String {
    let root = directory + "/root", source = directory + "/init.c", image = directory + "/silent-initrd.img"
    try FileManager.default.createDirectory(atPath: root + "/dev", withIntermediateDirectories: true)
    try "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n".write(toFile: source, atomically: true, encoding: .utf8)
    for step in [
        ["/usr/bin/gcc", "-static", "-Os", "-o", root + "/init", source],
        ["/bin/sh", "-c", "cd \(root) && find . | cpio --quiet -o -H newc > \(image)"],
    ] {
        let result = try command(step, timeout: 120)
        guard result.status == 0 else { throw TestSupportError("\(step.joined(separator: " ")): \(result.output)") }
    }
    return image
}

@Suite struct ConsoleLineTests {
    /// SeaBIOS clears the screen and resets the terminal (ESC c) before the kernel prints.
    @Test func theLastConsoleLineKeepsOnlyText() {
        #expect(
            SandboxVM.lastLine(
                of: "\u{1B}c\u{1B}[?7l\u{1B}[2J\u{1B}[0mSeaBIOS (version 1.16)\r\nBooting from ROM..\u{1B}c\u{1B}[?7l\u{1B}[2J\n\n")
                == "Booting from ROM..")
        #expect(SandboxVM.lastLine(of: "") == "")
    }
}
