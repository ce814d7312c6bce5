import Foundation
import SwiftProtobuf
import Synchronization
import VesselCore
import VesselLinux
import VesselProtocol

/// The OCI CLI's stand-in for a container's process, what conmon and containerd-shim-runc-v2 wait
/// on: it holds the caller's stdio (or a terminal), relays it through fifos to the sandbox owner,
/// forwards the signals it gets and exits with the process's status. A container's monitor is
/// `vessel __shim`; a foreground `vessel exec` is its own monitor.
final class ProcessMonitor: Sendable {
    enum Role: Sendable {
        case initProcess(bundle: String)
        case exec(execID: String, processJSON: Data)
    }

    let owner: OwnerClient
    let containerID: String
    let role: Role
    let terminal: Bool
    let consoleSocket: String?
    /// Where the fifos live (inside the container's record directory).
    let directory: String

    init(owner: OwnerClient, containerID: String, role: Role, terminal: Bool, consoleSocket: String?, directory: String) {
        self.owner = owner
        self.containerID = containerID
        self.role = role
        self.terminal = terminal
        self.consoleSocket = consoleSocket
        self.directory = directory
    }

    var execID: String {
        if case .exec(let execID, _) = role { return execID }
        return ""
    }

    /// Sets up the process (created, or started for an exec), then `ready`, then waits for it and
    /// returns its exit status. Failures before `ready` are thrown.
    func run(signals: AsyncStream<Int32>?, ready: @Sendable () -> Void) async throws(RuntimeError) -> Int32 {
        let host = try HostStdio(terminal: terminal, consoleSocket: consoleSocket)
        let fifos = try FifoSet(directory: directory, terminal: terminal)
        do {
            try await register(fifos)
            try fifos.openInput()
        } catch {
            fifos.remove()
            throw error
        }
        let relays = Relays.start(host: host, fifos: fifos)
        if case .exec = role {
            _ = try await owner.call(
                TaskAPI.start,
                .with {
                    $0.id = containerID
                    $0.execID = execID
                })
        }
        ready()
        let forwarding = Task { [self] in await forward(signals, host: host) }
        if host.terminal != nil { await resize(host) }
        let status = await waitForExit()
        await relays.finish(timeout: .seconds(5))
        forwarding.cancel()
        host.restore()
        if case .exec = role {
            _ = try? await owner.call(
                TaskAPI.delete,
                .with {
                    $0.id = containerID
                    $0.execID = execID
                })
        }
        fifos.remove()
        return status
    }

    private func register(_ fifos: FifoSet) async throws(RuntimeError) {
        switch role {
        case .initProcess(let bundle):
            let options = try during("encode the create options") {
                try Google_Protobuf_Any(bareTypeOf: Vessel_OCICreateOptions.with { $0.monitorPid = getpid() })
            }
            let request = Containerd_Task_V2_CreateTaskRequest.with {
                $0.id = containerID
                $0.bundle = bundle
                $0.terminal = terminal
                ($0.stdin, $0.stdout, $0.stderr) = (fifos.stdin, fifos.stdout, fifos.stderr)
                $0.options = options
            }
            // A cold sandbox boots during Create: as long as the boot timeout allows.
            _ = try await owner.call(TaskAPI.create, request, timeout: nil)
        case .exec(let execID, let json):
            let request = Containerd_Task_V2_ExecProcessRequest.with {
                $0.id = containerID
                $0.execID = execID
                $0.terminal = terminal
                ($0.stdin, $0.stdout, $0.stderr) = (fifos.stdin, fifos.stdout, fifos.stderr)
                $0.spec = .with {
                    $0.typeURL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
                    $0.value = json
                }
            }
            _ = try await owner.call(TaskAPI.exec, request)
        }
    }

    /// The owner answers once the process exited and its output reached the fifos; a lost owner
    /// means a dead sandbox, status 255.
    private func waitForExit() async -> Int32 {
        let request = Containerd_Task_V2_WaitRequest.with {
            $0.id = containerID
            $0.execID = execID
        }
        guard let response = try? await owner.call(TaskAPI.wait, request, timeout: nil) else { return 255 }
        return Int32(bitPattern: response.exitStatus)
    }

    private func forward(_ signals: AsyncStream<Int32>?, host: HostStdio) async {
        guard let signals else { return }
        for await signal in signals {
            if signal == SIGWINCH {
                await resize(host)
            } else {
                _ = try? await owner.call(
                    TaskAPI.kill,
                    .with {
                        $0.id = containerID
                        $0.execID = execID
                        $0.signal = UInt32(signal)
                    })
            }
        }
    }

    private func resize(_ host: HostStdio) async {
        guard let (rows, columns) = host.windowSize() else { return }
        _ = try? await owner.call(
            TaskAPI.resizePty,
            .with {
                $0.id = containerID
                $0.execID = execID
                $0.width = UInt32(columns)
                $0.height = UInt32(rows)
            })
    }

    /// What a monitor takes synchronously: the signals it forwards, and SIGWINCH for terminals.
    static let forwardedSignals: [Int32] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT, SIGALRM, SIGWINCH]
}

/// The caller's side of the process's stdio: its fds, or one terminal (the caller's own, or a pty
/// whose master went to `--console-socket`), raw while the process runs.
final class HostStdio: Sendable {
    let stdin: Int32
    let stdout: Int32
    let stderr: Int32?
    /// The terminal the caller resizes (SIGWINCH), when the process has one.
    let terminal: Int32?
    private let saved: Mutex<termios?>

    init(terminal: Bool, consoleSocket: String?) throws(RuntimeError) {
        guard terminal else {
            (stdin, stdout, stderr, self.terminal) = (0, 1, 2, nil)
            saved = Mutex(nil)
            return
        }
        let fd = try consoleSocket.map(ConsoleSocket.sendPTYMaster(to:)) ?? 0
        (stdin, stdout, stderr, self.terminal) = (fd, fd == 0 ? 1 : fd, nil, fd)
        var original = termios()
        if isatty(fd) == 1, tcgetattr(fd, &original) == 0 {
            var raw = original
            cfmakeraw(&raw)
            tcsetattr(fd, TCSANOW, &raw)
            saved = Mutex(original)
        } else {
            saved = Mutex(nil)
        }
    }

    func windowSize() -> (rows: UInt16, columns: UInt16)? { terminal.flatMap(Linux.windowSize) }

    func restore() {
        guard let terminal, var original = saved.withLock({ $0 }) else { return }
        tcsetattr(terminal, TCSANOW, &original)
    }
}

/// The process's fifos, made by the monitor as containerd's client makes them: the read ends of
/// the outputs are open before the owner opens the write ends, stdin's write end after.
final class FifoSet: Sendable {
    let directory: String
    let stdin: String
    let stdout: String
    let stderr: String
    let stdoutRead: Int32
    let stderrRead: Int32
    private let stdinWrite = Mutex<Int32>(-1)

    init(directory: String, terminal: Bool) throws(RuntimeError) {
        self.directory = directory
        (stdin, stdout, stderr) = (directory + "/stdin", directory + "/stdout", terminal ? "" : directory + "/stderr")
        var opened: [Int32] = []
        do {
            try Linux.mkdirAll(directory, mode: 0o700)
            for path in [stdin, stdout, stderr] where !path.isEmpty {
                try sys("mkfifo", path) { mkfifo(path, 0o600) }
            }
            // Blocking reads afterwards: EOF only once the owner has opened and closed its end.
            for path in [stdout, stderr] where !path.isEmpty {
                let fd = try Linux.open(path, O_RDONLY | O_NONBLOCK)
                opened.append(fd)
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
            }
        } catch {
            for fd in opened { Linux.close(fd) }
            Linux.removeTree(directory)
            throw RuntimeError(stage: "make the fifos in \(directory)", error)
        }
        stdoutRead = opened[0]
        stderrRead = opened.count > 1 ? opened[1] : -1
    }

    /// Once the owner holds stdin's read end (its Create or Exec succeeded).
    func openInput() throws(RuntimeError) {
        do {
            let fd = try Linux.open(stdin, O_WRONLY)
            stdinWrite.withLock { $0 = fd }
        } catch {
            throw RuntimeError(stage: "open \(stdin)", error)
        }
    }

    var stdinFD: Int32 { stdinWrite.withLock { $0 } }

    func closeInput() {
        stdinWrite.withLock { fd in
            Linux.close(fd)
            fd = -1
        }
    }

    func remove() {
        Linux.removeTree(directory)
    }
}

/// Blocking copies between the caller's fds and the fifos, one thread each (the caller's fds may
/// be files, pipes or terminals). Output is drained even when the caller's side is gone.
final class Relays: Sendable {
    private struct Outputs {
        var left = 0
        var waiter: CheckedContinuation<Void, Never>?
        /// Set once `finish` stopped waiting: nobody may register afterwards.
        var abandoned = false
    }

    private let outputs = Mutex(Outputs())

    static func start(host: HostStdio, fifos: FifoSet) -> Relays {
        let relays = Relays()
        Linux.startThread {
            copy(from: host.stdin, to: fifos.stdinFD)
            fifos.closeInput()
        }
        let pairs = [(fifos.stdoutRead, host.stdout)] + (fifos.stderrRead >= 0 ? [(fifos.stderrRead, host.stderr ?? 2)] : [])
        relays.outputs.withLock { $0.left = pairs.count }
        for (source, sink) in pairs {
            Linux.startThread {
                copy(from: source, to: sink)
                Linux.close(source)
                relays.outputDone()
            }
        }
        return relays
    }

    private static func copy(from source: Int32, to sink: Int32) {
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        var sinkOpen = true
        while true {
            let n = read(source, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            if sinkOpen { sinkOpen = (try? Linux.writeAll(sink, Array(buffer[0..<n]))) != nil }
        }
    }

    private func outputDone() {
        let waiter = outputs.withLock { state -> CheckedContinuation<Void, Never>? in
            state.left -= 1
            guard state.left == 0 else { return nil }
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Until the outputs reached EOF, at most `timeout`.
    func finish(timeout: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await withCheckedContinuation { continuation in
                    let done = self.outputs.withLock { state -> Bool in
                        if state.left == 0 || state.abandoned { return true }
                        state.waiter = continuation
                        return false
                    }
                    if done { continuation.resume() }
                }
            }
            group.addTask { try? await Task.sleep(for: timeout) }
            await group.next()
            group.cancelAll()
            // The relay threads end with the process; a copy still pending must not hold us here.
            let waiter = self.outputs.withLock { state -> CheckedContinuation<Void, Never>? in
                state.abandoned = true
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume()
        }
    }
}

/// runc's console socket: the master of a new pty goes to the caller (one SCM_RIGHTS message); the
/// slave becomes our controlling terminal, so the caller's resizes reach us as SIGWINCH.
enum ConsoleSocket {
    static func sendPTYMaster(to socketPath: String) throws(RuntimeError) -> Int32 {
        let (master, slave): (Int32, Int32)
        do { (master, slave) = try Linux.openPTY() } catch { throw RuntimeError(stage: "allocate a pty", error) }
        defer { Linux.close(master) }
        let sock: Int32
        do {
            sock = try Linux.connectUnix(socketPath)
        } catch {
            Linux.close(slave)
            throw RuntimeError(stage: "console socket \(socketPath)", error)
        }
        defer { Linux.close(sock) }
        do {
            try Linux.sendFD(sock, name: "/dev/ptmx", master)
        } catch {
            Linux.close(slave)
            throw RuntimeError(stage: "send the pty to \(socketPath)", error)
        }
        try? Linux.setControllingTerminal(slave)
        return slave
    }
}
