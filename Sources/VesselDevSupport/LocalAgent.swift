import Foundation
import NIOPosix
import VesselAgentClient
import VesselLinux
import VesselProtocol
import VesselTestSupport

/// A real `vessel-agent` process in host mode on a Unix socket in a fresh temp dir, with a busybox
/// rootfs next to it: what the host-mode tests, `vessel-dev demo` and `make bench` drive. The
/// agent dies with the process that started it (VesselTestSupport's `ChildProcess`).
public final class LocalAgent: @unchecked Sendable {
    public static let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    public let directory: URL
    public let rootfs: String
    public let runDir: String
    public let socket: String
    public let process: ChildProcess
    public let client: AgentClient

    /// `arguments` go after the usual ones (e.g. `--no-pivot`).
    public init(binary: String, logLevel: String = "warning", arguments: [String] = []) async throws {
        let path = try temporaryDirectory("vessel-agent")
        directory = URL(fileURLWithPath: path)
        rootfs = path + "/rootfs"
        runDir = path + "/run"
        let socket = path + "/agent.sock"
        self.socket = socket
        let agent: ChildProcess
        do {
            try BusyboxRootfs.make(at: rootfs)
            agent = try ChildProcess(
                [binary, "--server-addr", "unix://\(socket)", "--run-dir", runDir, "--log-level", logLevel] + arguments)
        } catch {
            try? FileManager.default.removeItem(atPath: path)
            throw DevSupportError("cannot start vessel-agent \(binary): \(error)")
        }
        process = agent
        var connected: AgentClient?
        await waitUntil(timeout: 10, every: 0.025) {
            guard agent.isRunning else { return true }
            guard FileManager.default.fileExists(atPath: socket) else { return false }
            connected = try? await AgentClient.connect(unixPath: socket, group: Self.group, timeout: .seconds(60))
            return connected != nil
        }
        guard let connected else {
            agent.stop(grace: 10)
            try? FileManager.default.removeItem(atPath: path)
            throw DevSupportError("vessel-agent (\(binary)) did not listen on \(socket)")
        }
        client = connected
    }

    /// Runs `body` against a fresh agent and always stops it, whatever `body` does. An agent
    /// that has to be killed is an error of its own: its SIGTERM cleanup hung.
    public static func with<T>(binary: String, arguments: [String] = [], _ body: (LocalAgent) async throws -> T) async throws -> T {
        let agent = try await LocalAgent(binary: binary, arguments: arguments)
        let result: T
        do {
            result = try await body(agent)
        } catch {
            await agent.stop()
            throw error
        }
        guard await agent.stop() else {
            throw DevSupportError("vessel-agent (\(binary)) still running \(Int(stopGrace)) s after SIGTERM: killed")
        }
        return result
    }

    /// How long the agent gets to remove its containers after SIGTERM.
    public static let stopGrace: Double = 30

    /// SIGTERM: the agent removes its containers and exits; then the temp dir goes. False when it
    /// was still running after `stopGrace` and had to be killed (a hang fails one test, not the run).
    @discardableResult
    public func stop() async -> Bool {
        await client.close()
        process.signal(SIGTERM)
        // A cancelled test (its time limit) stops waiting and kills the agent at once.
        let exited = await waitUntil(timeout: Self.stopGrace, every: 0.02) { !process.isRunning }
        if !exited { process.kill() }
        try? FileManager.default.removeItem(at: directory)
        return exited
    }

    /// VmRSS of the agent process in KiB.
    public var residentKiB: Int { Linux.procKiB("VmRSS", in: "/proc/\(process.pid)/status") }

    /// The busybox container spec used everywhere: new pid/mount/uts/ipc namespaces, the usual mounts.
    public func spec(_ args: [String], terminal: Bool = false, hostname: String = "vessel-test") -> Grpc_Spec {
        SpecTemplate.busybox(root: rootfs, args: args, terminal: terminal, hostname: hostname)
    }

    public static func process(_ args: [String], terminal: Bool = false) -> Grpc_Process {
        .with {
            $0.args = args
            $0.env = ["PATH=/bin", "HOME=/root", "TERM=xterm"]
            $0.cwd = "/"
            $0.terminal = terminal
        }
    }
}

public typealias DevSupportError = TestSupportError

public enum BusyboxRootfs {
    public static let applets = [
        "sh", "echo", "cat", "true", "false", "sleep", "id", "hostname", "ls", "stty", "grep",
        "mount", "wc", "head", "tail", "cut", "tr", "touch", "mkdir", "rm", "env", "pwd", "dd", "ps",
        "httpd", "wget", "ip", "nc", "readlink", "stat", "ping", "kill", "seq", "mknod", "chmod",
    ]

    /// A minimal rootfs: Debian's busybox-static and its applets as symlinks.
    public static func make(at path: String) throws {
        let fm = FileManager.default
        for dir in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            try fm.createDirectory(atPath: "\(path)/\(dir)", withIntermediateDirectories: true)
        }
        guard fm.fileExists(atPath: "/bin/busybox") else {
            throw DevSupportError("/bin/busybox is missing: apt-get install busybox-static")
        }
        try fm.copyItem(atPath: "/bin/busybox", toPath: "\(path)/bin/busybox")
        for applet in applets {
            try fm.createSymbolicLink(atPath: "\(path)/bin/\(applet)", withDestinationPath: "busybox")
        }
        try "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
            .write(toFile: "\(path)/etc/passwd", atomically: true, encoding: .utf8)
        try "root:x:0:\nnogroup:x:65534:\n".write(toFile: "\(path)/etc/group", atomically: true, encoding: .utf8)
    }
}

public enum SpecTemplate {
    public static func busybox(root: String, args: [String], terminal: Bool = false, hostname: String = "vessel-test") -> Grpc_Spec {
        Grpc_Spec.with {
            $0.version = "1.0.2"
            $0.root.path = root
            $0.hostname = hostname
            $0.process = LocalAgent.process(args, terminal: terminal)
            $0.mounts = [
                mount("/proc", "proc", "proc", []),
                mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
                mount("/dev/pts", "devpts", "devpts", ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]),
                mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
                mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
                mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
                mount("/tmp", "tmpfs", "tmpfs", ["nosuid", "nodev"]),
            ]
            $0.linux.namespaces = ["pid", "mount", "uts", "ipc"].map { type in .with { $0.type = type } }
        }
    }

    public static func mount(_ destination: String, _ type: String, _ source: String, _ options: [String]) -> Grpc_Mount {
        .with {
            $0.destination = destination
            $0.type = type
            $0.source = source
            $0.options = options
        }
    }
}

/// An OCI bundle (config.json + busybox rootfs) as docker or podman would hand it to a runtime.
public enum OCIBundle {
    public static func make(
        at path: String, args: [String], terminal: Bool = false, hostname: String = "vessel",
        extraMounts: [[String: Any]] = [], extra: [String: Any] = [:]
    ) throws {
        try BusyboxRootfs.make(at: path + "/rootfs")
        var config: [String: Any] = [
            "ociVersion": "1.1.0",
            "process": [
                "terminal": terminal,
                "user": ["uid": 0, "gid": 0],
                "args": args,
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
                "cwd": "/",
                "capabilities": [
                    "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"], "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
                    "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
                ],
                "rlimits": [["type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024]],
                "noNewPrivileges": true,
            ] as [String: Any],
            "root": ["path": "rootfs", "readonly": false],
            "hostname": hostname,
            "mounts": SpecTemplate.busybox(root: "", args: []).mounts.map {
                ["destination": $0.destination, "type": $0.type, "source": $0.source, "options": $0.options] as [String: Any]
            } + extraMounts,
            "linux": ["namespaces": ["pid", "mount", "uts", "ipc"].map { ["type": $0] }] as [String: Any],
        ]
        config.merge(extra) { $1 }
        let data = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: path + "/config.json"))
    }
}
