import Foundation
import NIOCore
import NIOEmbedded
import SwiftProtobuf
import Testing

@testable import VesselProtocol

/// The client's connection handler against scripted server bytes.
@Suite("ttrpc client connection", .timeLimit(.minutes(1)))
struct TTRPCClientHandlerTests {
    private func connection() async throws -> NIOAsyncTestingChannel {
        let channel = try await NIOAsyncTestingChannel { channel in
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(TTRPCFrameDecoder()))
            try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(TTRPCFrameEncoder()))
            try channel.pipeline.syncOperations.addHandler(TTRPCClientHandler())
        }
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
        return channel
    }

    /// Starts a call and returns its promise plus the stream id it was sent on.
    private func start(_ channel: NIOAsyncTestingChannel) async throws -> (EventLoopFuture<Ttrpc_Response>, UInt32) {
        let promise = channel.eventLoop.makePromise(of: Ttrpc_Response.self)
        try await channel.testingEventLoop.executeInContext {
            try channel.pipeline.syncOperations.handler(type: TTRPCClientHandler.self)
                .start(try Ttrpc_Request().serializedBytes(), promise: promise, timeout: nil)
        }
        var sent = try await channel.waitForOutboundWrite(as: ByteBuffer.self)
        var decoder = TTRPCFrameDecoder()
        guard case .frame(let frame) = decoder.nextMessage(from: &sent) else {
            throw TTRPCError(.internal, "client wrote a partial frame")
        }
        #expect(frame.type == .request)
        return (promise.futureResult, frame.streamID)
    }

    @Test func streamIDsAreOddAndIncreasing() async throws {
        let channel = try await self.connection()
        var ids: [UInt32] = []
        for _ in 0..<3 { ids.append(try await self.start(channel).1) }
        #expect(ids == [1, 3, 5])
    }

    @Test func oversizedResponseFailsOnlyItsCall() async throws {
        let channel = try await self.connection()
        let (first, firstID) = try await self.start(channel)
        let (second, secondID) = try await self.start(channel)

        var header = ByteBuffer()
        header.writeInteger(UInt32(TTRPCFrame.maxPayloadLength + 1))
        header.writeInteger(firstID)
        header.writeInteger(UInt8(2))
        header.writeInteger(UInt8(0))
        try await channel.writeInbound(header)
        try await channel.writeInbound(ByteBuffer(repeating: 0, count: TTRPCFrame.maxPayloadLength + 1))
        await expectCode(.resourceExhausted) { _ = try await first.get() }

        // A response to a stream nobody waits for is dropped; the real one still lands.
        try await channel.writeInbound(frameBytes(streamID: 99, type: 2, payload: []))
        var ok = Ttrpc_Response()
        ok.payload = Data([7])
        try await channel.writeInbound(frameBytes(streamID: secondID, type: 2, payload: ok.serializedBytes()))
        #expect(try await second.get().payload == Data([7]))
    }

    @Test func undecodableResponseIsDataLoss() async throws {
        let channel = try await self.connection()
        let (call, id) = try await self.start(channel)
        try await channel.writeInbound(frameBytes(streamID: id, type: 2, payload: [0xFF, 0xFF, 0xFF]))
        await expectCode(.dataLoss) { _ = try await call.get() }
    }

    @Test func closeFailsPendingAndLaterCalls() async throws {
        let channel = try await self.connection()
        // Kept as TTRPCClient keeps it: the close takes the handler out of the pipeline, yet
        // the client still hands it the calls made afterwards.
        let handler = try await channel.testingEventLoop.executeInContext {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: TTRPCClientHandler.self), eventLoop: channel.eventLoop)
        }
        let (call, _) = try await self.start(channel)
        try await channel.close()
        await expectCode(.unavailable) { _ = try await call.get() }

        // Later calls fail at once instead of waiting for an answer that cannot come; the one
        // with a timeout must not wait for its deadline either (this loop's clock never moves).
        for timeout: TimeAmount? in [nil, .seconds(1)] {
            let later = channel.eventLoop.makePromise(of: Ttrpc_Response.self)
            try await channel.testingEventLoop.executeInContext {
                handler.value.start(try Ttrpc_Request().serializedBytes(), promise: later, timeout: timeout)
                // A no-op once start has failed the call; if it has not, this ends the wait
                // below with a wrong code instead of leaving the test hanging.
                later.fail(TTRPCError(.internal, "still pending after start returned"))
            }
            await expectCode(.unavailable) { _ = try await later.futureResult.get() }
        }
    }
}
