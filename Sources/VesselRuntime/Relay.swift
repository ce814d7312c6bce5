import CVessel
import Dispatch
import Foundation
import VesselAgentClient
import VesselLinux

/// Runs async work from a plain thread and waits for it. The relays use dedicated threads for
/// blocking reads and writes on the caller's fds (files, pipes, ttys) so the cooperative pool never blocks.
func blocking<T: Sendable>(_ operation: @escaping @Sendable () async throws -> T) throws -> T {
    let box = ResultBox<T>()
    let done = DispatchSemaphore(value: 0)
    Task {
        do { box.result = .success(try await operation()) } catch { box.result = .failure(error) }
        done.signal()
    }
    done.wait()
    return try box.result!.get()
}

private final class ResultBox<T>: @unchecked Sendable {
    // @unchecked: written before the semaphore is signalled, read after the wait.
    var result: Result<T, any Error>?
}

/// Copies one process's stdio between host fds and the agent: stdin with back-pressure (one
/// WriteStdin at a time), stdout/stderr pulled with ReadStdout/ReadStderr until EOF.
public final class StdioRelay: @unchecked Sendable {
    // @unchecked: immutable after init; the output threads are joined through `finished`.
    let agent: AgentClient
    let containerID: String
    let execID: String
    let finished = DispatchGroup()

    public init(agent: AgentClient, containerID: String, execID: String) {
        self.agent = agent
        self.containerID = containerID
        self.execID = execID
    }

    /// `stdin` nil: the process gets no input. With a terminal, EOF on stdin does not close the
    /// container's terminal (a closed console is not ^D) and stderr is nil.
    public func start(stdin: Int32?, stdout: Int32, stderr: Int32?, terminal: Bool) {
        let (agent, cid, eid) = (agent, containerID, execID)
        if let stdin {
            Thread.detachNewThread {
                var buffer = [UInt8](repeating: 0, count: 32 << 10)
                while true {
                    let n = read(stdin, &buffer, buffer.count)
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 { break }
                    let chunk = Array(buffer[0..<n])
                    guard (try? blocking { try await agent.writeStdin(cid, eid, chunk) }) != nil else { return }
                }
                if !terminal { _ = try? blocking { try await agent.closeStdin(cid, eid) } }
            }
        }
        for (fd, isStderr) in [(stdout, false)] + (stderr.map { [($0, true)] } ?? []) {
            finished.enter()
            Thread.detachNewThread { [finished] in
                defer { finished.leave() }
                var sinkOpen = true
                while true {
                    guard let chunk = try? blocking({ try await agent.read(cid, eid, stderr: isStderr) }), !chunk.isEmpty else { return }
                    // A reader that went away must not stall the container: keep draining.
                    if sinkOpen { sinkOpen = (try? Linux.writeAll(fd, chunk)) != nil }
                }
            }
        }
    }

    /// The caller's stdio, or one terminal fd (0: our own terminal, raw until `finish`).
    public func start(terminal: Int32?) {
        if let terminal {
            TerminalMode.makeRaw(terminal)
            start(stdin: terminal, stdout: terminal == 0 ? 1 : terminal, stderr: nil, terminal: true)
        } else {
            start(stdin: 0, stdout: 1, stderr: 2, terminal: false)
        }
    }

    /// Waits for the output streams to reach EOF (bounded: a daemonized grandchild may hold them)
    /// and gives the terminal back its modes.
    public func finish(timeout: Double = 5) {
        _ = finished.wait(timeout: .now() + timeout)
        TerminalMode.restore()
    }
}

/// Forwards the signals a shim receives to its process in the guest, and SIGWINCH as a resize of
/// the process's terminal (read from `terminal`, the host tty the caller resizes).
public final class SignalForwarder: @unchecked Sendable {
    // @unchecked: the sources are created once and only cancelled.
    private var sources: [any DispatchSourceSignal] = []
    public static let forwarded: [Int32] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT, SIGALRM]

    private let agent: AgentClient
    private let containerID: String
    private let execID: String
    private let terminal: Int32?

    public init(agent: AgentClient, containerID: String, execID: String, terminal: Int32?) {
        self.agent = agent
        self.containerID = containerID
        self.execID = execID
        self.terminal = terminal
        let queue = DispatchQueue(label: "vessel.signals")
        for sig in Self.forwarded + (terminal == nil ? [] : [SIGWINCH]) {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler { [self] in
                if sig == SIGWINCH {
                    syncWindowSize()
                } else {
                    Task { try? await agent.signal(containerID, execID, signal: sig) }
                }
            }
            source.resume()
            sources.append(source)
        }
        // A resize that happened before the handler existed would be lost otherwise.
        syncWindowSize()
    }

    public func syncWindowSize() {
        var rows: UInt16 = 0, cols: UInt16 = 0
        guard let terminal, vessel_get_winsize(terminal, &rows, &cols) == 0, rows > 0, cols > 0 else { return }
        let (agent, containerID, execID) = (agent, containerID, execID)
        Task { try? await agent.resize(containerID, execID, rows: UInt32(rows), columns: UInt32(cols)) }
    }
}

/// The process's terminal on the host: a pty whose master goes to the caller's console socket
/// (runc's protocol: one SCM_RIGHTS message), the slave relayed to the guest's terminal.
public enum ConsoleSocket {
    public static func sendPTYMaster(to socketPath: String) throws(RuntimeError) -> Int32 {
        let (master, slave): (Int32, Int32)
        do { (master, slave) = try Linux.openPTY() } catch { throw RuntimeError(stage: "allocate a pty", error) }
        defer { close(master) }
        var raw = termios()
        if tcgetattr(slave, &raw) == 0 {
            cfmakeraw(&raw)
            tcsetattr(slave, TCSANOW, &raw)
        }
        let sock: Int32
        do {
            sock = try Linux.connectUnix(socketPath)
        } catch {
            close(slave)
            throw RuntimeError(stage: "console socket \(socketPath)", error)
        }
        defer { close(sock) }
        let rc = vessel_send_fd(sock, "/dev/ptmx", master)
        if rc < 0 {
            close(slave)
            throw RuntimeError(stage: "send the pty to \(socketPath)", LinuxError(stage: "sendmsg", errno: -rc))
        }
        // Our own session's controlling terminal, so the caller's resizes reach us as SIGWINCH.
        _ = vessel_set_ctty(slave)
        return slave
    }
}
