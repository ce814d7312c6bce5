import Foundation
import Testing
import VesselLinux
import VesselTestSupport

/// The bounds the tests rely on: a command that hangs fails one test, a daemon dies with the run.
@Suite(.timeLimit(.minutes(1)))
struct CommandTests {
    @Test func statusOutputAndInput() throws {
        let result = try runCommand(["/bin/sh", "-c", "cat; echo to-stderr >&2; exit 3"], input: .text("from-stdin\n"))
        #expect(result.status == 3 && result.output == "from-stdin\n" && result.errors == "to-stderr\n", "\(result)")
        let merged = try runCommand(["sh", "-c", "echo one; echo two >&2"], mergingErrors: true)
        #expect(merged.output == "one\ntwo\n" && merged.stderr.isEmpty, "\(merged)")
        let directory = try temporaryDirectory("vessel-cmd")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(try runCommand(["pwd"], directory: directory).output == directory + "\n")
        #expect(try runCommand(["/usr/bin/env"], environment: ["ONLY": "this"]).output == "ONLY=this\n")
        try runCommand(["/bin/echo", "to-a-file"], stdoutFile: directory + "/out")
        #expect(try String(contentsOfFile: directory + "/out", encoding: .utf8) == "to-a-file\n")
        #expect(throws: TestSupportError.self) { try runCommand(["/nonexistent/program"]) }
    }

    /// A child that sleeps past its timeout is killed, and the call says so with what it wrote.
    @Test func aCommandThatOutlivesItsTimeoutIsKilledAndReported() throws {
        // sleep takes fractional seconds: an argument no other process has.
        let marker = "\(Int.random(in: 100...999)).\(getpid())"
        let start = ContinuousClock.now
        let error = #expect(throws: CommandTimedOut.self) {
            try runCommand(["/bin/sh", "-c", "echo started; exec sleep \(marker)"], timeout: 1)
        }
        #expect(ContinuousClock.now - start < .seconds(10), "the timeout did not end the wait")
        #expect(error?.result.status == 128 + SIGKILL && error?.survivedKill == false, "\(String(describing: error))")
        #expect(error?.result.output == "started\n")
        #expect(HostProcesses.pids(withArgument: marker).isEmpty, "the sleeping child was left behind")
    }

    /// `timeoutSignal` first (vessel cleans up on SIGINT), SIGKILL for a child that ignores it.
    @Test func theTimeoutSignalComesFirstThenSIGKILL() throws {
        let handled = #expect(throws: CommandTimedOut.self) {
            try runCommand(
                ["/bin/sh", "-c", "trap 'echo interrupted; exit 4' INT; while :; do sleep 0.1; done"], timeout: 1, timeoutSignal: SIGINT)
        }
        #expect(handled?.result.status == 4 && handled?.result.output == "interrupted\n", "\(String(describing: handled))")
        let ignored = #expect(throws: CommandTimedOut.self) {
            try runCommand(["/bin/sh", "-c", "trap '' INT; exec sleep 100"], timeout: 1, timeoutSignal: SIGINT)
        }
        #expect(ignored?.result.status == 128 + SIGKILL, "\(String(describing: ignored))")
    }
}

@Suite(.timeLimit(.minutes(1)))
struct ChildProcessTests {
    @Test func waitsHaveABoundAndStopEscalates() throws {
        let directory = try temporaryDirectory("vessel-child")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let child = try ChildProcess(["/bin/sh", "-c", "trap '' TERM; touch \(directory)/ready; exec sleep 100"])
        try #require(waitUntil(timeout: 10) { FileManager.default.fileExists(atPath: directory + "/ready") })
        let start = ContinuousClock.now
        #expect(child.wait(timeout: 0.3) == nil && child.isRunning)
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(!child.stop(grace: 0.3), "SIGTERM is ignored: it had to be killed")
        #expect(child.exitStatus == 128 + SIGKILL && !child.isRunning)
        #expect(child.stop(grace: 0.3), "a second stop finds it gone")
    }

    /// The parent-death signal: a helper process starts a daemon the way the tests do, and is
    /// killed; the daemon must not outlive it.
    @Test func aDaemonDiesWithItsParent() throws {
        let helper = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("vessel-test-helper")
            .path
        try #require(FileManager.default.isExecutableFile(atPath: helper), "\(helper) not built")
        let directory = try temporaryDirectory("vessel-pdeath")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let parent = try ChildProcess([helper, directory + "/pid", "/bin/sleep", "\(Int.random(in: 100...999)).\(getpid())"])
        defer { parent.kill() }
        try #require(waitUntil(timeout: 10) { FileManager.default.fileExists(atPath: directory + "/pid") }, "the helper wrote no pid")
        let daemon = try #require(Int32(try String(contentsOfFile: directory + "/pid", encoding: .utf8)))
        #expect(HostProcesses.children(of: parent.pid).map(\.pid) == [daemon])
        parent.signal(SIGKILL)
        #expect(parent.wait(timeout: 10) == 128 + SIGKILL)
        #expect(Linux.waitGone(pid: daemon, timeout: 10), "the daemon \(daemon) outlived its parent")
    }
}

@Suite(.timeLimit(.minutes(1)))
struct WaitTests {
    @Test func pollsEndAtTheirBound() {
        let start = ContinuousClock.now
        #expect(!waitUntil(timeout: 0.2) { false })
        #expect(ContinuousClock.now - start < .seconds(5))
    }

    @Test func asyncPollsEndOnceTheConditionHolds() async {
        let start = ContinuousClock.now
        var checks = 0
        #expect(
            await waitUntil(timeout: 10, every: 0.01) {
                checks += 1
                return checks == 3
            })
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(await !waitUntil(timeout: 0.2) { false })
    }

    @Test func listenersAndReadsHaveBounds() throws {
        let directory = try temporaryDirectory("vessel-listen")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let listener = try UnixListener(path: directory + "/l.sock")
        defer { listener.close() }
        #expect(throws: TestSupportError.self) { try listener.accept(timeout: 0.2) }
        let client = try Linux.connectUnix(directory + "/l.sock")
        defer { Linux.close(client) }
        let server = try listener.accept(timeout: 5)
        defer { Linux.close(server) }
        try Linux.writeAll(client, Array("hello there".utf8))
        #expect(readUntil(server, "there", timeout: 5) == "hello there")
        #expect(readUntil(server, "never", timeout: 0.2) == "")
    }
}
