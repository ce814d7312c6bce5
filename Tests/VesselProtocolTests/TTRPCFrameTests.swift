import NIOCore
import NIOEmbedded
import Testing

@testable import VesselProtocol

@Suite("ttrpc framing", .timeLimit(.minutes(1)))
struct TTRPCFrameTests {
    private func decoderChannel() -> EmbeddedChannel {
        EmbeddedChannel(handler: ByteToMessageHandler(TTRPCFrameDecoder()))
    }

    @Test func encodesBigEndianHeaderAndRoundTrips() throws {
        let frame = TTRPCFrame(streamID: 0x0102_0305, type: .response, flags: 0x04, payload: ByteBuffer(bytes: [9, 8, 7]))
        let encoder = EmbeddedChannel(handler: MessageToByteHandler(TTRPCFrameEncoder()))
        try encoder.writeOutbound(frame)
        let bytes = try #require(try encoder.readOutbound(as: ByteBuffer.self))
        #expect(Array(buffer: bytes) == [0, 0, 0, 3, 1, 2, 3, 5, 2, 4, 9, 8, 7])

        let decoder = self.decoderChannel()
        try decoder.writeInbound(bytes)
        #expect(try decoder.readInbound(as: TTRPCInboundMessage.self) == .frame(frame))
        #expect(try decoder.readInbound(as: TTRPCInboundMessage.self) == nil)
        #expect(try decoder.finish().isClean)
    }

    @Test func reassemblesFrameFedByteByByte() throws {
        let bytes = frameBytes(streamID: 7, type: 1, payload: Array("hello ttrpc".utf8))
        let decoder = self.decoderChannel()
        for (index, byte) in bytes.readableBytesView.enumerated() {
            try decoder.writeInbound(ByteBuffer(bytes: [byte]))
            if index < bytes.readableBytes - 1 {
                #expect(try decoder.readInbound(as: TTRPCInboundMessage.self) == nil)
            }
        }
        let expected = TTRPCFrame(streamID: 7, type: .request, payload: ByteBuffer(string: "hello ttrpc"))
        #expect(try decoder.readInbound(as: TTRPCInboundMessage.self) == .frame(expected))
    }

    @Test func decodesSeveralFramesFromOneBuffer() throws {
        var buffer = frameBytes(streamID: 1, type: 1, payload: [1])
        buffer.writeImmutableBuffer(frameBytes(streamID: 3, type: 2, payload: []))
        buffer.writeImmutableBuffer(frameBytes(streamID: 5, type: 3, flags: 1, payload: [5, 5]))
        buffer.writeBytes([0, 0, 0])  // start of a fourth frame's header

        let decoder = self.decoderChannel()
        try decoder.writeInbound(buffer)
        let ids = try (0..<3).map { _ -> UInt32 in
            guard case .frame(let frame) = try #require(try decoder.readInbound(as: TTRPCInboundMessage.self)) else {
                Issue.record("expected a frame")
                return 0
            }
            return frame.streamID
        }
        #expect(ids == [1, 3, 5])
        #expect(try decoder.readInbound(as: TTRPCInboundMessage.self) == nil)
        // The partial header left at EOF is dropped, not reported as an error.
        #expect(throws: Never.self) { try decoder.finish() }
    }

    @Test func skipsOversizedPayloadIncrementallyAndStaysInSync() throws {
        let length = UInt32(TTRPCFrame.maxPayloadLength + 1)
        var header = ByteBuffer()
        header.writeInteger(length)
        header.writeInteger(UInt32(9))
        header.writeInteger(UInt8(1))
        header.writeInteger(UInt8(0))

        let decoder = self.decoderChannel()
        try decoder.writeInbound(header)
        let chunk = ByteBuffer(repeating: 0xAB, count: 64 * 1024)
        var remaining = Int(length)
        while remaining > chunk.readableBytes {
            try decoder.writeInbound(chunk)
            remaining -= chunk.readableBytes
            #expect(try decoder.readInbound(as: TTRPCInboundMessage.self) == nil)
        }
        var last = ByteBuffer(repeating: 0xAB, count: remaining)
        last.writeImmutableBuffer(frameBytes(streamID: 11, type: 1, payload: [42]))
        try decoder.writeInbound(last)

        #expect(try decoder.readInbound(as: TTRPCInboundMessage.self) == .oversized(streamID: 9, type: .request, length: length))
        let next = TTRPCFrame(streamID: 11, type: .request, payload: ByteBuffer(bytes: [42]))
        #expect(try decoder.readInbound(as: TTRPCInboundMessage.self) == .frame(next))
    }

    @Test func acceptsPayloadOfExactlyTheLimit() throws {
        var decoder = TTRPCFrameDecoder()
        var buffer = frameBytes(streamID: 1, type: 1, payload: [UInt8](repeating: 1, count: TTRPCFrame.maxPayloadLength))
        guard case .frame(let frame) = decoder.nextMessage(from: &buffer) else {
            Issue.record("a payload of exactly the limit must decode")
            return
        }
        #expect(frame.payload.readableBytes == TTRPCFrame.maxPayloadLength)
    }

    @Test func encoderRefusesOversizedFrame() {
        let frame = TTRPCFrame(
            streamID: 1,
            type: .request,
            payload: ByteBuffer(repeating: 0, count: TTRPCFrame.maxPayloadLength + 1)
        )
        var out = ByteBuffer()
        #expect(throws: TTRPCError.self) { try TTRPCFrameEncoder().encode(data: frame, out: &out) }
    }
}
