import NIOCore
import NIOPosix
import SwiftProtobuf

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// A ttrpc client over one connection. Calls may be issued concurrently; responses are
/// matched to callers by stream id.
public final class TTRPCClient: Sendable {
    private let channel: any Channel
    private let handler: NIOLoopBound<TTRPCClientHandler>

    private init(channel: any Channel, handler: NIOLoopBound<TTRPCClientHandler>) {
        self.channel = channel
        self.handler = handler
    }

    public static func connect(unixPath: String, group: any EventLoopGroup) async throws -> TTRPCClient {
        try await self.make(self.bootstrap(group).connect(unixDomainSocketPath: unixPath))
    }

    /// Wraps an already connected stream socket (e.g. a hybrid-vsock stream after its
    /// CONNECT handshake). The client takes ownership of `fd`.
    public static func connect(connectedSocket fd: Int32, group: any EventLoopGroup) async throws -> TTRPCClient {
        try await self.make(self.bootstrap(group).withConnectedSocket(fd))
    }

    /// False once the connection closed (the peer went away, or `close()`).
    public var isActive: Bool { self.channel.isActive }

    /// Closes the connection; calls still pending fail with `.unavailable`.
    public func close() async {
        try? await self.channel.close()
    }

    /// Calls `service`/`method`. Throws `TTRPCError`: the server's status when it is not OK,
    /// `.unavailable` when the connection is or becomes closed, `.deadlineExceeded` after
    /// `timeout` (which is also sent to the server as the request's deadline),
    /// `.resourceExhausted` when the request is too large to send and `.cancelled` when the
    /// calling Task is cancelled.
    public func call<Req: SwiftProtobuf.Message, Resp: SwiftProtobuf.Message>(
        service: String,
        method: String,
        request: Req,
        as: Resp.Type = Resp.self,
        timeout: Duration? = nil,
        metadata: [String: String] = [:]
    ) async throws -> Resp {
        var envelope = Ttrpc_Request()
        envelope.service = service
        envelope.method = method
        envelope.metadata = metadata.sorted { $0.key < $1.key }.map { pair in
            Ttrpc_KeyValue.with {
                $0.key = pair.key
                $0.value = pair.value
            }
        }
        let bytes: [UInt8]
        do {
            envelope.payload = try request.serializedBytes()
            if let timeout { envelope.timeoutNano = Self.nanoseconds(timeout) }
            bytes = try envelope.serializedBytes()
        } catch {
            throw TTRPCError(.invalidArgument, "cannot encode \(Req.protoMessageName): \(error)")
        }
        guard bytes.count <= TTRPCFrame.maxPayloadLength else {
            throw TTRPCError(
                .resourceExhausted,
                "request of \(bytes.count) bytes exceeds maximum message size of \(TTRPCFrame.maxPayloadLength)"
            )
        }

        let response = try await self.roundTrip(bytes, timeout: timeout.map { .nanoseconds(Self.nanoseconds($0)) })
        if response.status.code != TTRPCCode.ok.rawValue {
            throw TTRPCError(status: response.status)
        }
        do {
            return try Resp(serializedBytes: response.payload)
        } catch {
            throw TTRPCError(.dataLoss, "cannot decode \(Resp.protoMessageName) from \(service)/\(method): \(error)")
        }
    }

    private func roundTrip(_ request: [UInt8], timeout: TimeAmount?) async throws -> Ttrpc_Response {
        let loop = self.channel.eventLoop
        let promise = loop.makePromise(of: Ttrpc_Response.self)
        let handler = self.handler
        return try await withTaskCancellationHandler {
            // Checked here because a cancellation that predates this scope runs onCancel
            // before the call is registered, which would otherwise let it through.
            if Task.isCancelled {
                promise.fail(TTRPCError(.cancelled, "call cancelled"))
            } else {
                loop.execute { handler.value.start(request, promise: promise, timeout: timeout) }
            }
            return try await promise.futureResult.get()
        } onCancel: {
            loop.execute { handler.value.abandon(promise) }
        }
    }

    private static func bootstrap(_ group: any EventLoopGroup) -> ClientBootstrap {
        ClientBootstrap(group: group).channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(TTRPCFrameDecoder()))
                try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(TTRPCFrameEncoder()))
                try channel.pipeline.syncOperations.addHandler(TTRPCClientHandler())
            }
        }
    }

    private static func make(_ connected: EventLoopFuture<any Channel>) async throws -> TTRPCClient {
        let channel = try await connected.get()
        let handler = try await channel.eventLoop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: TTRPCClientHandler.self), eventLoop: channel.eventLoop)
        }.get()
        return TTRPCClient(channel: channel, handler: handler)
    }

    /// Saturates instead of trapping: an absurd timeout just means "effectively none".
    static func nanoseconds(_ duration: Duration) -> Int64 {
        // timeout_nano 0 means "no deadline" on the wire, so a spent budget becomes 1ns.
        guard duration > .zero else { return 1 }
        let (seconds, attoseconds) = duration.components
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return .max }
        let (total, overflow2) = whole.addingReportingOverflow(attoseconds / 1_000_000_000)
        return overflow2 ? .max : max(total, 1)
    }
}
