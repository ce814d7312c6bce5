import SwiftProtobuf
import VesselLinux
import VesselProtocol
import VesselSpec

#if canImport(Glibc)
    import Glibc
#endif

/// The agent binary re-executed as a helper: single-threaded from its first instruction, so it may
/// setns(), pivot_root() and fork, which the multi-threaded agent must never do.
/// fd 0-2: the process's stdio, fd 3: the sync socket to the agent, fd 4...: namespace fds (exec).
public enum Helper {
    public static let argument = "__vessel-helper"
    static let syncFD: Int32 = 3
    static let firstNamespaceFD: Int32 = 4

    public enum Mode: String {
        case initContainer = "init"
        case exec = "exec"
    }

    /// Entry point when argv[1] == `argument`; never returns.
    public static func main(mode: String) -> Never {
        if mode == "console" { DebugConsole.execShell() }
        if mode == "crash" {
            // The boot self-test's crashing child: PID 1 must reap it and carry on.
            raise(SIGSEGV)
        }
        // Everything but stdio must vanish at exec, including the sync socket: its EOF tells the
        // agent that exec succeeded.
        Linux.closeOnExec(from: 3)
        // Not dumpable until execve (which makes it dumpable again): a process of the container
        // must not ptrace the helper or open its /proc/PID/fd while it holds the agent's socket.
        Linux.setDumpable(false)
        do {
            guard let bytes = try Linux.receiveMessage(syncFD) else { exit(1) }
            let config = try Vessel_HelperConfig(serializedBytes: bytes)
            switch Mode(rawValue: mode) {
            case .initContainer: try runInit(config)
            case .exec: try runExec(config)
            case nil: throw LinuxError(stage: "helper mode \(mode)", errno: EINVAL)
            }
        } catch let error as LinuxError {
            report(.error(error))
            exit(1)
        } catch {
            report(.error(LinuxError(stage: "\(error)", errno: EINVAL)))
            exit(1)
        }
    }

    private static func runInit(_ config: Vessel_HelperConfig) throws -> Never {
        // The pod's namespaces first: everything after happens inside them.
        for (index, name) in config.joinNamespaces.enumerated() {
            try Linux.setns(firstNamespaceFD + Int32(index), name: name)
        }
        // As runc: the cgroup namespace after joining the cgroup (this helper started inside it),
        // so its root is the container's own cgroup, not the guest's whole hierarchy.
        if config.spec.linux.namespaces.contains(where: { $0.type == "cgroup" && $0.path.isEmpty }) {
            try Linux.unshare(Namespace.cgroup.cloneFlag, name: "cgroup")
        }
        if config.pauseForCreateRuntime {
            report(.createRuntime)
            guard let go = try Linux.receiveMessage(syncFD), go.isEmpty else { exit(1) }
        }
        let hooks = config.spec.hooks
        let terminal = config.spec.process.terminal
        try RootfsSetup(
            spec: config.spec, noPivot: config.noPivot, log: log,
            beforePivot: { try Hooks.runBlocking(hooks.createContainer, kind: "createContainer", state: state(config, "creating")) },
            afterPivot: { if terminal { try openTerminal(console: true) } }
        ).run()
        if config.userNamespace { try enterUserNamespace(config) }
        report(.ready)
        // The start message is an empty frame; EOF means the agent went away: give up quietly.
        guard let start = try Linux.receiveMessage(syncFD), start.isEmpty else { exit(1) }
        try Hooks.runBlocking(hooks.startContainer, kind: "startContainer", state: state(config, "created"))
        try launch(config)
    }

    /// The setup's last step: what the guest's root must do (raise rlimits, lower the OOM score)
    /// first, then a user namespace the agent maps. Mounts, devices and namespaces were made by
    /// the guest's root, so their owner stays the guest's; the process's ids are set at launch.
    private static func enterUserNamespace(_ config: Vessel_HelperConfig) throws {
        try applyLimitsBeforeUserNamespace(config)
        try Linux.unshare(Namespace.user.cloneFlag, name: "user")
        report(.userNamespace)
        guard let mapped = try Linux.receiveMessage(syncFD), mapped.isEmpty else { exit(1) }
    }

    private static func runExec(_ config: Vessel_HelperConfig) throws -> Never {
        // Mount after the others: after it, paths resolve inside the container; the fds are all
        // open already. The user namespace last: in it we have no rights over the others.
        let rank = { (name: String) in name == "user" ? 2 : name == "mnt" ? 1 : 0 }
        let order = config.namespaces.enumerated().sorted { a, b in rank(a.element) < rank(b.element) }
        // As for the init: the limits that need the guest's root, while we are it (and while
        // /proc/self still resolves: not in the container's procfs, whose pid namespace we are not in).
        if entersUserNamespace(config) { try applyLimitsBeforeUserNamespace(config) }
        for (index, name) in order {
            try Linux.setns(firstNamespaceFD + Int32(index), name: name)
        }
        if config.process.terminal { try openTerminal(console: false) }
        // setns(pid) only applies to children; CLONE_PARENT makes the process the agent's child.
        let pid = try Linux.forkAsSibling()
        if pid == 0 {
            do {
                try launch(config)
            } catch let error as LinuxError {
                report(.error(error))
            } catch {
                report(.error(LinuxError(stage: "\(error)", errno: EINVAL)))
            }
            _exit(127)
        }
        report(.pid(pid))
        exit(0)
    }

    /// As runc: the pty comes from the container's own devpts (so the process sees /dev/pts/N),
    /// its master goes to the agent, its slave becomes our stdio. The init's slave is also
    /// bind-mounted at /dev/console, as the OCI spec asks.
    private static func openTerminal(console: Bool) throws {
        let (master, slave) = try Linux.openPTY()
        defer {
            Linux.close(master)
            Linux.close(slave)
        }
        if console {
            let path = try Linux.ptyName(master)
            if !Linux.exists("/dev/console") { Linux.close(try Linux.open("/dev/console", O_WRONLY | O_CREAT, 0o600)) }
            try Linux.mount(path, "/dev/console", nil, MountFlags.bind.rawValue, nil)
        }
        report(.pty)
        try Linux.sendFD(syncFD, name: ptyName, master)
        for fd: Int32 in [0, 1, 2] { try sys("dup2") { dup2(slave, fd) } }
    }

    /// What the agent reads after a PTY report: exactly this many bytes come with the fd.
    static let ptyName = "pty"

    private static func launch(_ config: Vessel_HelperConfig) throws -> Never {
        let seccomp = config.spec.linux.hasSeccomp ? config.spec.linux.seccomp : nil
        try ProcessLaunch(process: config.process, seccomp: seccomp, log: log, limitsApplied: entersUserNamespace(config)).exec()
    }

    /// An init that unshares a user namespace, or an exec that joins one: either applies the
    /// process's limits before (`applyLimitsBeforeUserNamespace`), and the launch then does not.
    private static func entersUserNamespace(_ config: Vessel_HelperConfig) -> Bool {
        config.userNamespace || config.namespaces.contains("user")
    }

    private static func applyLimitsBeforeUserNamespace(_ config: Vessel_HelperConfig) throws {
        try ProcessLaunch(process: config.process, seccomp: nil, log: log).applyLimits()
    }

    static func log(_ line: String) { report(.log(line)) }

    private static func state(_ config: Vessel_HelperConfig, _ status: String) -> JSON {
        OCIState.object(
            ociVersion: config.spec.version, id: config.containerID, status: status, pid: config.hostPid,
            bundle: config.bundle, annotations: config.spec.annotations)
    }

    enum Report {
        case log(String)
        case createRuntime
        case userNamespace
        case ready
        case pid(pid_t)
        case pty
        case error(LinuxError)
    }

    static func report(_ report: Report) {
        var message = Vessel_HelperReport()
        switch report {
        case .log(let line):
            message.kind = .log
            message.detail = line
        case .ready:
            message.kind = .ready
        case .createRuntime:
            message.kind = .createRuntime
        case .userNamespace:
            message.kind = .userNamespace
        case .pid(let pid):
            message.kind = .pid
            message.pid = pid
        case .pty:
            message.kind = .pty
        case .error(let error):
            message.kind = .error
            message.stage = error.stage
            message.errno = error.errno
            message.detail = error.detail
        }
        if let bytes: [UInt8] = try? message.serializedBytes() {
            try? Linux.sendMessage(syncFD, bytes)
        }
    }
}
