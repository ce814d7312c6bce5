import Foundation
import Testing
import VesselDevSupport
import VesselProtocol
import VesselTestSupport

/// The agent as a root process on this host, over a Unix socket, with busybox containers.
@Suite(.timeLimit(.minutes(3)), .serialized)
struct AgentContainerTests {
    @Test func echoReachesStdoutAndExitsZero() async throws {
        try await withAgent { agent in
            try await agent.run("echo", ["echo", "hello from vessel"])
            #expect(try await agent.output("echo") == "hello from vessel\n")
            #expect(try await agent.client.wait("echo") == 0)
            try await agent.client.removeContainer("echo")
        }
    }

    @Test func exitCodesAndSignalDeath() async throws {
        try await withAgent { agent in
            try await agent.run("three", ["sh", "-c", "exit 3"])
            #expect(try await agent.client.wait("three") == 3)
            try await agent.run("zero", ["true"])
            #expect(try await agent.client.wait("zero") == 0)
            try await agent.run("killed", ["sleep", "1000"])
            try await agent.client.signal("killed", "", signal: 9)
            #expect(try await agent.client.wait("killed") == 128 + 9)
            // Waiting twice gives the same answer: the status is kept for every waiter.
            #expect(try await agent.client.wait("killed") == 128 + 9)
        }
    }

    @Test func stdinRoundTripWithCloseStdin() async throws {
        try await withAgent { agent in
            try await agent.run("cat", ["cat"])
            try await agent.write("cat", "ping\n")
            try await agent.write("cat", "pong\n")
            try await agent.client.closeStdin("cat")
            #expect(try await agent.output("cat") == "ping\npong\n")
            #expect(try await agent.client.wait("cat") == 0)
        }
    }

    @Test func stderrIsSeparate() async throws {
        try await withAgent { agent in
            try await agent.run("err", ["sh", "-c", "echo out; echo err >&2; exit 4"])
            #expect(try await agent.output("err", stderr: true) == "err\n")
            #expect(try await agent.output("err") == "out\n")
            #expect(try await agent.client.wait("err") == 4)
        }
    }

    @Test func terminalSizeAndCtrlC() async throws {
        try await withAgent { agent in
            try await agent.create("tty", ["sh", "-c", "read line; stty size; echo got:$line"], terminal: true)
            try await agent.client.resize("tty", rows: 42, columns: 101)
            try await agent.client.startContainer("tty")
            try await agent.write("tty", "hi\r")
            let output = try await agent.read("tty", until: "got:hi")
            #expect(output.contains("42 101"), "\(output)")
            #expect(output.contains("got:hi"), "\(output)")
            #expect(try await agent.client.wait("tty") == 0)

            // ^C from the terminal reaches the foreground process (an exec: PID 1 ignores SIGINT).
            try await agent.run("ctl", ["sleep", "1000"])
            try await agent.exec("ctl", "fg", ["sleep", "999"], terminal: true)
            try await Task.sleep(for: .milliseconds(200))
            try await agent.write("ctl", exec: "fg", "\u{3}")
            #expect(try await agent.client.wait("ctl", "fg") == 128 + 2)
        }
    }

    @Test func execJoinsTheContainer() async throws {
        try await withAgent { agent in
            try await agent.run("host", ["sleep", "1000"])
            try await agent.exec("host", "e1", ["sh", "-c", "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; id -u"])
            let output = try await agent.output("host", "e1")
            #expect(output == "vessel-test\nsleep 1000 \n0\n", "\(output)")
            #expect(try await agent.client.wait("host", "e1") == 0)
            try await agent.exec("host", "e2", ["sh", "-c", "exit 6"])
            #expect(try await agent.client.wait("host", "e2") == 6)
            await expectError(.alreadyExists, containing: "e2") { try await agent.exec("host", "e2", ["true"]) }
            await expectError(.notFound, containing: "nope") { try await agent.exec("host", "e3", ["nope"]) }
            try await agent.client.signal("host", "", signal: 9)
            #expect(try await agent.client.wait("host") == 137)
        }
    }

    /// Waited for and read to EOF, an exec is gone: its id is free again and a signal sent to it
    /// later cannot reach whatever process has its pid by then.
    @Test func anExecThatWasWaitedAndReadIsForgotten() async throws {
        try await withAgent { agent in
            try await agent.run("gone", ["sleep", "1000"])
            try await agent.exec("gone", "e1", ["sh", "-c", "echo once"])
            #expect(try await agent.output("gone", "e1") == "once\n")
            #expect(try await agent.output("gone", "e1", stderr: true) == "")
            #expect(try await agent.client.wait("gone", "e1") == 0)
            await expectError(.notFound, containing: "e1") { try await agent.client.signal("gone", "e1", signal: 9) }
            try await agent.exec("gone", "e1", ["sh", "-c", "echo twice"])
            #expect(try await agent.output("gone", "e1") == "twice\n")
            #expect(try await agent.client.wait("gone", "e1") == 0)
            // Exited but not read to EOF yet: still known, and a signal to it is a no-op.
            try await agent.exec("gone", "e2", ["true"])
            #expect(try await agent.client.wait("gone", "e2") == 0)
            try await agent.client.signal("gone", "e2", signal: 9)
            try await agent.client.signal("gone", "", signal: 9)
            #expect(try await agent.client.wait("gone") == 137)
        }
    }

    @Test func signalAllProcessesWithEmptyExecID() async throws {
        try await withAgent { agent in
            try await agent.run("sig", ["sh", "-c", "trap 'exit 5' TERM; while :; do sleep 0.05; done"])
            try await agent.exec("sig", "child", ["sleep", "777"])
            try await agent.client.signal("sig", "", signal: 15)
            #expect(try await agent.client.wait("sig") == 5)
            // SIGTERM, or SIGKILL when the init's exit ended the pid namespace first (1 run in 10 here).
            let childStatus = try await agent.client.wait("sig", "child")
            #expect([128 + 15, 128 + 9].contains(childStatus), "child status \(childStatus)")
        }
    }

    @Test func twoContainersAtOnce() async throws {
        try await withAgent { agent in
            try await agent.create("a", ["sleep", "1000"], hostname: "alpha")
            try await agent.create("b", ["sleep", "1000"], hostname: "beta")
            try await agent.client.startContainer("a")
            try await agent.client.startContainer("b")
            try await agent.exec("a", "h", ["hostname"])
            try await agent.exec("b", "h", ["hostname"])
            #expect(try await agent.output("a", "h") == "alpha\n")
            #expect(try await agent.output("b", "h") == "beta\n")
            try await agent.client.removeContainer("a")
            try await agent.client.removeContainer("b")
        }
    }

    @Test func removeLeavesNoProcessOrMount() async throws {
        try await withAgent { agent in
            let marker = "4242\(Int.random(in: 1000...9999))"
            try await agent.run("gone", ["sleep", marker])
            try await agent.exec("gone", "also", ["sleep", marker])
            #expect(HostProcesses.pids(withArgument: marker).count == 2)
            try await agent.create("never-started", ["sleep", marker])
            try await agent.client.removeContainer("gone")
            try await agent.client.removeContainer("never-started")
            #expect(HostProcesses.pids(withArgument: marker).isEmpty)
            #expect(agent.leftoverMounts().isEmpty, "\(agent.leftoverMounts())")
            await expectError(.notFound, containing: "gone") { try await agent.client.removeContainer("gone") }
        }
    }

    @Test func badRequestsGetClearErrorsAndTheAgentKeepsServing() async throws {
        try await withAgent { agent in
            await expectError(.notFound, containing: "container ghost not found") { try await agent.client.startContainer("ghost") }
            await expectError(.notFound, containing: "ghost") { _ = try await agent.client.wait("ghost") }
            try await agent.run("dup", ["sleep", "1000"])
            await expectError(.alreadyExists, containing: "container dup already exists") { try await agent.create("dup", ["true"]) }
            await expectError(.notFound, containing: "root.path") {
                var spec = agent.spec(["true"])
                spec.root.path += "-missing"
                try await agent.client.createContainer("noroot", spec: spec)
            }
            await expectError(.invalidArgument, containing: "args is empty") { try await agent.create("noargs", []) }
            await expectError(.invalidArgument, containing: "container_id") { try await agent.create("../x", ["true"]) }
            await expectError(.invalidArgument, containing: "namespaces[0].type") {
                var spec = agent.spec(["true"])
                spec.linux.namespaces = [.with { $0.type = "bogus" }]
                try await agent.client.createContainer("badns", spec: spec)
            }
            await expectError(.invalidArgument, containing: "destination") {
                var spec = agent.spec(["true"])
                spec.mounts.append(
                    .with {
                        $0.destination = "/../../escape"
                        $0.type = "tmpfs"
                        $0.source = "tmpfs"
                    })
                try await agent.client.createContainer("escape", spec: spec)
            }
            try await agent.create("badexec", ["/no/such/binary"])
            await expectError(.notFound, containing: "/no/such/binary") { try await agent.client.startContainer("badexec") }
            await expectError(.failedPrecondition, containing: "not in the created state") { try await agent.client.startContainer("dup") }
            // Still serving.
            #expect(try await agent.client.check().status == .serving)
            try await agent.client.removeContainer("dup")
            try await agent.client.removeContainer("badexec")
            #expect(agent.leftoverMounts().isEmpty)
        }
    }
}
