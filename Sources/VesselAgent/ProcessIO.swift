import NIOCore
import NIOPosix
import Synchronization
import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// Serves ReadStdout/ReadStderr from a pipe or pty master without a thread per stream: reads are
/// pulled (autoRead off) only while a request waits, so a client that stops reading back-pressures
/// the container process through the pipe instead of growing a buffer here.
final class StreamReader: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: every stored property is touched only on `eventLoop`.
    typealias InboundIn = ByteBuffer

    private var buffer = ByteBuffer()
    private var eof = false
    private var pending: [(max: Int, promise: EventLoopPromise<ByteBuffer>)] = []
    private var context: ChannelHandlerContext?
    /// Forwarding (`forward(to:ended:)`) instead of pulls.
    private var sink: (channel: any Channel, ended: @Sendable () -> Void)?
    private var sinkFailed = false
    private var lastWrite: EventLoopFuture<Void>?
    let eventLoop: any EventLoop

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Up to `max` bytes; empty at EOF.
    func read(max: Int) -> EventLoopFuture<ByteBuffer> {
        eventLoop.flatSubmit {
            let promise = self.eventLoop.makePromise(of: ByteBuffer.self)
            self.pending.append((max, promise))
            self.satisfy()
            return promise.futureResult
        }
    }

    /// From now on every byte read goes to `channel`, read only while it is writable: no task
    /// hop per chunk, back-pressure through NIO's watermarks. `ended` runs once the last byte
    /// is out. A sink that fails is dropped and the reading goes on, so the process never blocks.
    func forward(to channel: any Channel, ended: @escaping @Sendable () -> Void) {
        let watch = WritabilityWatch { [self] in eventLoop.execute { self.pump() } }
        channel.pipeline.addHandler(watch).whenComplete { [self] _ in
            eventLoop.execute {
                self.sink = (channel, ended)
                self.pump()
            }
        }
    }

    private func pump() {
        guard let sink else { return }
        if buffer.readableBytes > 0 {
            if !sinkFailed {
                let write = sink.channel.writeAndFlush(buffer)
                write.hop(to: eventLoop).whenFailure { [self] _ in
                    sinkFailed = true
                    pump()
                }
                lastWrite = write
            }
            buffer = ByteBuffer()
        }
        if eof {
            self.sink = nil
            let ended = sink.ended
            (lastWrite ?? eventLoop.makeSucceededVoidFuture()).whenComplete { _ in ended() }
        } else if sinkFailed || sink.channel.isWritable {
            context?.read()
        }
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { finish() }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if buffer.readableBytes == 0 { buffer = incoming } else { buffer.writeBuffer(&incoming) }
        if sink != nil { pump() } else { satisfy() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { finish() }
    }

    func channelInactive(context: ChannelHandlerContext) { finish() }

    // A pty master answers EIO once the last slave fd closed: that is its EOF.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish()
        context.close(promise: nil)
    }

    private func finish() {
        guard !eof else { return }
        eof = true
        if sink != nil { pump() } else { satisfy() }
    }

    private func satisfy() {
        while let request = pending.first, buffer.readableBytes > 0 || eof {
            pending.removeFirst()
            let n = min(request.max, buffer.readableBytes)
            request.promise.succeed(buffer.readSlice(length: n) ?? ByteBuffer())
        }
        if buffer.readableBytes == 0 { buffer.clear() }
        if !pending.isEmpty, !eof { context?.read() }
    }
}

/// Tells a forwarding `StreamReader` that its sink can take more.
private final class WritabilityWatch: ChannelInboundHandler, Sendable {
    typealias InboundIn = NIOAny
    let writable: @Sendable () -> Void
    init(_ writable: @escaping @Sendable () -> Void) { self.writable = writable }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { writable() }
        context.fireChannelWritabilityChanged()
    }
}

/// The agent's ends of one process's stdio: pipes, or a pty master for all three.
final class ProcessIO: Sendable {
    private let stdinChannel: (any Channel)?
    private let stdoutReader: StreamReader
    private let stdoutChannel: any Channel
    private let stderr: (reader: StreamReader, channel: any Channel)?
    let terminal: Bool
    /// The pty master, still owned by its channel; only for ioctls.
    private let masterFD: Int32
    /// Fds bound to a stdio stream (`StdioStreams`): no RPC may read or write them any more.
    private let forwarded = Mutex<Set<Int32>>([])

    /// The fds the child gets as 0, 1, 2, to close in the agent once the child has them.
    struct ChildEnds {
        var stdin: Int32, stdout: Int32, stderr: Int32
        func close() { for fd in Set([stdin, stdout, stderr]) { Linux.close(fd) } }

        static func devNull() throws -> ChildEnds {
            let null = try Linux.open("/dev/null", O_RDWR)
            return ChildEnds(stdin: null, stdout: null, stderr: null)
        }
    }

    /// Creates the pipes and wraps the agent's ends in NIO channels. (A terminal process gets
    /// /dev/null instead until its helper opened the pty inside the container: `terminal(master:)`.)
    /// `outputPipeSize`: for stdout and stderr (fewer, larger reads; a failure keeps the default).
    static func pipes(group: any EventLoopGroup, outputPipeSize: Int?) async throws -> (ProcessIO, ChildEnds) {
        let stdin = try Linux.pipe(), stdout = try Linux.pipe(), stderr = try Linux.pipe()
        let child = ChildEnds(stdin: stdin.read, stdout: stdout.write, stderr: stderr.write)
        if let outputPipeSize {
            for fd in [stdout.read, stderr.read] { try? Linux.setPipeSize(fd, outputPipeSize) }
        }
        do {
            let out = try await readerChannel(group) { $0.takingOwnershipOfDescriptor(input: stdout.read) }
            let err = try await readerChannel(group) { $0.takingOwnershipOfDescriptor(input: stderr.read) }
            let input = try await NIOPipeBootstrap(group: group).takingOwnershipOfDescriptor(output: stdin.write).get()
            return (ProcessIO(stdin: input, stdout: out, stderr: err, terminal: false, masterFD: -1), child)
        } catch {
            child.close()
            throw error
        }
    }

    /// A terminal process's pty master (the helper sent it), wrapped for all three streams.
    static func terminal(master: Int32, group: any EventLoopGroup) async throws -> ProcessIO {
        guard master >= 0 else { throw AgentError.internal("the helper sent no pty for a terminal process") }
        do {
            let (reader, channel) = try await readerChannel(group) { $0.takingOwnershipOfDescriptor(inputOutput: master) }
            return ProcessIO(stdin: channel, stdout: (reader, channel), stderr: nil, terminal: true, masterFD: master)
        } catch {
            Linux.close(master)
            throw error
        }
    }

    private static func readerChannel(
        _ group: any EventLoopGroup,
        _ open: (NIOPipeBootstrap) -> EventLoopFuture<any Channel>
    ) async throws -> (StreamReader, any Channel) {
        let loop = group.next()
        let reader = StreamReader(eventLoop: loop)
        let bootstrap = NIOPipeBootstrap(group: loop)
            .channelOption(.autoRead, value: false)
            .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 16 << 10, maximum: 1 << 20))
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { $0.pipeline.addHandler(reader) }
        return (reader, try await open(bootstrap).get())
    }

    private init(
        stdin: (any Channel)?, stdout: (StreamReader, any Channel), stderr: (StreamReader, any Channel)?,
        terminal: Bool, masterFD: Int32
    ) {
        self.stdinChannel = stdin
        self.stdoutReader = stdout.0
        self.stdoutChannel = stdout.1
        self.stderr = stderr
        self.terminal = terminal
        self.masterFD = masterFD
    }

    func readStdout(max: Int) async throws -> [UInt8] {
        try notForwarded(1)
        return Array(buffer: try await stdoutReader.read(max: max).get())
    }

    /// With a terminal stderr is merged into the pty: report EOF at once.
    func readStderr(max: Int) async throws -> [UInt8] {
        guard let stderr else { return [] }
        try notForwarded(2)
        return Array(buffer: try await stderr.reader.read(max: max).get())
    }

    func writeStdin(_ bytes: [UInt8]) async throws -> Int {
        try notForwarded(0)
        try await write(ByteBuffer(bytes: bytes))
        return bytes.count
    }

    /// Hands an output fd (1 or 2) to a stream; nil for a terminal's stderr, which it does not have.
    func forward(output fd: Int32) -> StreamReader? {
        let reader: StreamReader? = fd == 1 ? stdoutReader : stderr?.reader
        if reader != nil { forwarded.withLock { _ = $0.insert(fd) } }
        return reader
    }

    /// Stdin is fed from `reader` (a stream's) from now on; `ended` once its end was the stdin's.
    func feedStdin(from reader: StreamReader, ended: @escaping @Sendable () -> Void) {
        forwarded.withLock { _ = $0.insert(0) }
        guard let stdinChannel else { return ended() }
        reader.forward(to: stdinChannel) { [self] in
            Task {
                try? await closeStdin()
                ended()
            }
        }
    }

    func write(_ buffer: ByteBuffer) async throws {
        guard let stdinChannel, stdinChannel.isActive else { throw AgentError.failedPrecondition("stdin is closed") }
        try await stdinChannel.writeAndFlush(buffer).get()
    }

    private func notForwarded(_ fd: Int32) throws {
        if forwarded.withLock({ $0.contains(fd) }) {
            throw AgentError.failedPrecondition("\(["stdin", "stdout", "stderr"][Int(fd)]) goes through a stdio stream")
        }
    }

    /// A pty has no half-close: send the terminal's EOF character, as a user typing ^D would.
    func closeStdin() async throws {
        if terminal {
            try await write(ByteBuffer(bytes: [0x04]))
        } else {
            try await stdinChannel?.close()
        }
    }

    func resize(rows: UInt16, columns: UInt16) throws {
        guard terminal else { throw AgentError.failedPrecondition("process has no terminal") }
        try Linux.setWindowSize(masterFD, rows: rows, columns: columns)
    }

    func close() async {
        for channel in [stdinChannel, stdoutChannel, stderr?.channel].compactMap({ $0 }) {
            try? await channel.close()
        }
    }
}
