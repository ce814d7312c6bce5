import NIOCore
import NIOEmbedded
import SwiftProtobuf
import Testing
@testable import VesselProtocol

@Suite("ttrpc server connection", .timeLimit(.minutes(1)))
struct TTRPCServerHandlerTests {
    let recorder = Recorder()

    private func connection() async throws -> NIOAsyncTestingChannel {
        try await makeServerConnection([makeTestService(self.recorder)])
    }

    private func echo(_ channel: NIOAsyncTestingChannel, streamID: UInt32, _ text: String) async throws {
        try await channel.writeInbound(
            requestFrame(streamID: streamID, method: "Echo", message: Google_Protobuf_StringValue(text))
        )
        let reply = try await nextResponse(channel)
        #expect(reply.streamID == streamID)
        #expect(reply.code == .ok)
        #expect(try Google_Protobuf_StringValue(serializedBytes: reply.response.payload).value == text)
    }

    @Test func servesEcho() async throws {
        let channel = try await self.connection()
        try await self.echo(channel, streamID: 1, "hi")
        try await self.echo(channel, streamID: 3, "again")
    }

    @Test func oversizedFrameGetsResourceExhaustedAndConnectionLivesOn() async throws {
        let channel = try await self.connection()
        let length = TTRPCFrame.maxPayloadLength + 100
        var header = ByteBuffer()
        header.writeInteger(UInt32(length))
        header.writeInteger(UInt32(1))
        header.writeInteger(UInt8(1))
        header.writeInteger(UInt8(0))
        try await channel.writeInbound(header)
        var remaining = length
        while remaining > 0 {
            let n = min(remaining, 256 * 1024)
            try await channel.writeInbound(ByteBuffer(repeating: 0x5A, count: n))
            remaining -= n
        }

        let reply = try await nextResponse(channel)
        #expect(reply.streamID == 1)
        #expect(reply.code == .resourceExhausted)
        #expect(channel.isActive)
        try await self.echo(channel, streamID: 3, "still here")
    }

    @Test func undecodableRequestIsInvalidArgument() async throws {
        let channel = try await self.connection()
        try await channel.writeInbound(frameBytes(streamID: 1, type: 1, payload: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF]))
        let reply = try await nextResponse(channel)
        #expect(reply.streamID == 1)
        #expect(reply.code == .invalidArgument)
        try await self.echo(channel, streamID: 3, "ok")
    }

    @Test func undecodableMethodPayloadIsInvalidArgument() async throws {
        let channel = try await self.connection()
        try await channel.writeInbound(requestFrame(streamID: 1, method: "Echo", payload: [0xFF, 0xFF]))
        let reply = try await nextResponse(channel)
        #expect(reply.code == .invalidArgument)
        #expect(reply.response.status.message.contains("test.Service/Echo"))
    }

    @Test func randomJunkNeverCrashesAndOnlyEarnsErrors() async throws {
        let channel = try await self.connection()
        var rng = SplitMix64(state: 0x7717_9C)
        var junk = ByteBuffer()
        for _ in 0..<500 {
            let payload = (0..<Int.random(in: 0...48, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            junk.writeImmutableBuffer(
                frameBytes(
                    streamID: UInt32.random(in: 0...UInt32.max, using: &rng),
                    type: UInt8.random(in: 0...4, using: &rng),
                    flags: UInt8.random(in: 0...255, using: &rng),
                    payload: payload
                )
            )
        }
        // Then bytes that are not frames at all: a header claiming 20 bytes, and fewer arrive.
        junk.writeBytes([0, 0, 0, 20, 0xDE, 0xAD, 0xBE, 0xEF, 1, 0, 1, 2, 3])
        try await channel.writeInbound(junk)

        while let bytes = try await channel.readOutbound(as: ByteBuffer.self) {
            var buffer = bytes
            var decoder = TTRPCFrameDecoder()
            guard case .frame(let frame) = decoder.nextMessage(from: &buffer) else {
                Issue.record("server wrote a partial frame")
                break
            }
            let response = try Ttrpc_Response(serializedBytes: Array(buffer: frame.payload))
            let code = TTRPCCode(rawValue: response.status.code)
            #expect(code == .invalidArgument || code == .unimplemented, "junk answered with \(String(describing: code))")
        }
        #expect(channel.isActive)
        _ = try? await channel.finish()
    }

    @Test func unknownServiceAndMethodAreUnimplemented() async throws {
        let channel = try await self.connection()
        try await channel.writeInbound(
            requestFrame(streamID: 1, service: "no.Such", method: "Echo", message: Google_Protobuf_Empty())
        )
        let service = try await nextResponse(channel)
        #expect(service.code == .unimplemented)
        #expect(service.response.status.message.contains("no.Such"))

        try await channel.writeInbound(requestFrame(streamID: 3, method: "Nope", message: Google_Protobuf_Empty()))
        let method = try await nextResponse(channel)
        #expect(method.streamID == 3)
        #expect(method.code == .unimplemented)
        #expect(method.response.status.message.contains("Nope"))
    }

    @Test func enforcesOddIncreasingStreamIDs() async throws {
        let channel = try await self.connection()
        try await channel.writeInbound(requestFrame(streamID: 2, method: "Echo", message: Google_Protobuf_StringValue("x")))
        #expect(try await nextResponse(channel).code == .invalidArgument)
        try await self.echo(channel, streamID: 5, "five")
        try await channel.writeInbound(requestFrame(streamID: 3, method: "Echo", message: Google_Protobuf_StringValue("x")))
        let reused = try await nextResponse(channel)
        #expect(reused.streamID == 3)
        #expect(reused.code == .invalidArgument)
    }

    @Test func ignoresNonRequestFrames() async throws {
        let channel = try await self.connection()
        try await channel.writeInbound(frameBytes(streamID: 1, type: 3, payload: [1, 2]))
        try await channel.writeInbound(frameBytes(streamID: 1, type: 9, payload: []))
        try await channel.writeInbound(frameBytes(streamID: 1, type: 2, payload: []))
        #expect(try await channel.readOutbound(as: ByteBuffer.self) == nil)
        try await self.echo(channel, streamID: 1, "first real request")
    }

    @Test func handlerErrorsMapToStatuses() async throws {
        let channel = try await self.connection()
        try await channel.writeInbound(requestFrame(streamID: 1, method: "Fail", message: Google_Protobuf_Empty()))
        let fail = try await nextResponse(channel)
        #expect(fail.code == .notFound)
        #expect(fail.response.status.message == "no such thing")

        try await channel.writeInbound(requestFrame(streamID: 3, method: "Plain", message: Google_Protobuf_Empty()))
        let plain = try await nextResponse(channel)
        #expect(plain.code == .unknown)
        #expect(plain.response.status.message == "plain failure")
    }

    @Test func oversizedResponseBecomesResourceExhausted() async throws {
        let channel = try await self.connection()
        try await channel.writeInbound(requestFrame(streamID: 1, method: "Big", message: Google_Protobuf_Empty()))
        #expect(try await nextResponse(channel).code == .resourceExhausted)
    }

    @Test func deadlineCancelsHandlerAndAnswersDeadlineExceeded() async throws {
        let channel = try await self.connection()
        // The test loop's clock is virtual: the deadline fires only when we advance it.
        try await channel.writeInbound(
            requestFrame(
                streamID: 1,
                method: "Slow",
                message: Google_Protobuf_StringValue("60000"),
                timeoutNano: 100_000_000
            )
        )
        #expect(await self.recorder.waitFor("slow started 60000"))
        await channel.testingEventLoop.advanceTime(by: .milliseconds(150))
        let reply = try await nextResponse(channel)
        #expect(reply.code == .deadlineExceeded)
        #expect(await self.recorder.waitFor("slow cancelled 60000"))
        // The cancelled handler's own completion must not produce a second response.
        try await self.echo(channel, streamID: 3, "after deadline")
        #expect(try await channel.readOutbound(as: ByteBuffer.self) == nil)
    }

    @Test func closingConnectionCancelsHandlers() async throws {
        let channel = try await self.connection()
        try await channel.writeInbound(requestFrame(streamID: 1, method: "Slow", message: Google_Protobuf_StringValue("60001")))
        #expect(await self.recorder.waitFor("slow started 60001"))
        try await channel.close()
        #expect(await self.recorder.waitFor("slow cancelled 60001"))
    }
}
