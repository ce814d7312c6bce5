import Foundation
import Testing
import VesselAgentClient
import VesselDevSupport
import VesselProtocol
import VesselTestSupport

/// A sandbox is a pod: its containers share the pod's IPC, UTS and network namespaces (with
/// loopback up and the pod's hostname) and keep their own pid and mount namespaces.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct PodTests {
    static let probe = "for n in ipc uts net pid; do readlink /proc/self/ns/$n; done; hostname; cat /sys/class/net/lo/flags"

    func podSpec(_ agent: LocalAgent, _ args: [String]) -> Grpc_Spec {
        var spec = agent.spec(args, hostname: "")
        spec.linux.namespaces.append(.with { $0.type = "network" })
        return spec
    }

    @Test func containersShareThePodsNamespaces() async throws {
        try await withAgent { agent in
            try await agent.client.call(
                AgentAPI.createSandbox,
                Grpc_CreateSandboxRequest.with {
                    $0.sandboxID = "pod"
                    $0.hostname = "pod-host"
                })
            for id in ["a", "b"] {
                try await agent.client.createContainer(id, spec: podSpec(agent, ["sh", "-c", Self.probe]))
                try await agent.client.startContainer(id)
            }
            let a = try await agent.output("a").split(separator: "\n").map(String.init)
            let b = try await agent.output("b").split(separator: "\n").map(String.init)
            #expect(a.count == 6 && b.count == 6, "a: \(a) b: \(b)")
            guard a.count == 6, b.count == 6 else { return }
            #expect(a[0..<3] == b[0..<3], "ipc, uts and net are the pod's: \(a) \(b)")
            #expect(a[3] != b[3], "each container has its own pid namespace")
            let namespaceLinks = { (task: String) in
                ["ipc", "uts", "net"].map { (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(task)/ns/\($0)")) ?? "" }
            }
            let own = namespaceLinks("/proc/self")
            #expect(Array(a[0..<3]) != own, "the pod's namespaces are new ones")
            // They were made on a thread that has ended: no thread of the agent is left in them.
            let threads = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(agent.process.pid)/task")) ?? []
            #expect(!threads.isEmpty)
            for thread in threads {
                let namespaces = namespaceLinks("/proc/\(agent.process.pid)/task/\(thread)")
                #expect(namespaces == own, "agent thread \(thread) is in \(namespaces)")
            }
            #expect(a[4] == "pod-host" && b[4] == "pod-host")
            #expect(a[5] == "0x9", "loopback is up in the pod's network namespace: flags \(a[5])")
            #expect(try await agent.client.wait("a") == 0)
        }
    }

    /// As under runc: a terminal comes from the container's own devpts, so the process sees
    /// /dev/pts/N (and /dev/console is that pty), for the init and for an exec.
    @Test func terminalsAreTheContainersOwnPtys() async throws {
        try await withAgent { agent in
            try await agent.create("t", ["sh", "-c", "tty; stat -c %t:%T /dev/console $(tty); echo done; sleep 1000"], terminal: true)
            try await agent.client.startContainer("t")
            let output = try await agent.read("t", until: "done")
            let lines = output.split(separator: "\r\n").map(String.init)
            #expect(lines.first?.hasPrefix("/dev/pts/") == true, "\(output)")
            #expect(lines.count >= 3 && lines[1] == lines[2], "/dev/console is the terminal: \(output)")
            try await agent.exec("t", "e", ["sh", "-c", "tty"], terminal: true)
            let exec = try await agent.read("t", "e", until: "\n")
            #expect(exec.hasPrefix("/dev/pts/") && !exec.hasPrefix(lines.first ?? "?"), "\(exec)")
            try await agent.client.signal("t", signal: 9)
            _ = try await agent.client.wait("t")
        }
    }
}

/// SIGTERM (what `make` and the guest's init path send) stops the agent only after it removed its
/// containers: none of their processes may outlive it.
@Suite(.timeLimit(.minutes(2)))
struct AgentTerminationTests {
    @Test func sigtermRemovesTheContainersThenExits() async throws {
        let agent = try await LocalAgent(binary: agentBinary)
        try await agent.run("s1", ["sleep", "1000"])
        try await agent.exec("s1", "e1", ["sleep", "999"])
        let children = HostProcesses.children(of: agent.process.pid)
        #expect(children.count >= 2, "the container's init and exec are the agent's children: \(children)")
        await agent.client.close()
        agent.process.signal(SIGTERM)
        let status = agent.process.wait(timeout: 30)
        #expect(status != nil, "the agent did not exit within 30 s of SIGTERM: killed")
        if let status {
            #expect(status == 0, "a clean exit, not death by the signal: status \(status)")
        } else {
            agent.process.kill()
        }
        let alive = children.filter { kill($0.pid, 0) == 0 && HostProcesses.startTime($0.pid) == $0.startTime }
        #expect(alive.isEmpty, "container processes outlived the agent: \(alive)")
        await agent.stop()
    }
}
