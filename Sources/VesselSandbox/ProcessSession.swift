import NIOCore
import Synchronization
import NIOPosix
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

/// One process's stdio between the agent and its fifos: output pulled chunk by chunk (ReadStdout,
/// ReadStderr) and written with back-pressure, input written as it comes (WriteStdin). The same
/// session serves a container's init and its execs, for both front doors.
final class ProcessSession: Sendable {
    private let agent: AgentClient
    private let containerID: String
    private let execID: String
    let paths: StdioPaths
    private let stdin: NIOAsyncChannel<ByteBuffer, ByteBuffer>?
    private let outputs: [(stderr: Bool, channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>?)]
    private let pumps = PumpGroup()

    /// Opens the fifos (never blocking: the caller has its ends open, or will). `agent` must
    /// have no request timeout: a read waits as long as the process is silent.
    static func open(_ paths: StdioPaths, agent: AgentClient, containerID: String, execID: String) async throws(RuntimeError)
        -> ProcessSession
    {
        let group = MultiThreadedEventLoopGroup.singleton
        var opened: [NIOAsyncChannel<ByteBuffer, ByteBuffer>] = []
        do {
            func channel(_ path: String, input: Bool) async throws -> NIOAsyncChannel<ByteBuffer, ByteBuffer>? {
                guard !path.isEmpty else { return nil }
                let fd = try Fifo.open(path, forReading: input)
                let bootstrap = NIOPipeBootstrap(group: group)
                let wrap: @Sendable (any Channel) -> EventLoopFuture<NIOAsyncChannel<ByteBuffer, ByteBuffer>> = { channel in
                    channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel(wrappingChannelSynchronously: channel) }
                }
                let result = input
                    ? try await bootstrap.takingOwnershipOfDescriptor(input: fd, channelInitializer: wrap)
                    : try await bootstrap.takingOwnershipOfDescriptor(output: fd, channelInitializer: wrap)
                opened.append(result)
                return result
            }
            let stdin = try await channel(paths.stdin, input: true)
            let stdout = try await channel(paths.stdout, input: false)
            let stderr = paths.terminal ? nil : try await channel(paths.stderr, input: false)
            return ProcessSession(agent: agent, containerID: containerID, execID: execID, paths: paths, stdin: stdin,
                                  outputs: [(false, stdout)] + (paths.terminal ? [] : [(true, stderr)]))
        } catch {
            for channel in opened { try? await channel.channel.close() }
            throw RuntimeError("open the stdio of \(execID.isEmpty ? containerID : execID): \(error)", kind: .invalidArgument)
        }
    }

    private init(agent: AgentClient, containerID: String, execID: String, paths: StdioPaths,
                 stdin: NIOAsyncChannel<ByteBuffer, ByteBuffer>?, outputs: [(stderr: Bool, channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>?)]) {
        self.agent = agent
        self.containerID = containerID
        self.execID = execID
        self.paths = paths
        self.stdin = stdin
        self.outputs = outputs
    }

    /// Starts copying; call once the process exists in the guest.
    func start() {
        for (isStderr, channel) in outputs {
            pumps.add { [agent, containerID, execID] in
                await Self.pumpOutput(agent: agent, containerID: containerID, execID: execID, stderr: isStderr, to: channel)
            }
        }
        if let stdin {
            let (agent, containerID, execID, terminal) = (agent, containerID, execID, paths.terminal)
            Task {
                try? await stdin.executeThenClose { inbound, _ in
                    for try await buffer in inbound {
                        try await agent.writeStdin(containerID, execID, Array(buffer.readableBytesView))
                    }
                }
                // A closed console is not ^D: only CloseIO ends a terminal's input.
                if !terminal { try? await agent.closeStdin(containerID, execID) }
            }
        }
    }

    /// The output is pulled even with nobody to write it to: a process must never block on it.
    private static func pumpOutput(agent: AgentClient, containerID: String, execID: String, stderr: Bool,
                                   to channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>?) async {
        guard let channel else {
            while let chunk = try? await agent.read(containerID, execID, stderr: stderr), !chunk.isEmpty {}
            return
        }
        try? await channel.executeThenClose { _, outbound in
            var open = true
            while let chunk = try? await agent.read(containerID, execID, stderr: stderr), !chunk.isEmpty {
                // A reader that went away must not stall the container: keep draining.
                if open { open = (try? await outbound.write(ByteBuffer(bytes: chunk))) != nil }
            }
        }
    }

    /// Until the output reached EOF, up to `timeout` seconds (a daemonized grandchild may hold it).
    func drain(timeout: Duration = .seconds(5)) async {
        await pumps.wait(timeout: timeout)
    }

    func closeStdin() async throws {
        try await agent.closeStdin(containerID, execID)
    }

    /// Closes what is still open (a process that never started, a sandbox that died).
    func close() async {
        for channel in [stdin] + outputs.map(\.channel) {
            try? await channel?.channel.close()
        }
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
        let running = tasks.withLock { $0 }
        let deadline = Task {
            try? await Task.sleep(for: timeout)
            for task in running { task.cancel() }
        }
        for task in running { await task.value }
        deadline.cancel()
    }
}

enum Fifo {
    /// Output: write-only when a reader is there (so a reader that leaves shows as EPIPE), else
    /// read-write, which keeps the data for a reader that comes later. Input: read-only.
    static func open(_ path: String, forReading: Bool) throws(LinuxError) -> Int32 {
        if forReading { return try Linux.open(path, O_RDONLY | O_NONBLOCK) }
        do {
            return try Linux.open(path, O_WRONLY | O_NONBLOCK)
        } catch where error.errno == ENXIO {
            return try Linux.open(path, O_RDWR | O_NONBLOCK)
        }
    }
}
