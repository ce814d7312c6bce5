import CVessel
import Foundation
import NIOPosix
import VesselAgentClient
import VesselLinux
import VesselProtocol

/// The runc-shaped operations. Each call is one short-lived CLI process; the long-lived parts
/// (sandbox, relays) live in the container's shim.
public struct Runtime: Sendable {
    public let store: StateStore
    public let config: RuntimeConfig
    public let configPath: String?
    public let log: RuntimeLog
    /// Arguments every re-exec of ourselves needs (--root, --config, --log...).
    public let globalArguments: [String]

    public init(root: String, config: RuntimeConfig, configPath: String?, log: RuntimeLog, globalArguments: [String]) {
        store = StateStore(root: root)
        self.config = config
        self.configPath = configPath
        self.log = log
        self.globalArguments = globalArguments
    }

    // MARK: create / start

    /// Checks the bundle, records the container, shares its rootfs and starts the shim, which
    /// boots the sandbox and creates the container; returns the shim's pid once that is done.
    public func create(id: String, bundle path: String, consoleSocket: String?, detachShim: Bool = true) throws(RuntimeError) -> Int32 {
        try StateStore.validate(id: id)
        let bundle = try GuestBundle(bundle: path)
        if bundle.terminal && consoleSocket == nil && detachShim {
            throw RuntimeError("cannot allocate tty if vessel will detach without setting console socket")
        }
        if !bundle.terminal && consoleSocket != nil {
            throw RuntimeError("cannot use console socket if process.terminal is false")
        }
        try config.checkGuestFiles()
        let state = ContainerState(id: id, bundle: bundle.bundle, rootfs: bundle.rootfs, status: .creating, created: rfc3339Now(),
                                   owner: "root", annotations: bundle.oci.annotations ?? [:], terminal: bundle.terminal)
        let paths = try store.create(state)
        var shimStarted = false
        do {
            let spec = try during("encode the guest spec") { try bundle.guestSpec.serializedData() }
            try during("write \(paths.specFile)") { try spec.write(to: URL(fileURLWithPath: paths.specFile)) }
            let mounts = try SharedMounts.make(bundle.hostMounts, in: paths.shared)
            try store.update(id) { (s: inout ContainerState) throws(RuntimeError) in s.sharedMounts = mounts }
            // Flags before the id: like runc's, our parser stops at the first positional argument.
            let pid = try spawnShim(["__shim"] + (consoleSocket.map { ["--console-socket", $0] } ?? []) + [id], newSession: detachShim)
            shimStarted = true
            let created = try store.load(id)
            try HostHooks.run(bundle.oci.hooks?.createRuntime, state: created, name: "createRuntime")
            try HostHooks.run(bundle.oci.hooks?.prestart, state: created, name: "prestart")
            return pid
        } catch {
            // A failing hook comes after the shim reported: its sandbox must go too.
            if shimStarted, let state = try? store.load(id) { stopSandbox(state) }
            cleanUp(id)
            throw error
        }
    }

    /// Re-executes this binary as a shim/exec helper with stdio inherited and waits for its
    /// one-line report on fd 3 ("ok" or "error: ...").
    func spawnShim(_ arguments: [String], newSession: Bool) throws(RuntimeError) -> Int32 {
        let pipe: (read: Int32, write: Int32)
        do { pipe = try Linux.pipe() } catch { throw RuntimeError(stage: "create the shim's report pipe", error) }
        defer { close(pipe.read) }
        let environment = ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" }
        let spawned: SpawnResult
        do {
            spawned = try spawn(exeFD: -1, path: "/proc/self/exe", arguments: ["vessel"] + globalArguments + arguments,
                                environment: environment, fds: [(0, 0), (1, 1), (2, 2), (pipe.write, 3)], newSession: newSession)
        } catch {
            close(pipe.write)
            throw RuntimeError(stage: "start the shim", error)
        }
        close(pipe.write)
        var report = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(pipe.read, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            report += buffer[0..<n]
        }
        let line = String(decoding: report, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if line == "ok" { return spawned.pid }
        var status: Int32 = 0
        waitpid(spawned.pid, &status, 0)
        if line.hasPrefix("error: ") { throw RuntimeError(String(line.dropFirst(7))) }
        throw RuntimeError("the shim exited without a report (status \(status))")
    }

    /// `run` in the foreground: the shim is our child and its exit status is the container's.
    public func waitForShim(_ pid: Int32) -> Int32 {
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
        return Linux.shellStatus(raw)
    }

    public func start(id: String) async throws(RuntimeError) {
        let state = try store.load(id)
        switch state.status {
        case .created: break
        case .running, .paused: throw RuntimeError("cannot start an already running container")
        case .stopped: throw RuntimeError("cannot start a container that has stopped")
        case .creating: throw RuntimeError("cannot start a container that is still being created")
        }
        try await withAgent(id) { agent throws(RuntimeError) in
            try await during("start container \(id)") { try await agent.startContainer(id) }
        }
        let running = try store.update(id) { (s: inout ContainerState) throws(RuntimeError) in if s.status == .created { s.status = .running } }
        let oci = try? OCISpec.load(state.bundle + "/config.json")
        do { try HostHooks.run(oci?.hooks?.poststart, state: running, name: "poststart") } catch { log.warning("\(error)") }
    }

    // MARK: signals, pause, delete

    public func kill(id: String, signal: Int32, all: Bool) async throws(RuntimeError) {
        let state = try store.load(id)
        guard [.created, .running, .paused].contains(state.status) else { throw RuntimeError("container not running") }
        try await withAgent(id) { agent throws(RuntimeError) in
            try await during("signal container \(id)") { try await agent.signal(id, all ? "" : id, signal: signal) }
        }
    }

    public func pause(id: String, resume: Bool) async throws(RuntimeError) {
        let state = try store.load(id)
        if resume && state.status != .paused { throw RuntimeError("container not paused") }
        if !resume && state.status != .running { throw RuntimeError("container not running") }
        try await withAgent(id) { agent throws(RuntimeError) in
            try await during(resume ? "resume" : "pause") { resume ? try await agent.resume(id) : try await agent.pause(id) }
        }
        try store.update(id) { (s: inout ContainerState) throws(RuntimeError) in s.status = resume ? .running : .paused }
    }

    public func delete(id: String, force: Bool) throws(RuntimeError) {
        let state: ContainerState
        do {
            state = try store.load(id)
        } catch {
            // As runc: --force of an unknown (or half-created) container succeeds and clears what is there.
            guard force else { throw error }
            try StateStore.validate(id: id)
            cleanUp(id)
            return
        }
        switch state.status {
        case .stopped, .created, .creating:
            break
        case .running, .paused:
            if !force { throw RuntimeError("cannot delete container \(id) that is not stopped: \(state.status.rawValue)") }
        }
        // A created container is deleted like runc does: its never-started process goes with the sandbox.
        if state.status != .stopped && state.status != .creating { stopSandbox(state) }
        let oci = try? OCISpec.load(state.bundle + "/config.json")
        cleanUp(id)
        do { try HostHooks.run(oci?.hooks?.poststop, state: state, name: "poststop") } catch { log.warning("\(error)") }
    }

    /// SIGKILL for the shim and QEMU (identified by pid start time / liveness), then wait for both.
    func stopSandbox(_ state: ContainerState) {
        if ProcessIdentity.isAlive(pid: state.pid, startTime: state.pidStartTime) {
            Foundation.kill(state.pid, SIGKILL)
            _ = ProcessIdentity.waitGone(pid: state.pid, timeout: 10)
            // Our own child when `create` failed late: a zombie would keep its cgroup busy.
            var ignored: Int32 = 0
            _ = waitpid(state.pid, &ignored, WNOHANG)
        }
        // QEMU dies with its shim (parent-death signal); this covers a shim that never set it up.
        if state.qemuPid > 0, let cmdline = try? String(contentsOfFile: "/proc/\(state.qemuPid)/cmdline", encoding: .utf8),
           cmdline.contains(store.paths(state.id).vhostUserSocket) {
            Foundation.kill(state.qemuPid, SIGKILL)
            _ = ProcessIdentity.waitGone(pid: state.qemuPid, timeout: 10)
        }
    }

    /// Removes everything a container left on the host: mounts, sockets, state directory.
    func cleanUp(_ id: String) {
        if let state = try? store.load(id) {
            SharedMounts.release(state.sharedMounts)
            HostCgroup.remove(state.hostCgroups)
        }
        store.remove(id)
    }

    // MARK: agent access

    public func withAgent<T: Sendable>(_ id: String, _ body: (AgentClient) async throws(RuntimeError) -> T) async throws(RuntimeError) -> T {
        let ttrpc = try await SandboxVM.connectAgent(paths: store.paths(id), group: .singleton, timeoutMilliseconds: 5_000)
        let agent = AgentClient(ttrpc, timeout: .seconds(Int64(config.agent.requestTimeout)))
        do {
            let result = try await body(agent)
            await agent.close()
            return result
        } catch {
            await agent.close()
            throw error
        }
    }
}

/// OCI hooks are host programs, run by the runtime with the container's state on stdin. argv[0]
/// is the hook's own (docker's libnetwork-setkey hook is dockerd re-executed under another name).
enum HostHooks {
    static func run(_ hooks: [OCISpec.Hook]?, state: ContainerState, name: String) throws(RuntimeError) {
        for hook in hooks ?? [] {
            let stateJSON: [String: Any] = ["ociVersion": "1.1.0", "id": state.id, "status": state.status.rawValue,
                                            "pid": state.pid, "bundle": state.bundle, "annotations": state.annotations]
            let input = [UInt8]((try? JSONSerialization.data(withJSONObject: stateJSON)) ?? Data())
            let timeout = Double(hook.timeout ?? 30)
            let (status, output) = try during("\(name) hook \(hook.path)") {
                try runHook(path: hook.path, arguments: hook.args ?? [hook.path], environment: hook.env ?? [], input: input, timeout: timeout)
            }
            guard let status else { throw RuntimeError("\(name) hook \(hook.path) timed out after \(Int(timeout)) s") }
            if status != 0 {
                let said = String(decoding: output.prefix(500), as: UTF8.self).split(separator: "\n").joined(separator: "; ")
                throw RuntimeError("\(name) hook \(hook.path) exited with status \(status): \(said)")
            }
        }
    }

    /// Returns the exit status (nil after a timeout, the hook then killed) and what it printed.
    static func runHook(path: String, arguments: [String], environment: [String], input: [UInt8], timeout: Double) throws -> (Int32?, [UInt8]) {
        // Output goes to an unnamed file: a chatty hook must not block on a full pipe nobody reads yet.
        let output = open("/tmp", VESSEL_O_TMPFILE | O_RDWR | O_CLOEXEC, 0o600)
        guard output >= 0 else { throw LinuxError(stage: "open O_TMPFILE /tmp") }
        defer { close(output) }
        let stdin = try Linux.pipe()
        let spawned: SpawnResult
        do {
            spawned = try spawn(exeFD: -1, path: path, arguments: arguments, environment: environment,
                                fds: [(stdin.read, 0), (output, 1), (output, 2)])
        } catch {
            for fd in [stdin.read, stdin.write] { close(fd) }
            throw error
        }
        close(stdin.read)
        signal(SIGPIPE, SIG_IGN)
        _ = try? Linux.writeAll(stdin.write, input)
        close(stdin.write)
        var collected: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        let exited = ProcessIdentity.waitGone(pid: spawned.pid, timeout: timeout)
        if !exited { kill(spawned.pid, SIGKILL) }
        var raw: Int32 = 0
        while waitpid(spawned.pid, &raw, 0) < 0 && errno == EINTR {}
        let n = pread(output, &buffer, buffer.count, 0)
        if n > 0 { collected = Array(buffer[0..<n]) }
        if spawned.execErrno != 0 { throw LinuxError(stage: "execve", errno: spawned.execErrno, detail: path) }
        return (exited ? Linux.shellStatus(raw) : nil, collected)
    }
}
