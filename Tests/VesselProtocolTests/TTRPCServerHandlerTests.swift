import NIOCore
import NIOEmbedded
import SwiftProtobuf
import Testing

@testable import VesselProtocol

@Suite("ttrpc server connection", .timeLimit(.minutes(1)))
struct TTRPCServerHandlerTests {
    let recorder = Recorder()
    /// The connection's handler Tasks, so a test can wait until every one has reported back.
    let tasks = TTRPCHandlerTasks()

    /// `makeServerConnection`, plus `tasks`.
    private func connection() async throws -> NIOAsyncTestingChannel {
        let services = ["test.Service": makeTestService(self.recorder)]
        let channel = try await NIOAsyncTestingChannel { [tasks] channel in
            try TTRPCServer.addHandlers(to: channel.pipeline.syncOperations, services: services, tasks: tasks)
        }
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
        return channel
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

    /// Everything the server has written so far, decoded. Never waits: answers that need no
    /// handler Task are written before `writeInbound` returns.
    private func written(_ channel: NIOAsyncTestingChannel) async throws -> [DecodedResponse] {
        var answers: [DecodedResponse] = []
        while var buffer = try await channel.readOutbound(as: ByteBuffer.self) {
            var decoder = TTRPCFrameDecoder()
            guard case .frame(let frame) = decoder.nextMessage(from: &buffer), frame.type == .response else {
                Issue.record("server wrote something that is not a response frame")
                break
            }
            let response = try Ttrpc_Response(serializedBytes: Array(buffer: frame.payload))
            answers.append(DecodedResponse(streamID: frame.streamID, response: response))
        }
        return answers
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
        // What the server owes, by its rules: one error per request frame, on that frame's
        // stream and in order; frames of other types get nothing. Junk that parses as a
        // request names no service of this server.
        var owed: [(streamID: UInt32, code: TTRPCCode)] = []
        var lastStreamID: UInt32 = 0
        for _ in 0..<500 {
            let payload = (0..<Int.random(in: 0...48, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let streamID = UInt32.random(in: 0...UInt32.max, using: &rng)
            let type = UInt8.random(in: 0...4, using: &rng)
            junk.writeImmutableBuffer(
                frameBytes(streamID: streamID, type: type, flags: UInt8.random(in: 0...255, using: &rng), payload: payload)
            )
            guard type == TTRPCFrameType.request.rawValue else { continue }
            if streamID % 2 == 0 || streamID <= lastStreamID {
                owed.append((streamID, .invalidArgument))
                continue
            }
            lastStreamID = streamID
            let parses = (try? Ttrpc_Request(serializedBytes: payload)) != nil
            owed.append((streamID, parses ? .unimplemented : .invalidArgument))
        }
        // Then a frame cut short: its header claims 20 bytes and only 3 arrive. It must wait, unanswered.
        junk.writeBytes([0, 0, 0, 20, 0xDE, 0xAD, 0xBE, 0xEF, 1, 0, 1, 2, 3])
        try await channel.writeInbound(junk)

        let answers = try await self.written(channel)
        #expect(owed.count > 50, "the seed should yield plenty of request frames")
        #expect(answers.count == owed.count, "\(answers.count) answers to \(owed.count) request frames")
        let firstWrong = zip(answers, owed).first { $0.streamID != $1.streamID || $0.code != $1.code }
            .map { "stream \($0.streamID) got \(String(describing: $0.code)), owed: stream \($1.streamID) \($1.code)" }
        #expect(firstWrong == nil)

        // The rest of the cut frame completes it: a request the server must still answer
        // (stream 0xDEADBEEF is stale or its payload does not parse, either way InvalidArgument).
        try await channel.writeInbound(ByteBuffer(repeating: 0, count: 17))
        let last = try await self.written(channel)
        #expect(last.map { $0.streamID } == [0xDEAD_BEEF])
        #expect(last.first?.code == .invalidArgument)
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
        // The cancelled handler's own completion must not produce a second response. Its Task
        // hops to the loop just before it ends, so once drained that completion has been
        // handled (or is queued ahead of the echo), and a stray response would show below.
        await self.tasks.drain()
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
