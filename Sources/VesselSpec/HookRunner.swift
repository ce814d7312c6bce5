import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// One OCI hook as it runs; the spec's host form (OCISpec.Hook) and guest form (Grpc_Hook) both
/// become this.
public struct HookCommand: Sendable {
    public var path: String
    /// argv with argv[0], which is the hook's own (docker's libnetwork-setkey hook is dockerd under
    /// another name); the path when the spec gives none.
    public var arguments: [String]
    public var environment: [String]
    /// Seconds; nil: none.
    public var timeout: Double?

    public init(path: String, arguments: [String], environment: [String], timeout: Double?) {
        self.path = path
        self.arguments = arguments.isEmpty ? [path] : arguments
        self.environment = environment
        self.timeout = timeout
    }
}

/// The one way hooks run, on the host and in the guest: the state on stdin, stdout and stderr to
/// `output`, to completion within the hook's timeout (then killed).
public enum HookRunner {
    /// Starts the hook; the caller waits for it (the agent through its reaper, see `run`).
    public static func start(_ hook: HookCommand, state: JSON, output: Int32) throws(LinuxError) -> pid_t {
        let stdin = try Linux.pipe()
        // Our read end stays open while we write (no SIGPIPE, whatever the hook does), and the write
        // end does not block: a hook that never reads cannot stall its runtime.
        defer {
            Linux.close(stdin.read)
            Linux.close(stdin.write)
        }
        let input = Array(state.encoded().utf8)
        if input.count > 1 << 16 { try? Linux.setPipeSize(stdin.write, input.count) }
        _ = fcntl(stdin.write, F_SETFL, O_NONBLOCK)
        let result = try spawn(
            exeFD: -1, path: hook.path, arguments: hook.arguments, environment: hook.environment,
            fds: [(stdin.read, 0), (output, 1), (output, 2)])
        if result.execErrno != 0 {
            Linux.reap(result.pid)
            throw LinuxError(stage: "execve", errno: result.execErrno, detail: hook.path)
        }
        try? Linux.writeAll(stdin.write, input)
        return result.pid
    }

    /// Runs the hook to completion, for a process without a reaper of its own: its exit status, or
    /// nil when it outlived its timeout.
    public static func run(_ hook: HookCommand, state: JSON, output: Int32) throws(LinuxError) -> Int32? {
        let pid = try start(hook, state: state, output: output)
        let exited = Linux.waitGone(pid: pid, timeout: hook.timeout ?? .infinity)
        if !exited { kill(pid, SIGKILL) }
        let status = Linux.reap(pid)
        return exited ? status : nil
    }
}
