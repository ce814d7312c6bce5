import Foundation
import Testing
import VesselDevSupport
import VesselProtocol
import VesselTestSupport

/// OCI hooks run at their points of the lifecycle with the state on stdin.
@Suite(.timeLimit(.minutes(3)), .serialized)
struct HookTests {
    static func hook(_ script: String, timeout: Int64 = 0) -> Grpc_Hook {
        .with {
            $0.path = "/bin/sh"
            $0.args = ["sh", "-c", script]
            $0.timeout = timeout
        }
    }

    static func json(_ path: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any] ?? [:]
    }

    @Test func allFiveHooksSeeTheirState() async throws {
        try await withAgent { agent in
            let dir = agent.directory.appendingPathComponent("hooks").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            var spec = agent.spec(["sh", "-c", "ls /hooks"])
            spec.annotations = ["org.example": "yes"]
            spec.mounts.append(SpecTemplate.mount("/hooks", "bind", dir, ["rbind"]))
            spec.hooks = .with {
                $0.createRuntime = [Self.hook("cat > \(dir)/createRuntime.json")]
                $0.createContainer = [Self.hook("cat > \(dir)/createContainer.json")]
                // Runs inside the container after pivot_root: its paths are the container's.
                $0.startContainer = [Self.hook("cat > /hooks/startContainer.json")]
                $0.poststart = [Self.hook("cat > \(dir)/poststart.json")]
                $0.poststop = [Self.hook("cat > \(dir)/poststop.json")]
            }
            try await agent.client.createContainer("hooked", spec: spec)
            #expect(FileManager.default.fileExists(atPath: dir + "/createRuntime.json"))
            #expect(FileManager.default.fileExists(atPath: dir + "/createContainer.json"))
            #expect(!FileManager.default.fileExists(atPath: dir + "/startContainer.json"))
            try await agent.client.startContainer("hooked")
            let listing = try await agent.output("hooked")
            #expect(listing.contains("startContainer.json"), "startContainer ran before the process: \(listing)")
            #expect(try await agent.client.wait("hooked") == 0)
            try await agent.client.removeContainer("hooked")

            for (name, status) in [
                ("createRuntime", "creating"), ("createContainer", "creating"), ("startContainer", "created"),
                ("poststart", "running"), ("poststop", "stopped"),
            ] {
                let state = try Self.json("\(dir)/\(name).json")
                #expect(state["id"] as? String == "hooked", "\(name): \(state)")
                #expect(state["status"] as? String == status, "\(name): \(state)")
                #expect((state["annotations"] as? [String: String])?["org.example"] == "yes", "\(name)")
                #expect(state["bundle"] as? String == agent.directory.path, "\(name)")
            }
            #expect((try Self.json("\(dir)/createRuntime.json")["pid"] as? Int ?? 0) > 1)
        }
    }

    /// Two RemoveContainer calls at once (a retrying caller) release the container once: one
    /// poststop run, and the second call succeeds without releasing anything again.
    @Test func overlappingRemovesReleaseOnce() async throws {
        try await withAgent { agent in
            let dir = agent.directory.appendingPathComponent("hooks").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            var spec = agent.spec(["sleep", "1000"])
            spec.hooks = .with { $0.poststop = [Self.hook("sleep 0.5; echo ran >> \(dir)/poststop.log")] }
            try await agent.client.createContainer("twice", spec: spec)
            try await agent.client.startContainer("twice")
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<2 { group.addTask { try await agent.client.removeContainer("twice") } }
                try await group.waitForAll()
            }
            let runs = try String(contentsOfFile: dir + "/poststop.log", encoding: .utf8)
            #expect(runs == "ran\n", "poststop ran \(runs.split(separator: "\n").count) times")
            await expectError(.notFound, containing: "twice") { try await agent.client.removeContainer("twice") }
        }
    }

    @Test func failingOrSlowHooksFailTheCreateAndLeaveNothing() async throws {
        try await withAgent { agent in
            var spec = agent.spec(["sleep", "42421"])
            spec.hooks = .with { $0.createRuntime = [Self.hook("exit 3")] }
            await expectError(.failedPrecondition, containing: "hooks.createRuntime[0] (/bin/sh) exited with status 3") {
                try await agent.client.createContainer("bad", spec: spec)
            }
            spec.hooks = .with { $0.createContainer = [Self.hook("exit 4")] }
            await expectError(.failedPrecondition, containing: "hooks.createContainer[0] (/bin/sh) exited with status 4") {
                try await agent.client.createContainer("bad2", spec: spec)
            }
            spec.hooks = .with { $0.createRuntime = [Self.hook("sleep 30", timeout: 1)] }
            await expectError(.deadlineExceeded, containing: "timed out after 1s") {
                try await agent.client.createContainer("slow", spec: spec)
            }
            #expect(HostProcesses.pids(withArgument: "42421").isEmpty)
            #expect(HostProcesses.pids(withArgument: "sleep 30").isEmpty)
            #expect(agent.leftoverMounts().isEmpty)
            try await agent.run("bad", ["true"])
            #expect(try await agent.client.wait("bad") == 0)
        }
    }
}
