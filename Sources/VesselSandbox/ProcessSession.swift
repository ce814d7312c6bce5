import NIOCore
import NIOPosix
import Synchronization
import VesselAgentClient
import VesselCore
import VesselLinux

/// The host ends of one process's stdio: fifos its caller made (containerd's, or the OCI CLI's
/// process monitor's), any of which may be absent. With a terminal, stdout carries the pty's output
/// and stderr is unused.
struct StdioPaths: Sendable, Equatable {
    var stdin = ""
    var stdout = ""
    var stderr = ""
    var terminal = false
}

/// A stdio stream the agent named (its `StdioStreams`): a connected socket, and the id that
/// CreateContainer or ExecProcess passes back.
struct StdioStream: Sendable {
    let fd: Int32
    let id: UInt32
}

/// One process's stdio between the agent and its fifos, a stream per fd (dialed before the
/// process exists, so nothing it writes can be missed): output copied stream → fifo with
/// back-pressure, input fifo → stream, the stream's end being stdin's end. The same session
/// serves a container's init and its execs, for both front doors.
final class ProcessSession: Sendable {
    private let agent: AgentClient
    private let containerID: String
    private let execID: String
    let paths: StdioPaths
    /// What CreateContainer/ExecProcess names as stdin_port, stdout_port, stderr_port.
    let ports: StdioPorts
    private let input: (fifo: NIOAsyncChannel<ByteBuffer, Never>, stream: any Channel)?
    private let outputs: [(stream: NIOAsyncChannel<ByteBuffer, Never>, fifo: (any Channel)?)]
    private let pumps = PumpGroup()
    private let stdin = Mutex(InputState())

    private struct InputState {
        var pump: Task<Void, Never>?
        var closeRequested = false
        /// A terminal's stream, kept open after its console closed, until CloseIO.
        var parked: ChannelSink?
    }

    /// Opens the fifos (never blocking: the caller has its ends open, or will) and dials a
    /// stream per fd: stdout always, stderr unless a terminal merges it, stdin when there is one.
    static func open(
        _ paths: StdioPaths, agent: AgentClient, containerID: String, execID: String,
        dial: @escaping @Sendable () async throws(RuntimeError) -> StdioStream
    ) async throws(RuntimeError)
        -> ProcessSession
    {
        let group = MultiThreadedEventLoopGroup.singleton
        var opened: [any Channel] = []
        do {
            // Read-only wrappers (Never: their writers finish at once). One with an unfinished writer
            // traps when dropped, as a failed open drops it: that took the owner, and the sandbox, down.
            let wrap: @Sendable (any Channel) -> EventLoopFuture<NIOAsyncChannel<ByteBuffer, Never>> = { channel in
                channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel(wrappingChannelSynchronously: channel) }
            }
            // Wrapped as they are made: a read before a handler is there would be lost.
            func readable(fifo path: String) async throws -> NIOAsyncChannel<ByteBuffer, Never> {
                let fd = try Fifo.open(path, forReading: true)
                let channel = try await NIOPipeBootstrap(group: group).takingOwnershipOfDescriptor(input: fd, channelInitializer: wrap)
                opened.append(channel.channel)
                return channel
            }
            func writable(fifo path: String) async throws -> (any Channel)? {
                guard !path.isEmpty else { return nil }
                let fd = try Fifo.open(path, forReading: false)
                let channel = try await NIOPipeBootstrap(group: group).takingOwnershipOfDescriptor(output: fd).get()
                opened.append(channel)
                return channel
            }
            // All streams at once: each dial is a round trip into the guest, on an exec's critical path.
            var dialed = try await dialAll(count: (paths.stdin.isEmpty ? 0 : 1) + (paths.terminal ? 1 : 2), dial)
            defer { for stream in dialed { Linux.close(stream.fd) } }
            func stream<Output: Sendable>(
                _ initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Output>,
                channel: (Output) -> any Channel
            ) async throws -> (Output, UInt32) {
                let dialed = dialed.removeFirst()
                let output = try await ClientBootstrap(group: group).withConnectedSocket(dialed.fd, channelInitializer: initializer)
                opened.append(channel(output))
                return (output, dialed.id)
            }
            var ports = StdioPorts()
            var input: (fifo: NIOAsyncChannel<ByteBuffer, Never>, stream: any Channel)?
            if !paths.stdin.isEmpty {
                let fifo = try await readable(fifo: paths.stdin)
                let (channel, id) = try await stream({ $0.eventLoop.makeSucceededFuture($0) }, channel: { $0 })
                input = (fifo, channel)
                ports.stdin = id
            }
            var outputs: [(stream: NIOAsyncChannel<ByteBuffer, Never>, fifo: (any Channel)?)] = []
            for stderr in paths.terminal ? [false] : [false, true] {
                let fifo = try await writable(fifo: stderr ? paths.stderr : paths.stdout)
                let (channel, id) = try await stream(wrap, channel: \.channel)
                outputs.append((channel, fifo))
                if stderr { ports.stderr = id } else { ports.stdout = id }
            }
            return ProcessSession(
                agent: agent, containerID: containerID, execID: execID, paths: paths, ports: ports,
                input: input, outputs: outputs)
        } catch {
            for channel in opened { try? await channel.close() }
            if let error = error as? RuntimeError { throw error }
            throw RuntimeError("open the stdio of \(execID.isEmpty ? containerID : execID): \(error)", kind: .invalidArgument)
        }
    }

    /// `count` streams dialed in parallel; on a failure, the ones that were dialed are closed.
    private static func dialAll(
        count: Int, _ dial: @escaping @Sendable () async throws(RuntimeError) -> StdioStream
    ) async throws(RuntimeError) -> [StdioStream] {
        let results = await withTaskGroup(of: Result<StdioStream, RuntimeError>.self) { group in
            for _ in 0..<count {
                group.addTask {
                    do throws(RuntimeError) { return .success(try await dial()) } catch { return .failure(error) }
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        var streams: [StdioStream] = []
        var failure: RuntimeError?
        for result in results {
            switch result {
            case .success(let stream): streams.append(stream)
            case .failure(let error): failure = failure ?? error
            }
        }
        if let failure {
            for stream in streams { Linux.close(stream.fd) }
            throw failure
        }
        return streams
    }

    private init(
        agent: AgentClient, containerID: String, execID: String, paths: StdioPaths, ports: StdioPorts,
        input: (fifo: NIOAsyncChannel<ByteBuffer, Never>, stream: any Channel)?,
        outputs: [(stream: NIOAsyncChannel<ByteBuffer, Never>, fifo: (any Channel)?)]
    ) {
        self.agent = agent
        self.containerID = containerID
        self.execID = execID
        self.paths = paths
        self.ports = ports
        self.input = input
        self.outputs = outputs
    }

    /// Starts copying; call once the process exists in the guest.
    func start() {
        for (stream, fifo) in outputs {
            pumps.add { await Self.copy(from: stream, to: fifo.map(ChannelSink.init)) }
        }
        guard let input else { return }
        let terminal = paths.terminal
        let pump = Task { [self] in
            let sink = ChannelSink(input.stream)
            try? await input.fifo.executeThenClose { inbound, _ in
                for try await buffer in inbound { await sink.write(buffer) }
            }
            // A closed console is not ^D: only CloseIO ends a terminal's input.
            let finish = self.stdin.withLock { state in
                if !terminal || state.closeRequested { return true }
                state.parked = sink
                return false
            }
            if finish { await sink.finish() }
        }
        stdin.withLock { $0.pump = pump }
    }

    /// A reader that went away must not stall the container: the output keeps draining.
    private static func copy(from stream: NIOAsyncChannel<ByteBuffer, Never>, to sink: ChannelSink?) async {
        try? await stream.executeThenClose { inbound, _ in
            do {
                for try await buffer in inbound { await sink?.write(buffer) }
            } catch {}
            await sink?.finish()
        }
    }

    /// Until the output reached EOF, up to `timeout` seconds (a daemonized grandchild may hold it).
    func drain(timeout: Duration = .seconds(5)) async {
        await pumps.wait(timeout: timeout)
    }

    /// CloseIO: what the stdin fifo still holds goes first (up to a second), then the stream
    /// ends, which ends the process's stdin. Without a stdin stream the agent closes the pipe.
    func closeStdin() async throws {
        guard input != nil else {
            try await agent.closeStdin(containerID, execID)
            return
        }
        let pump = stdin.withLock { state in
            state.closeRequested = true
            return state.pump
        }
        if let pump { await awaitAll([pump], cancellingAfter: .seconds(1)) }
        let parked = stdin.withLock { state in
            defer { state.parked = nil }
            return state.parked
        }
        await parked?.finish()
    }

    /// Closes what is still open (a process that never started, a sandbox that died).
    func close() async {
        let channels: [(any Channel)?] = [input?.fifo.channel, input?.stream] + outputs.flatMap { [$0.stream.channel, $0.fifo] }
        for channel in channels { try? await channel?.close() }
    }
}

/// Writes with one write in flight while the next is awaited: back-pressure without NIO's
/// async writer, whose close drops what it still buffers. After a failed write (the reader
/// left) it drops everything, so the writer keeps draining its source. One writer at a time.
private final class ChannelSink: @unchecked Sendable {
    // @unchecked: `write` is called from one task; `finish` after it returned.
    private let channel: any Channel
    private var inFlight: EventLoopFuture<Void>?
    private var failed = false

    init(_ channel: any Channel) { self.channel = channel }

    func write(_ buffer: ByteBuffer) async {
        guard !failed else { return }
        let next: EventLoopFuture<Void> = channel.writeAndFlush(buffer)
        if let previous = inFlight, (try? await previous.get()) == nil { failed = true }
        inFlight = next
    }

    /// The channel closes once everything written is out.
    func finish() async {
        if let inFlight { _ = try? await inFlight.get() }
        inFlight = nil
        try? await channel.close()
    }
}

/// Output pumps, awaited together with a bound.
private final class PumpGroup: Sendable {
    private let tasks = Mutex<[Task<Void, Never>]>([])

    func add(_ body: @escaping @Sendable () async -> Void) {
        let task = Task { await body() }
        tasks.withLock { $0.append(task) }
    }

    /// Pumps still running at the deadline are cancelled (their pending read with them).
    func wait(timeout: Duration) async {
        await awaitAll(tasks.withLock { $0 }, cancellingAfter: timeout)
    }
}

/// Until every task ended; those still running after `timeout` are cancelled.
private func awaitAll(_ tasks: [Task<Void, Never>], cancellingAfter timeout: Duration) async {
    let deadline = Task {
        try? await Task.sleep(for: timeout)
        for task in tasks { task.cancel() }
    }
    for task in tasks { await task.value }
    deadline.cancel()
}

enum Fifo {
    /// Output: write-only when a reader is there (so a reader that leaves shows as EPIPE), else
    /// read-write, which keeps the data for a reader that comes later. Input: read-only.
    static func open(_ path: String, forReading: Bool) throws(LinuxError) -> Int32 {
        if forReading { return try Linux.open(path, O_RDONLY | O_NONBLOCK) }
        do {
            return try Linux.open(path, O_WRONLY | O_NONBLOCK)
        } catch  where error.errno == ENXIO {
            return try Linux.open(path, O_RDWR | O_NONBLOCK)
        }
    }
}
