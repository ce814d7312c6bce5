import NIOCore
import NIOPosix
import Synchronization
import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// Stdio without an RPC per chunk: a stream per stdio fd (Kata's ReadStdout round trips moved
/// about 5 % of what the vsock carries). The host dials the stdio port before it creates a
/// process; the agent answers each connection with a 4-byte id (big-endian, never 0) and keeps
/// the stream until a CreateContainer or ExecProcess names the id in `stdin_port`, `stdout_port`
/// or `stderr_port`. A request without ids keeps Kata's ReadStdout/WriteStdin.
final class StdioStreams: Sendable {
    static let defaultPort: UInt32 = 1025
    /// Streams dialed but not claimed yet; past this the oldest goes (a host that dials and never creates).
    static let maxPending = 64

    struct Stream: Sendable {
        let channel: any Channel
        let reader: StreamReader
    }

    private struct State {
        var nextID: UInt32 = 1
        var pending: [(id: UInt32, stream: Stream)] = []
    }
    private let state = Mutex(State())

    func listen(_ address: AgentOptions.ServerAddress, group: any EventLoopGroup) async throws -> any Channel {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { [self] channel in
                let reader = StreamReader(eventLoop: channel.eventLoop)
                return channel.pipeline.addHandler(reader).flatMap { self.greet(Stream(channel: channel, reader: reader)) }
            }
        switch address {
        case .unix(let path):
            unlink(path)
            return try await bootstrap.bind(unixDomainSocketPath: path).get()
        case .vsock(let port):
            return try await bootstrap.bind(to: VsockAddress(cid: .any, port: .init(rawValue: port))).get()
        }
    }

    private func greet(_ stream: Stream) -> EventLoopFuture<Void> {
        let (id, evicted) = state.withLock { s -> (UInt32, Stream?) in
            let id = s.nextID
            s.nextID = s.nextID == UInt32.max ? 1 : s.nextID + 1
            s.pending.append((id, stream))
            return (id, s.pending.count > Self.maxPending ? s.pending.removeFirst().stream : nil)
        }
        evicted?.channel.close(promise: nil)
        stream.channel.closeFuture.whenComplete { [self] _ in
            state.withLock { s in s.pending.removeAll { $0.id == id } }
        }
        return stream.channel.pipeline.addHandler(Greeting(id: id), position: .first)
    }

    /// Writes the id once the accepted channel is active (a write from the initializer would
    /// come before it is).
    private final class Greeting: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let id: UInt32
        init(id: UInt32) { self.id = id }

        func handlerAdded(context: ChannelHandlerContext) {
            if context.channel.isActive { send(context) }
        }

        func channelActive(context: ChannelHandlerContext) {
            send(context)
            context.fireChannelActive()
        }

        private func send(_ context: ChannelHandlerContext) {
            var greeting = context.channel.allocator.buffer(capacity: 4)
            greeting.writeInteger(id, endianness: .big)
            context.writeAndFlush(wrapOutboundOut(greeting), promise: nil)
        }
    }

    /// The streams a request names (0: none), taken out of the pending table; all or none.
    func claim(stdin: UInt32, stdout: UInt32, stderr: UInt32, terminal: Bool) throws -> Claimed {
        if terminal && stderr != 0 { throw AgentError.invalidArgument("a terminal process has no stderr: stderr_port must be 0") }
        let ids = [stdin, stdout, stderr]
        let nonZero = ids.filter { $0 != 0 }
        if Set(nonZero).count != nonZero.count { throw AgentError.invalidArgument("one stdio stream named twice") }
        let streams = try state.withLock { s throws -> [Stream?] in
            for id in nonZero where !s.pending.contains(where: { $0.id == id }) {
                throw AgentError.invalidArgument("stdio stream \(id) is unknown or taken")
            }
            return ids.map { id in
                guard id != 0, let index = s.pending.firstIndex(where: { $0.id == id }) else { return nil }
                return s.pending.remove(at: index).stream
            }
        }
        return Claimed(stdin: streams[0], stdout: streams[1], stderr: streams[2])
    }

    /// One process's streams, from `claim` until they are bound to its stdio (or closed, when
    /// the request failed).
    struct Claimed: Sendable {
        let stdin: Stream?
        let stdout: Stream?
        let stderr: Stream?

        var isEmpty: Bool { stdin == nil && stdout == nil && stderr == nil }

        func close() {
            for stream in [stdin, stdout, stderr].compactMap({ $0 }) { stream.channel.close(promise: nil) }
        }

        /// Starts copying; `ended(stderr)` runs once an output stream carried the fd's last byte,
        /// before the stream closes, so a WaitProcess after the host's EOF finds the exec gone.
        func bind(to io: ProcessIO, ended: @escaping @Sendable (_ stderr: Bool) async -> Void) {
            for (fd, stream) in [(Int32(1), stdout), (2, stderr)] {
                guard let stream, let source = io.forward(output: fd) else {
                    stream?.channel.close(promise: nil)
                    continue
                }
                source.forward(to: stream.channel) {
                    Task {
                        await ended(fd == 2)
                        try? await stream.channel.close()
                    }
                }
            }
            if let stdin {
                io.feedStdin(from: stdin.reader) { stdin.channel.close(promise: nil) }
            }
        }
    }
}
