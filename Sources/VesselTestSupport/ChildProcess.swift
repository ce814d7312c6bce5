import Foundation
import Synchronization
import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// What a child reads on its standard input.
public enum ChildInput: Sendable {
    /// /dev/null: EOF at once.
    case null
    /// These bytes, then EOF (through an unlinked file, so nothing can block on a full pipe).
    case text(String)
    /// A file, read from its start.
    case file(String)
}

/// Where a child's standard output or error goes.
public enum ChildOutput: Sendable, Equatable {
    /// The test run's own (the default of Foundation's `Process`).
    case inherit
    /// /dev/null.
    case discard
    /// A file, created or truncated; stdout and stderr naming the same file share it.
    case file(String)
    /// An fd of the caller's (it stays the caller's to close).
    case descriptor(Int32)
    /// For stderr: wherever stdout goes.
    case stdout
}

/// A child process of the test run: forked and executed in C (VesselLinux's `spawn`, never from
/// Swift in this threaded process), with PR_SET_PDEATHSIG=SIGKILL, so a test run that dies takes
/// its daemons (containerd, dockerd, agents, QEMU, servers) along instead of leaving them behind.
/// Every wait has a bound; a child still running when its value goes away is killed and reaped.
public final class ChildProcess: Sendable {
    public let pid: pid_t
    public let arguments: [String]
    /// Its shell-style status (exit code, or 128 + signal) once reaped.
    private let status = Mutex<Int32?>(nil)

    /// Starts `arguments` (a program without a slash is looked up in our PATH) with `environment`
    /// (nil: ours) in `directory` (nil: ours).
    public init(
        _ arguments: [String], environment: [String: String]? = nil, directory: String? = nil,
        stdin: ChildInput = .null, stdout: ChildOutput = .inherit, stderr: ChildOutput = .inherit
    ) throws {
        guard let program = arguments.first else { throw TestSupportError("no program to run") }
        var argv = arguments
        argv[0] = try Self.executable(program)
        // spawn() has no working directory of its own: env(1) changes it and execs the program.
        if let directory { argv = ["/usr/bin/env", "--chdir=" + directory] + argv }
        var opened: [Int32] = []
        defer { for fd in opened { Linux.close(fd) } }
        func open(_ path: String, _ flags: Int32) throws -> Int32 {
            let fd = Glibc.open(path, flags | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw TestSupportError("cannot open \(path): \(String(cString: strerror(errno)))") }
            opened.append(fd)
            return fd
        }
        var fds: [(src: Int32, dst: Int32)] = []
        switch stdin {
        case .null: fds.append((try open("/dev/null", O_RDONLY), 0))
        case .file(let path): fds.append((try open(path, O_RDONLY), 0))
        case .text(let text):
            let fd = try scratchFile()
            opened.append(fd)
            try Linux.writeAll(fd, Array(text.utf8))
            lseek(fd, 0, SEEK_SET)
            fds.append((fd, 0))
        }
        var files: [String: Int32] = [:]
        func target(_ output: ChildOutput, stdoutFD: Int32?) throws -> Int32? {
            switch output {
            case .inherit: return nil
            case .discard: return try open("/dev/null", O_WRONLY)
            case .descriptor(let fd): return fd
            case .stdout: return stdoutFD ?? 1
            case .file(let path):
                if let fd = files[path] { return fd }
                let fd = try open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND)
                files[path] = fd
                return fd
            }
        }
        let out = try target(stdout, stdoutFD: nil)
        if let out { fds.append((out, 1)) }
        if let err = try target(stderr, stdoutFD: out) { fds.append((err, 2)) }
        let environment = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        let spawned = try spawn(
            exeFD: -1, path: argv[0], arguments: argv, environment: environment, fds: fds, parentDeathSignal: SIGKILL)
        if spawned.execErrno != 0 {
            Linux.reap(spawned.pid)
            throw TestSupportError("cannot run \(argv[0]): \(String(cString: strerror(spawned.execErrno)))")
        }
        pid = spawned.pid
        self.arguments = arguments
    }

    /// The path `execve` takes: `program` itself when it has a slash, else the first executable
    /// of that name in our PATH (as posix_spawnp and a shell find it).
    static func executable(_ program: String) throws -> String {
        guard !program.contains("/") else { return program }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        for directory in path.split(separator: ":") where access("\(directory)/\(program)", X_OK) == 0 {
            return "\(directory)/\(program)"
        }
        throw TestSupportError("no \(program) in PATH \(path)")
    }

    /// The status once reaped, without waiting.
    private func reap() -> Int32? {
        status.withLock { status in
            if status == nil {
                var raw: Int32 = 0
                var reaped = waitpid(pid, &raw, WNOHANG)
                while reaped < 0 && errno == EINTR { reaped = waitpid(pid, &raw, WNOHANG) }
                if reaped == pid { status = Linux.shellStatus(raw) }
            }
            return status
        }
    }

    public var isRunning: Bool { reap() == nil }

    /// Its shell-style status (exit code, or 128 + signal) once it has exited.
    public var exitStatus: Int32? { reap() }

    /// Waits at most `timeout` seconds for it to exit (a pidfd, no polling); its status, or nil
    /// while it still runs.
    @discardableResult
    public func wait(timeout: Double) -> Int32? {
        if let status = reap() { return status }
        let deadline = ContinuousClock.now + .seconds(max(0, timeout))
        _ = Linux.waitGone(pid: pid, timeout: timeout)
        if let status = reap() { return status }
        // Without a pidfd (an old kernel) waitGone returns at once: poll what is left of the bound.
        let left = deadline - ContinuousClock.now
        let seconds = Double(left.components.seconds) + Double(left.components.attoseconds) / 1e18
        waitUntil(timeout: max(0, seconds), every: 0.02) { reap() != nil }
        return reap()
    }

    /// Sends `signal` unless it has already been reaped (its pid may be another process's then).
    public func signal(_ signal: Int32) {
        status.withLock { if $0 == nil { _ = Glibc.kill(pid, signal) } }
    }

    /// `signal`, then at most `grace` seconds for it to exit; one still running then gets SIGKILL
    /// (and at most 10 s more: a process stuck in the kernel is left behind rather than hanging
    /// the caller). False when it had to be killed, so the caller can fail clearly.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, grace: Double) -> Bool {
        self.signal(signal)
        if wait(timeout: grace) != nil { return true }
        kill()
        return false
    }

    /// SIGKILL, and at most 10 s for the exit; safe to call twice.
    public func kill() {
        signal(SIGKILL)
        wait(timeout: 10)
    }

    deinit {
        if isRunning { kill() }
    }
}

/// A read-write file that no path names (created and unlinked at once), close-on-exec.
func scratchFile() throws -> Int32 {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("vessel-scratch-\(UUID().uuidString)").path
    let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw TestSupportError("cannot create \(path): \(String(cString: strerror(errno)))") }
    unlink(path)
    return fd
}

/// Everything in `fd` from its start (whatever its offset).
func contents(of fd: Int32) -> [UInt8] {
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 64 << 10)
    while true {
        let n = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(out.count)) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return out }
        out += chunk[0..<n]
    }
}
