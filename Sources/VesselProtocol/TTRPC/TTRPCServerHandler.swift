import NIOCore
import SwiftProtobuf

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// One server connection. Lives on the channel's event loop and only does protocol
/// bookkeeping; each request's handler runs in its own Swift Task so a slow handler never
/// holds up the other streams of the connection.
final class TTRPCServerHandler: ChannelInboundHandler {
    typealias InboundIn = TTRPCInboundMessage
    typealias OutboundOut = TTRPCFrame

    private struct InFlight {
        var task: Task<Void, Never>
        var deadline: Scheduled<Void>?
    }

    private let services: [String: TTRPCService]
    private let tasks: TTRPCHandlerTasks
    private var context: ChannelHandlerContext?
    private var lastStreamID: UInt32 = 0
    /// Requests still owed a response. Whoever removes an entry (handler completion,
    /// deadline, connection close) is the only one that answers it, so each stream gets
    /// exactly one response.
    private var inFlight: [UInt32: InFlight] = [:]

    init(services: [String: TTRPCService], tasks: TTRPCHandlerTasks) {
        self.services = services
        self.tasks = tasks
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.cancelAll()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.cancelAll()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // I/O errors (e.g. ECONNRESET) leave nothing useful to say to the peer.
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .oversized(let streamID, _, let length):
            // ttrpc-go answers on the offending stream whatever its type and keeps going.
            self.send(
                streamID,
                .failure(
                    TTRPCError(
                        .resourceExhausted, "message length \(length) exceeds maximum message size of \(TTRPCFrame.maxPayloadLength)"))
            )
        case .frame(let frame):
            self.handle(frame, context: context)
        }
    }

    private func handle(_ frame: TTRPCFrame, context: ChannelHandlerContext) {
        // Only requests are meaningful to a unary server. Other types are ignored rather than
        // fatal, as in ttrpc-go: future protocol additions (and the data frames of streaming
        // clients, whose methods we answer Unimplemented anyway) must not kill a connection
        // that other requests share.
        guard frame.type == .request else { return }

        let id = frame.streamID
        guard id % 2 == 1 else {
            return self.send(id, .failure(TTRPCError(.invalidArgument, "StreamID must be odd for client initiated streams")))
        }
        guard id > self.lastStreamID else {
            return self.send(id, .failure(TTRPCError(.invalidArgument, "StreamID cannot be re-used and must increment")))
        }
        self.lastStreamID = id

        let request: Ttrpc_Request
        do {
            request = try Ttrpc_Request(serializedBytes: Array(buffer: frame.payload))
        } catch {
            return self.send(id, .failure(TTRPCError(.invalidArgument, "unmarshal request error: \(error)")))
        }
        guard let service = self.services[request.service] else {
            return self.send(id, .failure(TTRPCError(.unimplemented, "service \(request.service) not implemented")))
        }
        guard let method = service.method(request.method) else {
            return self.send(
                id,
                .failure(TTRPCError(.unimplemented, "method \(request.method) of service \(request.service) not implemented"))
            )
        }
        self.start(id, method, payload: request.payload, timeoutNanos: request.timeoutNano, context: context)
    }

    private func start(
        _ id: UInt32,
        _ method: @escaping TTRPCService.Method,
        payload: Data,
        timeoutNanos: Int64,
        context: ChannelHandlerContext
    ) {
        let loop = context.eventLoop
        let this = NIOLoopBound(self, eventLoop: loop)
        let tasks = self.tasks
        let token = tasks.reserve()
        let task = Task {
            let result: Result<Data, TTRPCError>
            do {
                result = .success(try await method(payload))
            } catch {
                result = .failure(TTRPCError(from: error))
            }
            loop.execute { this.value.finish(id, result) }
            tasks.finished(token)
        }
        tasks.started(token, task)
        var deadline: Scheduled<Void>?
        if timeoutNanos > 0 {
            deadline = loop.assumeIsolated().scheduleTask(in: .nanoseconds(timeoutNanos)) {
                self.expire(id, after: timeoutNanos)
            }
        }
        // Safe to register after starting the Task: its completion is delivered through
        // `loop.execute`, which cannot run before this event-loop turn ends.
        self.inFlight[id] = InFlight(task: task, deadline: deadline)
    }

    private func finish(_ id: UInt32, _ result: Result<Data, TTRPCError>) {
        guard let entry = self.inFlight.removeValue(forKey: id) else { return }  // already timed out
        entry.deadline?.cancel()
        self.send(id, result)
    }

    private func expire(_ id: UInt32, after nanos: Int64) {
        guard let entry = self.inFlight.removeValue(forKey: id) else { return }
        entry.task.cancel()
        self.send(id, .failure(TTRPCError(.deadlineExceeded, "request timed out after \(nanos)ns")))
    }

    private func cancelAll() {
        let entries = self.inFlight
        self.inFlight = [:]
        for entry in entries.values {
            entry.deadline?.cancel()
            entry.task.cancel()
        }
    }

    private func send(_ id: UInt32, _ result: Result<Data, TTRPCError>) {
        guard let context = self.context else { return }
        var response = Ttrpc_Response()
        switch result {
        case .success(let payload):
            response.status = Google_Rpc_Status()  // explicit OK, as ttrpc-go sends it
            response.payload = payload
        case .failure(let error):
            response.status = error.status
        }
        var bytes: [UInt8] = (try? response.serializedBytes()) ?? []
        if bytes.count > TTRPCFrame.maxPayloadLength {
            // The client would discard it anyway; tell it why instead.
            var tooBig = Ttrpc_Response()
            tooBig.status =
                TTRPCError(
                    .resourceExhausted,
                    "response of \(bytes.count) bytes exceeds maximum message size of \(TTRPCFrame.maxPayloadLength)"
                ).status
            bytes = (try? tooBig.serializedBytes()) ?? []
        }
        let frame = TTRPCFrame(streamID: id, type: .response, payload: context.channel.allocator.buffer(bytes: bytes))
        context.writeAndFlush(Self.wrapOutboundOut(frame), promise: nil)
    }
}
