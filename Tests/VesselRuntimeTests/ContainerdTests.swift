import Foundation
import Testing
import VesselCore
import VesselDevSupport
import VesselTestSupport

/// `containerd-shim-vessel-v2` driven by a real containerd 1.6 through `ctr`, as users run it.
@Suite(
    .serialized, .timeLimit(.minutes(10)),
    .enabled(if: VesselCLI.guestAvailable, "VESSEL_KERNEL/VESSEL_INITRD not set (make test sets them)"))
struct ContainerdTests {
    @Test func runRemovesTheTaskAndPropagatesTheExitCode() throws {
        let containerd = try Containerd()
        defer { containerd.stop() }
        let result = try containerd.run("r1", ["sh", "-c", "echo hello from $(hostname); echo to-stderr >&2; exit 42"])
        #expect(result.status == 42, "\(result.output)")
        #expect(result.output.contains("hello from") && result.output.contains("to-stderr"), "\(result.output)")
        let piped = try containerd.run("r2", ["sh", "-c", "read line; echo got:$line"], input: "abc\n")
        #expect(piped.status == 0 && piped.output.contains("got:abc"), "\(piped.output)")
        #expect(try containerd.ctr(["container", "ls", "-q"]).output.isEmpty)
        containerd.expectNothingLeft(["r1", "r2"])
    }

    @Test func detachedTaskExecPauseKillDelete() throws {
        let containerd = try Containerd()
        defer { containerd.stop() }
        var result = try containerd.run("d1", ["sleep", "1000"], flags: ["-d"])
        #expect(result.status == 0, "\(result.output)")
        #expect(try containerd.taskStatus("d1") == "RUNNING")
        result = try containerd.ctr(["task", "exec", "--exec-id", "e1", "d1", "sh", "-c", "echo exec-out; exit 3"])
        #expect(result.status == 3 && result.output.contains("exec-out"), "\(result.output)")
        result = try containerd.ctr(["task", "exec", "--exec-id", "e2", "d1", "sh", "-c", "read x; echo got:$x"], input: "piped\n")
        #expect(result.status == 0 && result.output.contains("got:piped"), "\(result.output)")

        #expect(try containerd.ctr(["task", "pause", "d1"]).status == 0)
        #expect(try containerd.taskStatus("d1") == "PAUSED")
        #expect(try containerd.ctr(["task", "resume", "d1"]).status == 0)
        #expect(try containerd.taskStatus("d1") == "RUNNING")
        result = try containerd.ctr(["task", "metrics", "d1"])
        #expect(result.status == 0 && result.output.contains("cpu.usage_usec"), "\(result.output)")
        let qemu = try containerd.sandbox("d1").qemuPid
        #expect(try containerd.ctr(["task", "ps", "d1"]).output.contains("\(qemu)"))

        #expect(try containerd.ctr(["task", "kill", "-s", "KILL", "d1"]).status == 0)
        #expect(try containerd.waitForStatus("d1", "STOPPED"))
        #expect(try containerd.ctr(["task", "delete", "d1"]).status == 0)
        #expect(try containerd.ctr(["container", "delete", "d1"]).status == 0)
        containerd.expectNothingLeft(["d1"])
    }

    /// `ctr run -t`: the process sees a pty of its container's devpts and the caller's window size.
    @Test func terminalShowsDevPtsAndTheWindowSize() throws {
        try ensureInstalled(["/usr/bin/script": "bsdutils"])
        let containerd = try Containerd()
        defer { containerd.stop() }
        let ctr =
            "/usr/bin/ctr -a \(containerd.socket) -n \(containerd.namespace) run -t --rm --runtime \(Containerd.runtime) "
            + "\(Containerd.image) t1 sh -c 'tty; stty size'"
        let result = try command(["/usr/bin/script", "-qec", "stty rows 33 cols 101; \(ctr)", "/dev/null"])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("/dev/pts/"), "\(result.output)")
        #expect(result.output.contains("33 101"), "\(result.output)")
        containerd.expectNothingLeft(["t1"])
    }

    /// The owner killed with SIGKILL: QEMU follows it, containerd sees the task stop, and its
    /// `delete` of the shim cleans what the owner left.
    @Test func killedOwnerIsCleanedUpByDelete() throws {
        let containerd = try Containerd()
        defer { containerd.stop() }
        #expect(try containerd.run("k1", ["sleep", "1000"], flags: ["-d"]).status == 0)
        let sandbox = try containerd.sandbox("k1")
        kill(sandbox.ownerPid, SIGKILL)
        #expect(ProcessIdentity.waitGone(pid: sandbox.qemuPid, timeout: 30), "QEMU outlived its owner")
        // containerd runs the shim's `delete` when the connection drops, publishes the exit and
        // forgets the task.
        let gone = try containerd.waitForStatus("k1", "")
        let listing = try containerd.ctr(["task", "ls"]).output
        #expect(gone, "\(listing)")
        #expect(try containerd.ctr(["container", "delete", "k1"]).status == 0)
        containerd.expectNothingLeft(["k1"])
    }

    /// QEMU killed: the task exits (status 255) with the reason recorded, and containerd hears of it.
    @Test func killedQEMUMeansTaskExitWithAReason() throws {
        let containerd = try Containerd()
        defer { containerd.stop() }
        let eventsLog = containerd.directory + "/events.log"
        let events = try ChildProcess(["/usr/bin/ctr", "-a", containerd.socket, "events"], stdout: .file(eventsLog))
        defer {
            if !events.stop(grace: 30) { Issue.record("ctr events still running 30 s after SIGTERM: killed") }
        }
        #expect(try containerd.run("q1", ["sleep", "1000"], flags: ["-d"]).status == 0)
        let sandbox = try containerd.sandbox("q1")
        kill(sandbox.qemuPid, SIGKILL)
        #expect(try containerd.waitForStatus("q1", "STOPPED"))
        let record = try containerd.store.load("q1")
        #expect(record.failure?.contains("QEMU exited") == true, "\(record)")
        #expect(record.lifecycle.exitStatus == 255)
        var seen = ""
        waitUntil(timeout: 5, every: 0.1) {
            seen = (try? String(contentsOfFile: eventsLog, encoding: .utf8)) ?? ""
            return seen.contains("/tasks/exit")
        }
        #expect(seen.contains("/tasks/create") && seen.contains("/tasks/start") && seen.contains("/tasks/exit"), "\(seen)")
        #expect(try containerd.ctr(["task", "delete", "q1"]).status == 0)
        #expect(try containerd.ctr(["container", "delete", "q1"]).status == 0)
        containerd.expectNothingLeft(["q1"])
    }

    /// Bad input gets the right error and one line naming what was wrong; nothing is left.
    @Test func badInputIsNamed() throws {
        let containerd = try Containerd()
        defer { containerd.stop() }
        #expect(try containerd.run("b1", ["sleep", "1000"], flags: ["-d"]).status == 0)
        let exec = try ChildProcess(
            [
                "/usr/bin/ctr", "-a", containerd.socket, "-n", containerd.namespace, "task", "exec", "--exec-id", "e1", "b1", "sleep",
                "1000",
            ],
            stdout: .discard)
        defer {
            if !exec.stop(grace: 30) { Issue.record("ctr task exec still running 30 s after SIGTERM: killed") }
        }
        // Until the first e1 runs (the agent forgets an exec once it was waited for and read, so
        // a second e1 that wins the race would simply run).
        var probe = 0
        try waitUntil(timeout: 120, every: 0.1) {
            probe += 1
            let ps = try containerd.ctr(["task", "exec", "--exec-id", "probe\(probe)", "b1", "sh", "-c", "ps | grep -c '[s]leep 1000'"])
            return ps.output.trimmingCharacters(in: .whitespacesAndNewlines) == "2"
        }
        var result = try containerd.ctr(["task", "exec", "--exec-id", "e1", "b1", "true"])
        #expect(result.status != 0 && result.output.contains("exec id e1 already exists in container b1"), "\(result.output)")
        result = try containerd.ctr(["task", "exec", "--exec-id", "e2", "--cwd", "relative/dir", "b1", "true"])
        #expect(result.status != 0 && result.output.contains("process.cwd \"relative/dir\" is not an absolute path"), "\(result.output)")
        result = try containerd.ctr(["task", "exec", "--exec-id", "e3", "b1", "no-such-binary"])
        #expect(result.status != 0 && result.output.contains("no-such-binary"), "\(result.output)")
        result = try containerd.ctr(["task", "kill", "nope"])
        #expect(result.status != 0 && result.output.contains("not found"), "\(result.output)")
        #expect(try containerd.ctr(["task", "kill", "-s", "KILL", "b1"]).status == 0)
        #expect(try containerd.waitForStatus("b1", "STOPPED"))
        #expect(try containerd.ctr(["task", "delete", "b1"]).status == 0)
        #expect(try containerd.ctr(["container", "delete", "b1"]).status == 0)
        containerd.expectNothingLeft(["b1"])
    }
}
