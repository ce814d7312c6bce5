import NIOCore
import SwiftProtobuf

/// Client side of one connection: allocates stream ids, matches responses to callers and
/// fails whatever is pending when the connection goes away. Event-loop confined.
final class TTRPCClientHandler: ChannelInboundHandler {
    typealias InboundIn = TTRPCInboundMessage
    typealias OutboundOut = TTRPCFrame

    private struct Pending {
        var promise: EventLoopPromise<Ttrpc_Response>
        var deadline: Scheduled<Void>?
    }

    private var context: ChannelHandlerContext?
    private var nextStreamID: UInt32 = 1
    private var pending: [UInt32: Pending] = [:]
    private var closed = false

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.failAll(TTRPCError(.unavailable, "ttrpc connection closed"))
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.failAll(TTRPCError(.unavailable, "ttrpc connection closed"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Closing turns the error into `.unavailable` for every pending call via channelInactive.
        context.close(promise: nil)
    }

    /// Sends one serialized `Ttrpc_Request`. Allocation and write happen in the same
    /// event-loop turn so stream ids reach the server in increasing order, which it enforces.
    func start(_ request: [UInt8], promise: EventLoopPromise<Ttrpc_Response>, timeout: TimeAmount?) {
        guard let context, !self.closed else {
            return promise.fail(TTRPCError(.unavailable, "ttrpc connection closed"))
        }
        guard self.nextStreamID < UInt32.max - 1 else {
            return promise.fail(TTRPCError(.resourceExhausted, "ttrpc stream ids exhausted on this connection"))
        }
        let id = self.nextStreamID
        self.nextStreamID += 2

        let loop = context.eventLoop.assumeIsolated()
        var deadline: Scheduled<Void>?
        if let timeout {
            deadline = loop.scheduleTask(in: timeout) {
                self.fail(id, TTRPCError(.deadlineExceeded, "no response within \(timeout)"))
            }
        }
        self.pending[id] = Pending(promise: promise, deadline: deadline)

        let frame = TTRPCFrame(streamID: id, type: .request, payload: context.channel.allocator.buffer(bytes: request))
        let written = context.eventLoop.makePromise(of: Void.self)
        written.futureResult.assumeIsolated().whenFailure { error in
            self.fail(id, TTRPCError(.unavailable, "sending request failed: \(error)"))
        }
        context.writeAndFlush(Self.wrapOutboundOut(frame), promise: written)
    }

    /// Gives up on a call (the caller's Task was cancelled); a late response is then ignored.
    func abandon(_ promise: EventLoopPromise<Ttrpc_Response>) {
        guard let id = self.pending.first(where: { $0.value.promise.futureResult === promise.futureResult })?.key else {
            return
        }
        self.fail(id, TTRPCError(.cancelled, "call cancelled"))
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .oversized(let id, let type, let length):
            guard type == .response else { return }
            self.fail(
                id,
                TTRPCError(.resourceExhausted, "response length \(length) exceeds maximum message size of \(TTRPCFrame.maxPayloadLength)"))
        case .frame(let frame):
            // Data frames belong to streaming calls, which this client never makes; unknown
            // types are ignored for forward compatibility, as ttrpc-go does.
            guard frame.type == .response else { return }
            do {
                let response = try Ttrpc_Response(serializedBytes: Array(buffer: frame.payload))
                self.complete(frame.streamID, .success(response))
            } catch {
                self.fail(frame.streamID, TTRPCError(.dataLoss, "cannot decode ttrpc response: \(error)"))
            }
        }
    }

    private func fail(_ id: UInt32, _ error: TTRPCError) {
        self.complete(id, .failure(error))
    }

    /// Responses for ids we no longer track (timed out, cancelled) are dropped here.
    private func complete(_ id: UInt32, _ result: Result<Ttrpc_Response, any Error>) {
        guard let entry = self.pending.removeValue(forKey: id) else { return }
        entry.deadline?.cancel()
        entry.promise.completeWith(result)
    }

    private func failAll(_ error: TTRPCError) {
        self.closed = true
        let entries = self.pending
        self.pending = [:]
        for entry in entries.values {
            entry.deadline?.cancel()
            entry.promise.fail(error)
        }
    }
}
