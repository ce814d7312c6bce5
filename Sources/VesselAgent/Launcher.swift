import Logging
import NIOCore
import NIOPosix
import SwiftProtobuf
import VesselLinux
import VesselProtocol
#if canImport(Glibc)
import Glibc
#endif

/// One process the agent started: a container's init or an exec'd process.
final class ContainerProcess: Sendable {
    let execID: String
    let pid: pid_t
    let io: ProcessIO

    init(execID: String, pid: pid_t, io: ProcessIO) {
        self.execID = execID
        self.pid = pid
        self.io = io
    }

    var exitStatus: Int32? { Reaper.shared.exitStatus(pid) }
    func wait() async -> Int32 { await Reaper.shared.wait(pid) }
}

/// Starts helpers (the agent binary re-executed, see `Helper`) and runs the handshake with them.
/// Handshake reads block, so they run on the thread pool, never on the cooperative pool.
struct Launcher {
    let exeFD: Int32
    let group: any EventLoopGroup
    let pool: NIOThreadPool
    let logger: Logger
    let noPivot: Bool

    /// The container's init, set up inside new namespaces and blocked before exec.
    func createInit(id: String, spec: Grpc_Spec, namespaces: UInt64) async throws -> (ContainerProcess, syncFD: Int32) {
        let (io, child) = try await ProcessIO.make(terminal: spec.process.terminal, group: group)
        let (agentEnd, helperEnd) = try Linux.socketPair()
        var pid: pid_t = 0
        do {
            pid = try startHelper(.initContainer, child: child, sync: helperEnd, extraFDs: [], namespaces: namespaces)
            let config = Vessel_HelperConfig.with {
                $0.spec = spec
                $0.process = spec.process
                $0.containerID = id
                $0.hostPid = pid
                $0.bundle = Hooks.bundle(of: spec)
                $0.pauseForCreateRuntime = !spec.hooks.createRuntime.isEmpty
                $0.noPivot = noPivot
            }
            try await blocking { try send(config, agentEnd) }
            var report = try await blocking { [logger] in try receiveReport(agentEnd, logger) }
            if report?.kind == .createRuntime {
                let state = Hooks.State(spec: spec, id: id, status: "creating", pid: pid)
                try await Hooks.run(spec.hooks.createRuntime, kind: "createRuntime", state: state)
                report = try await blocking { [logger] in
                    try Linux.sendMessage(agentEnd, [])
                    return try receiveReport(agentEnd, logger)
                }
            }
            if report?.kind == .ready {
                return (ContainerProcess(execID: "", pid: pid, io: io), agentEnd)
            }
            if let report, report.kind == .error { throw helperFailure(report) }
            throw AgentError.internal("container init helper exited before it was ready")
        } catch {
            if pid > 0 {
                kill(pid, SIGKILL)
                _ = await Reaper.shared.wait(pid)
                Reaper.shared.forget(pid)
            }
            Linux.close(agentEnd)
            await io.close()
            throw error
        }
    }

    /// Lets a created container's init exec its process; returns once exec happened (EOF on the
    /// close-on-exec sync socket) or failed (an error report).
    func start(syncFD: Int32) async throws {
        defer { Linux.close(syncFD) }
        let report = try await blocking { [logger] () throws -> Vessel_HelperReport? in
            try Linux.sendMessage(syncFD, [])
            return try receiveReport(syncFD, logger)
        }
        if let report, report.kind == .error { throw helperFailure(report) }
    }

    /// A process inside a running container: the helper joins the namespaces (fds kept open by the
    /// agent, so no pid can be reused under us) and forks the process as the agent's own child.
    func exec(execID: String, process: Grpc_Process, containerSpec: Grpc_Spec,
              namespaceFDs: [(name: String, fd: Int32)]) async throws -> ContainerProcess {
        let config = Vessel_HelperConfig.with {
            $0.process = process
            if containerSpec.linux.hasSeccomp { $0.spec.linux.seccomp = containerSpec.linux.seccomp }
            $0.namespaces = namespaceFDs.map(\.name)
        }
        let (io, child) = try await ProcessIO.make(terminal: process.terminal, group: group)
        let (agentEnd, helperEnd) = try Linux.socketPair()
        defer { Linux.close(agentEnd) }
        do {
            let helper = try startHelper(.exec, child: child, sync: helperEnd, extraFDs: namespaceFDs.map(\.fd), namespaces: 0)
            let reports = try await blocking { [logger] () throws -> [Vessel_HelperReport] in
                try send(config, agentEnd)
                var reports: [Vessel_HelperReport] = []
                while let report = try receiveReport(agentEnd, logger) { reports.append(report) }
                return reports
            }
            _ = await Reaper.shared.wait(helper)
            Reaper.shared.forget(helper)
            let pid = reports.first { $0.kind == .pid }?.pid
            if let pid { Reaper.shared.watch(pid) }
            if let failure = reports.first(where: { $0.kind == .error }) {
                if let pid { _ = await Reaper.shared.wait(pid); Reaper.shared.forget(pid) }
                throw helperFailure(failure)
            }
            guard let pid else { throw AgentError.internal("exec helper exited without starting the process") }
            return ContainerProcess(execID: execID, pid: pid, io: io)
        } catch {
            await io.close()
            throw error
        }
    }

    private func startHelper(_ mode: Helper.Mode, child: ProcessIO.ChildEnds, sync: Int32, extraFDs: [Int32],
                             namespaces: UInt64) throws -> pid_t {
        defer {
            child.close()
            Linux.close(sync)
        }
        var fds: [(src: Int32, dst: Int32)] = [(child.stdin, 0), (child.stdout, 1), (child.stderr, 2), (sync, Helper.syncFD)]
        for (index, fd) in extraFDs.enumerated() {
            fds.append((fd, Helper.firstNamespaceFD + Int32(index)))
        }
        let result = try spawn(exeFD: exeFD, arguments: ["vessel-agent", Helper.argument, mode.rawValue],
                               environment: [], fds: fds, namespaces: namespaces)
        Reaper.shared.watch(result.pid)
        if result.execErrno != 0 {
            Reaper.shared.forget(result.pid)
            throw AgentError(LinuxError(stage: "exec helper", errno: result.execErrno))
        }
        return result.pid
    }

    private func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await pool.runIfActive(body)
    }
}

private func send(_ config: Vessel_HelperConfig, _ fd: Int32) throws {
    let bytes: [UInt8] = try config.serializedBytes()
    try Linux.sendMessage(fd, bytes)
}

/// The next report that is not a log line; log lines go to the agent's log on the way.
private func receiveReport(_ fd: Int32, _ logger: Logger) throws -> Vessel_HelperReport? {
    while let bytes = try Linux.receiveMessage(fd) {
        let report = try Vessel_HelperReport(serializedBytes: bytes)
        guard report.kind == .log else { return report }
        logger.info("\(report.detail)")
    }
    return nil
}

/// The helper's error, as the one-line message the caller sees ("process.cwd /nope: No such file...").
private func helperFailure(_ report: Vessel_HelperReport) -> AgentError {
    AgentError(LinuxError(stage: report.stage, errno: report.errno, detail: report.detail))
}
