import Foundation
import Testing
import VesselAgentClient
import VesselDevSupport
import VesselLinux
import VesselProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// The agent's stdio streams (`--stdio-addr`): a connection per fd, named by the id the agent
/// writes first, bound to a process by CreateContainer/ExecProcess.
@Suite(.timeLimit(.minutes(3)), .serialized)
struct StdioStreamTests {
    typealias Stream = StdioStreamClient

    func withStreamingAgent(_ body: (LocalAgent, String) async throws -> Void) async throws {
        let socket = "/tmp/vessel-stdio-\(UUID().uuidString.prefix(8)).sock"
        defer { unlink(socket) }
        try await withAgent(arguments: ["--stdio-addr", "unix://\(socket)"]) { agent in try await body(agent, socket) }
    }

    @Test func outputArrivesWholeOnItsStreamsAndReadStdoutRefuses() async throws {
        try await withStreamingAgent { agent, socket in
            let out = try Stream.dial(socket), err = try Stream.dial(socket)
            defer {
                out.close()
                err.close()
            }
            #expect(out.id != 0 && err.id != 0 && out.id != err.id)
            // 10 MiB, far more than a pipe and the socket buffers hold: back-pressure, not loss.
            let script = "head -c 10485760 /dev/zero | tr '\\0' a; echo err >&2; exit 3"
            try await agent.client.createContainer(
                "big", spec: agent.spec(["sh", "-c", script]),
                stdio: StdioPorts(stdout: out.id, stderr: err.id))
            try await agent.client.startContainer("big")
            async let stdout = out.readAll()
            async let stderr = err.readAll()
            let (o, e) = try await (stdout, stderr)
            #expect(o.count == 10 << 20)
            #expect(o.allSatisfy { $0 == UInt8(ascii: "a") })
            #expect(String(decoding: e, as: UTF8.self) == "err\n")
            #expect(try await agent.client.wait("big") == 3)
            await expectError(.failedPrecondition, containing: "stdio stream") { _ = try await agent.client.read("big") }
            try await agent.client.removeContainer("big")
        }
    }

    @Test func stdinStreamEndIsStdinEndAndTheExecIsForgotten() async throws {
        try await withStreamingAgent { agent, socket in
            try await agent.run("box", ["sleep", "1000"])
            let input: [UInt8] = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            for round in 0..<2 {
                let stdin = try Stream.dial(socket), stdout = try Stream.dial(socket), stderr = try Stream.dial(socket)
                defer {
                    stdin.close()
                    stdout.close()
                    stderr.close()
                }
                // The same exec id twice: once waited for and read to EOF, the first is gone.
                try await agent.client.exec(
                    "box", "cat", process: LocalAgent.process(["cat"]),
                    stdio: StdioPorts(stdin: stdin.id, stdout: stdout.id, stderr: stderr.id))
                async let echoed = stdout.readAll()
                async let errors = stderr.readAll()
                try await stdin.write(input)
                stdin.endInput()
                #expect(try await echoed == input, "round \(round)")
                #expect(try await errors.isEmpty)
                #expect(try await agent.client.wait("box", "cat") == 0)
            }
            try await agent.client.signal("box", signal: SIGKILL)
            _ = try await agent.client.wait("box")
        }
    }

    @Test func unknownTakenOrImpossibleStreamsAreRefusedAndNothingIsCreated() async throws {
        try await withStreamingAgent { agent, socket in
            let out = try Stream.dial(socket)
            defer { out.close() }
            await expectError(.invalidArgument, containing: "stdio stream 999 is unknown") {
                try await agent.client.createContainer("c", spec: agent.spec(["true"]), stdio: StdioPorts(stdout: 999))
            }
            await expectError(.invalidArgument, containing: "named twice") {
                try await agent.client.createContainer("c", spec: agent.spec(["true"]), stdio: StdioPorts(stdout: out.id, stderr: out.id))
            }
            await expectError(.invalidArgument, containing: "terminal process has no stderr") {
                try await agent.client.createContainer("c", spec: agent.spec(["true"], terminal: true), stdio: StdioPorts(stderr: out.id))
            }
            // None of the refusals took the stream or left a container behind.
            try await agent.client.createContainer("c", spec: agent.spec(["echo", "still here"]), stdio: StdioPorts(stdout: out.id))
            try await agent.client.startContainer("c")
            #expect(String(decoding: try await out.readAll(), as: UTF8.self) == "still here\n")
            #expect(try await agent.client.wait("c") == 0)
            // A claimed stream cannot be named again.
            await expectError(.invalidArgument, containing: "unknown or taken") {
                try await agent.client.createContainer("d", spec: agent.spec(["true"]), stdio: StdioPorts(stdout: out.id))
            }
        }
    }
}
