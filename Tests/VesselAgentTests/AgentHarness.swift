import Foundation
import NIOCore
import NIOPosix
import SwiftProtobuf
import Testing
import VesselProtocol

/// A real `vessel-agent` process on a Unix socket in a temp dir, a busybox rootfs, and a ttrpc client.
final class AgentHarness: @unchecked Sendable {
    static let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    let directory: URL
    let rootfs: String
    let runDir: String
    let socket: String
    let process: Process
    let client: TTRPCClient

    static var agentBinary: String {
        if let path = ProcessInfo.processInfo.environment["VESSEL_AGENT_BIN"] { return path }
        // Tests run from the package's build folder: the agent sits next to the test bundle.
        let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return packageRoot.appendingPathComponent(".build/debug/vessel-agent").path
    }

    /// A rootfs with busybox-static and its applets as symlinks.
    static func makeRootfs(at path: String) throws {
        let fm = FileManager.default
        for dir in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            try fm.createDirectory(atPath: "\(path)/\(dir)", withIntermediateDirectories: true)
        }
        try fm.copyItem(atPath: "/bin/busybox", toPath: "\(path)/bin/busybox")
        for applet in ["sh", "echo", "cat", "true", "false", "sleep", "id", "hostname", "ls", "stty", "grep", "mount", "wc", "head", "tr"] {
            try fm.createSymbolicLink(atPath: "\(path)/bin/\(applet)", withDestinationPath: "busybox")
        }
        try "root:x:0:0:root:/root:/bin/sh\n".write(toFile: "\(path)/etc/passwd", atomically: true, encoding: .utf8)
    }

    init() async throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("vessel-agent-test-\(UUID().uuidString.prefix(8))")
        rootfs = directory.appendingPathComponent("rootfs").path
        runDir = directory.appendingPathComponent("run").path
        socket = directory.appendingPathComponent("agent.sock").path
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try Self.makeRootfs(at: rootfs)

        process = Process()
        process.executableURL = URL(fileURLWithPath: Self.agentBinary)
        process.arguments = ["--server-addr", "unix://\(socket)", "--run-dir", runDir, "--log-level", "debug"]
        try process.run()
        var connected: TTRPCClient?
        for _ in 0..<200 {
            if FileManager.default.fileExists(atPath: socket),
               let client = try? await TTRPCClient.connect(unixPath: socket, group: Self.group) {
                connected = client
                break
            }
            try await Task.sleep(for: .milliseconds(25))
        }
        guard let connected else {
            process.terminate()
            throw HarnessError("agent did not listen on \(socket)")
        }
        client = connected
    }

    /// Stops the agent (SIGTERM: it removes its containers) and deletes the temp dir.
    func shutdown() async {
        await client.close()
        process.terminate()
        process.waitUntilExit()
        try? FileManager.default.removeItem(at: directory)
    }

    // MARK: calls

    func call<Req: Message, Resp: Message>(_ method: String, _ request: Req, as: Resp.Type = Google_Protobuf_Empty.self) async throws -> Resp {
        try await client.call(service: "grpc.AgentService", method: method, request: request, as: Resp.self, timeout: .seconds(60))
    }

    static func spec(root: String, args: [String], terminal: Bool = false, hostname: String = "vessel-test") -> Grpc_Spec {
        Grpc_Spec.with {
            $0.root.path = root
            $0.hostname = hostname
            $0.process = .with {
                $0.args = args
                $0.env = ["PATH=/bin", "HOME=/root"]
                $0.cwd = "/"
                $0.terminal = terminal
            }
            $0.mounts = [
                .with { $0.destination = "/proc"; $0.type = "proc"; $0.source = "proc" },
                .with { $0.destination = "/dev"; $0.type = "tmpfs"; $0.source = "tmpfs"; $0.options = ["nosuid", "strictatime", "mode=755", "size=65536k"] },
                .with { $0.destination = "/dev/pts"; $0.type = "devpts"; $0.source = "devpts"; $0.options = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
                .with { $0.destination = "/dev/shm"; $0.type = "tmpfs"; $0.source = "shm"; $0.options = ["nosuid", "noexec", "nodev", "mode=1777"] },
                .with { $0.destination = "/sys"; $0.type = "sysfs"; $0.source = "sysfs"; $0.options = ["nosuid", "noexec", "nodev", "ro"] },
                .with { $0.destination = "/tmp"; $0.type = "tmpfs"; $0.source = "tmpfs" },
            ]
            $0.linux.namespaces = ["pid", "mount", "uts", "ipc"].map { type in .with { $0.type = type } }
        }
    }

    func create(_ id: String, _ args: [String], terminal: Bool = false, hostname: String = "vessel-test") async throws {
        _ = try await call("CreateContainer", Grpc_CreateContainerRequest.with {
            $0.containerID = id
            $0.oci = Self.spec(root: rootfs, args: args, terminal: terminal, hostname: hostname)
        })
    }

    func start(_ id: String) async throws {
        _ = try await call("StartContainer", Grpc_StartContainerRequest.with { $0.containerID = id })
    }

    func run(_ id: String, _ args: [String]) async throws {
        try await create(id, args)
        try await start(id)
    }

    func exec(_ id: String, _ execID: String, _ args: [String], terminal: Bool = false) async throws {
        _ = try await call("ExecProcess", Grpc_ExecProcessRequest.with {
            $0.containerID = id
            $0.execID = execID
            $0.process = .with { $0.args = args; $0.env = ["PATH=/bin"]; $0.cwd = "/"; $0.terminal = terminal }
        })
    }

    func wait(_ id: String, _ execID: String = "") async throws -> Int32 {
        try await call("WaitProcess", Grpc_WaitProcessRequest.with { $0.containerID = id; $0.execID = execID },
                       as: Grpc_WaitProcessResponse.self).status
    }

    func kill(_ id: String, _ execID: String = "", signal: Int32) async throws {
        _ = try await call("SignalProcess", Grpc_SignalProcessRequest.with {
            $0.containerID = id; $0.execID = execID; $0.signal = UInt32(signal)
        })
    }

    /// Reads a stream until EOF.
    func readAll(_ id: String, _ execID: String = "", stderr: Bool = false) async throws -> String {
        var out = Data()
        while true {
            let chunk = try await call(stderr ? "ReadStderr" : "ReadStdout",
                                       Grpc_ReadStreamRequest.with { $0.containerID = id; $0.execID = execID; $0.len = 1024 },
                                       as: Grpc_ReadStreamResponse.self).data
            if chunk.isEmpty { break }
            out.append(chunk)
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Reads until `needle` shows up (for terminals, whose EOF comes only at exit).
    func read(_ id: String, _ execID: String = "", until needle: String) async throws -> String {
        var out = ""
        while !out.contains(needle) {
            let chunk = try await call("ReadStdout", Grpc_ReadStreamRequest.with { $0.containerID = id; $0.execID = execID; $0.len = 1024 },
                                       as: Grpc_ReadStreamResponse.self).data
            if chunk.isEmpty { break }
            out += String(decoding: chunk, as: UTF8.self)
        }
        return out
    }

    func writeStdin(_ id: String, exec execID: String = "", _ text: String) async throws {
        _ = try await call("WriteStdin", Grpc_WriteStreamRequest.with { $0.containerID = id; $0.execID = execID; $0.data = Data(text.utf8) },
                           as: Grpc_WriteStreamResponse.self)
    }

    func remove(_ id: String) async throws {
        _ = try await call("RemoveContainer", Grpc_RemoveContainerRequest.with { $0.containerID = id })
    }

    /// Host pids whose command line contains `marker`.
    static func pids(withArgument marker: String) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            return String(decoding: data, as: UTF8.self).split(separator: "\0").contains { $0 == marker }
        }
    }

    /// Every mount any process on the host sees that mentions our temp dir.
    func leftoverMounts() -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        var found: [String] = []
        for pid in entries.compactMap({ Int32($0) }) {
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/mountinfo") else { continue }
            found += String(decoding: data, as: UTF8.self).split(separator: "\n").map(String.init).filter { $0.contains(directory.path) }
        }
        return found
    }
}

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Runs a test body against a fresh agent and always stops it.
func withAgent(_ body: (AgentHarness) async throws -> Void) async throws {
    let agent = try await AgentHarness()
    do {
        try await body(agent)
    } catch {
        await agent.shutdown()
        throw error
    }
    await agent.shutdown()
}

/// Expects a ttrpc error with `code` whose message contains `fragment`.
func expectError(_ code: TTRPCCode, containing fragment: String, _ body: () async throws -> Void) async {
    do {
        try await body()
        Issue.record("expected \(code) error containing \"\(fragment)\", got success")
    } catch let error as TTRPCError {
        #expect(error.code == code, "\(error)")
        #expect(error.message.contains(fragment), "\(error)")
    } catch {
        Issue.record("expected TTRPCError, got \(error)")
    }
}
