import Logging
import NIOCore
import NIOPosix
import SwiftProtobuf
import Synchronization
import VesselLinux
import VesselProtocol
import VesselSpec

#if canImport(Glibc)
    import Glibc
#endif

/// One process the agent started: a container's init or an exec'd process.
final class ContainerProcess: Sendable {
    let execID: String
    let pid: pid_t
    let io: ProcessIO
    private struct Progress {
        var status: Int32?
        var waited = false
        var stdoutEnded = false
        var stderrEnded = false
    }
    private let progress = Mutex(Progress())

    /// `pid` is watched by the Reaper already. Its status is kept here, not looked up by pid: once
    /// the pid is reused, the reaper's entry is someone else's.
    init(execID: String, pid: pid_t, io: ProcessIO) {
        self.execID = execID
        self.pid = pid
        self.io = io
        Task { [weak self] in
            let status = await Reaper.shared.wait(pid)
            self?.progress.withLock { $0.status = status }
        }
    }

    var exitStatus: Int32? { progress.withLock { $0.status } }

    func wait() async -> Int32 {
        let status = await Reaper.shared.wait(pid)
        progress.withLock {
            $0.status = status
            $0.waited = true
        }
        return status
    }

    func noteEnd(stderr: Bool) {
        progress.withLock { if stderr { $0.stderrEnded = true } else { $0.stdoutEnded = true } }
    }

    /// Waited for and its output read to the end: nobody needs the process any more.
    var finished: Bool {
        progress.withLock { $0.waited && $0.stdoutEnded && ($0.stderrEnded || io.terminal) }
    }
}

/// Starts helpers (the agent binary re-executed, see `Helper`) and runs the handshake with them.
/// Handshake reads block, so they run on the thread pool, never on the cooperative pool.
struct Launcher {
    let exeFD: Int32
    let group: any EventLoopGroup
    let pool: NIOThreadPool
    let logger: Logger
    let noPivot: Bool
    /// `agent.container_pipe_size`: stdout and stderr pipes of this size.
    var pipeSize: Int?

    /// The container's init, set up inside new namespaces (or the pod's `joined` ones) and
    /// blocked before exec; started inside `cgroup` (a v2 directory fd) when there is one.
    func createInit(
        id: String, spec: Grpc_Spec, namespaces: UInt64, joined: [(name: String, fd: Int32)],
        cgroup: Cgroup?
    ) async throws -> (ContainerProcess, syncFD: Int32) {
        let (pipes, child) = try await stdio(terminal: spec.process.terminal)
        let (agentEnd, helperEnd) = try Linux.socketPair()
        var pid: pid_t = 0
        var pty: Int32 = -1
        do {
            pid = try startHelper(
                .initContainer, child: child, sync: helperEnd, extraFDs: joined.map(\.fd), namespaces: namespaces,
                cgroup: cgroup)
            let config = Vessel_HelperConfig.with {
                $0.spec = spec
                $0.process = spec.process
                $0.containerID = id
                $0.hostPid = pid
                $0.bundle = Hooks.bundle(of: spec)
                $0.pauseForCreateRuntime = !spec.hooks.createRuntime.isEmpty
                $0.noPivot = noPivot
                $0.joinNamespaces = joined.map(\.name)
                $0.userNamespace = spec.linux.namespaces.contains { $0.type == "user" }
            }
            try await blocking { try send(config, agentEnd) }
            var report = try await blocking { [logger] in try receiveReport(agentEnd, logger) }
            if report.message?.kind == .createRuntime {
                let state = Hooks.state(spec: spec, id: id, status: "creating", pid: pid)
                try await Hooks.run(spec.hooks.createRuntime, kind: "createRuntime", state: state)
                report = try await blocking { [logger] in
                    try Linux.sendMessage(agentEnd, [])
                    return try receiveReport(agentEnd, logger)
                }
            }
            pty = report.pty
            if report.message?.kind == .userNamespace {
                // A terminal's master came with this report, before the namespace (the catch
                // below closes it if the mapping fails).
                report = try await blocking { [logger, pid] in
                    try Self.writeIDMaps(spec.linux, pid: pid)
                    try Linux.sendMessage(agentEnd, [])
                    return try receiveReport(agentEnd, logger)
                }
                if report.pty >= 0 {
                    Linux.close(pty)
                    pty = report.pty
                }
            }
            if report.message?.kind == .ready {
                // From here the io owns the master, also when wrapping it fails.
                let master = pty
                pty = -1
                let io = try await Self.io(pipes, master: master, group: group)
                return (ContainerProcess(execID: "", pid: pid, io: io), agentEnd)
            }
            if let message = report.message, message.kind == .error { throw helperFailure(message) }
            throw AgentError.internal("container init helper exited before it was ready")
        } catch {
            if pid > 0 {
                kill(pid, SIGKILL)
                _ = await Reaper.shared.wait(pid)
                Reaper.shared.forget(pid)
            }
            Linux.close(agentEnd)
            Linux.close(pty)
            await pipes?.close()
            throw error
        }
    }

    /// Only a process outside the new user namespace, with CAP_SETUID and CAP_SETGID there (the
    /// agent), may map ids other than its own; setgroups stays allowed, as under runc as root.
    static func writeIDMaps(_ linux: Grpc_Linux, pid: pid_t) throws {
        for (file, map) in [("uid_map", linux.uidmappings), ("gid_map", linux.gidmappings)] {
            try Linux.writeFile("/proc/\(pid)/\(file)", SpecRules.mapText(map))
        }
    }

    /// New IPC, UTS and network namespaces (loopback up, the pod's hostname) for the containers of
    /// the sandbox to join; returns fds to them, which keep them alive. Made on a thread of their
    /// own that ends right after: unshare(2) of these three moves only the calling thread, so no
    /// other thread of the agent ever runs in them, and no helper process has to hold them (its
    /// exec of the agent's 20 MB binary cost 0.15 s of every cold start under TCG).
    func sandboxNamespaces(hostname: String) async throws -> [(name: String, fd: Int32)] {
        let flags = [Namespace.ipc, .uts, .network].reduce(UInt64(0)) { $0 | $1.cloneFlag }
        let made = await Linux.blocking { () -> Result<[(name: String, fd: Int32)], LinuxError> in
            var fds: [(name: String, fd: Int32)] = []
            do throws(LinuxError) {
                try Linux.unshare(flags, name: "ipc, uts and net")
                if !hostname.isEmpty { try Linux.setHostname(hostname) }
                try Linux.loopbackUp()
                for name in ["ipc", "uts", "net"] { fds.append((name, try Linux.open("/proc/thread-self/ns/\(name)", O_RDONLY))) }
                return .success(fds)
            } catch {
                for (_, fd) in fds { Linux.close(fd) }
                return .failure(error)
            }
        }
        return try made.get()
    }

    /// Lets a created container's init exec its process; returns once exec happened (EOF on the
    /// close-on-exec sync socket) or failed (an error report).
    func start(syncFD: Int32) async throws {
        defer { Linux.close(syncFD) }
        let report = try await blocking { [logger] () throws -> Vessel_HelperReport? in
            try Linux.sendMessage(syncFD, [])
            return try receiveReport(syncFD, logger).message
        }
        if let report, report.kind == .error { throw helperFailure(report) }
    }

    /// A process inside a running container: the helper joins the namespaces (fds kept open by the
    /// agent, so no pid can be reused under us) and forks the process as the agent's own child.
    func exec(
        execID: String, process: Grpc_Process, containerSpec: Grpc_Spec,
        namespaceFDs: [(name: String, fd: Int32)], cgroup: Cgroup?
    ) async throws -> ContainerProcess {
        let config = Vessel_HelperConfig.with {
            $0.process = process
            if containerSpec.linux.hasSeccomp { $0.spec.linux.seccomp = containerSpec.linux.seccomp }
            $0.namespaces = namespaceFDs.map(\.name)
        }
        let (pipes, child) = try await stdio(terminal: process.terminal)
        let started: (pid: pid_t, pty: Int32)
        do {
            started = try await runExecHelper(config, child: child, namespaceFDs: namespaceFDs, cgroup: cgroup)
        } catch {
            if let pipes { await pipes.close() }
            throw error
        }
        let io = try await Self.io(pipes, master: started.pty, group: group)
        return ContainerProcess(execID: execID, pid: started.pid, io: io)
    }

    /// The exec helper's whole conversation: the pid of the process it forked (and its pty).
    private func runExecHelper(
        _ config: Vessel_HelperConfig, child: ProcessIO.ChildEnds,
        namespaceFDs: [(name: String, fd: Int32)], cgroup: Cgroup?
    ) async throws -> (pid: pid_t, pty: Int32) {
        let (agentEnd, helperEnd) = try Linux.socketPair()
        defer { Linux.close(agentEnd) }
        let helper = try startHelper(
            .exec, child: child, sync: helperEnd, extraFDs: namespaceFDs.map(\.fd), namespaces: 0,
            cgroup: cgroup)
        let outcome = try await blocking { [logger] () throws -> HelperOutcome in
            try send(config, agentEnd)
            var outcome = HelperOutcome()
            while true {
                let next = try receiveReport(agentEnd, logger)
                if next.pty >= 0 { outcome.pty = next.pty }
                guard let message = next.message else { return outcome }
                outcome.reports.append(message)
            }
        }
        _ = await Reaper.shared.wait(helper)
        Reaper.shared.forget(helper)
        let pid = outcome.reports.first { $0.kind == .pid }?.pid
        if let pid { Reaper.shared.watch(pid) }
        if let failure = outcome.reports.first(where: { $0.kind == .error }) {
            Linux.close(outcome.pty)
            if let pid {
                _ = await Reaper.shared.wait(pid)
                Reaper.shared.forget(pid)
            }
            throw helperFailure(failure)
        }
        guard let pid else {
            Linux.close(outcome.pty)
            throw AgentError.internal("exec helper exited without starting the process")
        }
        return (pid, outcome.pty)
    }

    /// Pipes, or for a terminal process /dev/null until its helper sends the pty.
    private func stdio(terminal: Bool) async throws -> (ProcessIO?, ProcessIO.ChildEnds) {
        if terminal { return (nil, try ProcessIO.ChildEnds.devNull()) }
        let (io, child) = try await ProcessIO.pipes(group: group, outputPipeSize: pipeSize)
        return (io, child)
    }

    private static func io(_ pipes: ProcessIO?, master: Int32, group: any EventLoopGroup) async throws -> ProcessIO {
        guard let pipes else { return try await ProcessIO.terminal(master: master, group: group) }
        return pipes
    }

    /// Every helper of a container starts inside its cgroup, so what it forks (an exec'd process)
    /// is never outside the container's limits, device filter, freezer or stats.
    private func startHelper(
        _ mode: Helper.Mode, child: ProcessIO.ChildEnds, sync: Int32, extraFDs: [Int32],
        namespaces: UInt64, cgroup: Cgroup? = nil
    ) throws -> pid_t {
        var cgroupFD: Int32 = -1
        defer {
            child.close()
            Linux.close(sync)
            Linux.close(cgroupFD)
        }
        cgroupFD = try cgroup?.openDirectory() ?? -1
        var fds: [(src: Int32, dst: Int32)] = [(child.stdin, 0), (child.stdout, 1), (child.stderr, 2), (sync, Helper.syncFD)]
        for (index, fd) in extraFDs.enumerated() {
            fds.append((fd, Helper.firstNamespaceFD + Int32(index)))
        }
        let result = try spawn(
            exeFD: exeFD, arguments: ["vessel-agent", Helper.argument, mode.rawValue],
            environment: [], fds: fds, namespaces: namespaces, cgroup: cgroupFD)
        Reaper.shared.watch(result.pid)
        if result.execErrno != 0 {
            Reaper.shared.forget(result.pid)
            throw AgentError(LinuxError(stage: "exec helper", errno: result.execErrno))
        }
        // v1 (host mode) cannot clone into a cgroup: the helper joins it now, while it still waits
        // for its config, so before it unshares a cgroup namespace or forks an exec'd process.
        if let cgroup, cgroup.unifiedDirectory == nil {
            do {
                try cgroup.add(result.pid)
            } catch {
                kill(result.pid, SIGKILL)
                Reaper.shared.forget(result.pid)
                throw error
            }
        }
        return result.pid
    }

    private func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await pool.runIfActive(body)
    }
}

private struct HelperOutcome: Sendable {
    var reports: [Vessel_HelperReport] = []
    var pty: Int32 = -1
}

private func send(_ config: Vessel_HelperConfig, _ fd: Int32) throws {
    let bytes: [UInt8] = try config.serializedBytes()
    try Linux.sendMessage(fd, bytes)
}

/// The next report that is neither a log line (those go to the agent's log) nor a pty (its master,
/// sent right after it, is returned with the report that follows); nil message at EOF.
private func receiveReport(_ fd: Int32, _ logger: Logger) throws -> (message: Vessel_HelperReport?, pty: Int32) {
    var pty: Int32 = -1
    while let bytes = try Linux.receiveMessage(fd) {
        let report = try Vessel_HelperReport(serializedBytes: bytes)
        switch report.kind {
        case .log:
            logger.info("\(report.detail)")
        case .pty:
            Linux.close(pty)
            pty = try Linux.receiveFD(fd, nameLength: Helper.ptyName.utf8.count)
        default:
            return (report, pty)
        }
    }
    return (nil, pty)
}

/// The helper's error, as the one-line message the caller sees ("process.cwd /nope: No such file...").
private func helperFailure(_ report: Vessel_HelperReport) -> AgentError {
    AgentError(LinuxError(stage: report.stage, errno: report.errno, detail: report.detail))
}
