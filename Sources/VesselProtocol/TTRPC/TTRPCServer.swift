import NIOCore
import NIOPosix
import Synchronization

/// A ttrpc server: unary calls only, any number of listeners sharing one set of services.
public final class TTRPCServer: Sendable {
    private struct State {
        var closed = false
        var listeners: [any Channel] = []
        var connections: [ObjectIdentifier: any Channel] = [:]
    }

    private let group: any EventLoopGroup
    private let services: [String: TTRPCService]
    private let state = Mutex(State())
    private let handlerTasks = TTRPCHandlerTasks()

    public init(services: [TTRPCService], group: any EventLoopGroup) {
        self.group = group
        // Last registration wins for duplicate names, matching a plain dictionary build-up.
        self.services = Dictionary(services.map { ($0.name, $0) }, uniquingKeysWith: { _, last in last })
    }

    /// Listens on a Unix socket, replacing a stale socket file left by a previous run.
    public func bind(unixPath: String) async throws {
        try await self.listen(self.bootstrap().bind(unixDomainSocketPath: unixPath, cleanupExistingSocketFile: true))
    }

    /// Listens on vsock port `vsockPort` for any CID (VMADDR_CID_ANY), as the guest agent does.
    public func bind(vsockPort: UInt32) async throws {
        let address = VsockAddress(cid: .any, port: .init(rawValue: vsockPort))
        try await self.listen(self.bootstrap().bind(to: address))
    }

    /// Serves on an already bound stream socket (e.g. inherited from a supervisor); NIO
    /// calls listen(2) on it, which is harmless if it already listens. The server takes
    /// ownership of `fd`.
    public func bind(channelFromFD fd: Int32) async throws {
        try await self.listen(self.bootstrap().withBoundSocket(fd))
    }

    /// Stops listening and closes every connection. In-flight handlers are cancelled and
    /// awaited, so after this returns the event loop group can be shut down; a handler that
    /// ignores cancellation delays the return until it finishes. A closed server stays closed.
    public func close() async {
        let channels: [any Channel] = self.state.withLock { state in
            state.closed = true
            defer {
                state.listeners = []
                state.connections = [:]
            }
            return state.listeners + Array(state.connections.values)
        }
        for channel in channels {
            try? await channel.close()
        }
        await self.handlerTasks.drain()
    }

    private func bootstrap() -> ServerBootstrap {
        ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 128)
            .childChannelInitializer { channel in self.setUpConnection(channel) }
    }

    private func listen(_ bound: EventLoopFuture<any Channel>) async throws {
        let listener = try await bound.get()
        let accepted = self.state.withLock { state in
            guard !state.closed else { return false }
            state.listeners.append(listener)
            return true
        }
        if !accepted {
            try? await listener.close()
            throw TTRPCError(.unavailable, "server is closed")
        }
    }

    private func setUpConnection(_ channel: any Channel) -> EventLoopFuture<Void> {
        let key = ObjectIdentifier(channel)
        let accepted = self.state.withLock { state in
            guard !state.closed else { return false }
            state.connections[key] = channel
            return true
        }
        guard accepted else { return channel.close() }
        channel.closeFuture.whenComplete { _ in
            _ = self.state.withLock { $0.connections.removeValue(forKey: key) }
        }
        return channel.eventLoop.makeCompletedFuture {
            try Self.addHandlers(to: channel.pipeline.syncOperations, services: self.services, tasks: self.handlerTasks)
        }
    }

    static func addHandlers(
        to pipeline: ChannelPipeline.SynchronousOperations,
        services: [String: TTRPCService],
        tasks: TTRPCHandlerTasks = TTRPCHandlerTasks()
    ) throws {
        try pipeline.addHandler(ByteToMessageHandler(TTRPCFrameDecoder()))
        try pipeline.addHandler(MessageToByteHandler(TTRPCFrameEncoder()))
        try pipeline.addHandler(TTRPCServerHandler(services: services, tasks: tasks))
    }
}
