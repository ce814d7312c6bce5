import NIOCore

/// The `type` byte of a ttrpc frame header. A struct rather than an enum so that frame
/// types this implementation does not know survive decoding and can be ignored by policy.
public struct TTRPCFrameType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let request = TTRPCFrameType(rawValue: 1)
    public static let response = TTRPCFrameType(rawValue: 2)
    public static let data = TTRPCFrameType(rawValue: 3)

    public var description: String {
        switch self {
        case .request: "request"
        case .response: "response"
        case .data: "data"
        default: "type(\(self.rawValue))"
        }
    }
}

/// One ttrpc frame: a 10-byte big-endian header (u32 payload length, u32 stream id,
/// u8 type, u8 flags) followed by the payload.
public struct TTRPCFrame: Sendable, Equatable {
    public static let headerLength = 10
    /// Largest payload either side accepts (ttrpc-go `messageLengthMax`).
    public static let maxPayloadLength = 4 << 20

    public var streamID: UInt32
    public var type: TTRPCFrameType
    public var flags: UInt8
    public var payload: ByteBuffer

    public init(streamID: UInt32, type: TTRPCFrameType, flags: UInt8 = 0, payload: ByteBuffer) {
        self.streamID = streamID
        self.type = type
        self.flags = flags
        self.payload = payload
    }

    public func write(to buffer: inout ByteBuffer) {
        buffer.reserveCapacity(minimumWritableBytes: Self.headerLength + self.payload.readableBytes)
        buffer.writeInteger(UInt32(self.payload.readableBytes))
        buffer.writeInteger(self.streamID)
        buffer.writeInteger(self.type.rawValue)
        buffer.writeInteger(self.flags)
        buffer.writeImmutableBuffer(self.payload)
    }
}

/// What the frame decoder hands up the pipeline.
public enum TTRPCInboundMessage: Sendable, Equatable {
    case frame(TTRPCFrame)
    /// A frame whose declared payload exceeded `TTRPCFrame.maxPayloadLength`. Its payload
    /// was skipped, so the stream stays in sync and the peer can get an error for `streamID`.
    case oversized(streamID: UInt32, type: TTRPCFrameType, length: UInt32)
}

/// Splits the byte stream into frames. Never throws: an oversized frame is skipped (and
/// reported) instead of failing the connection, as ttrpc-go does.
public struct TTRPCFrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = TTRPCInboundMessage

    private struct Skipping {
        var streamID: UInt32
        var type: TTRPCFrameType
        var length: UInt32
        var remaining: Int
    }

    /// Set while the payload of an oversized frame is being consumed. Bytes are dropped as
    /// they arrive so a peer cannot make us hold more than one read's worth of them.
    private var skipping: Skipping?

    public init() {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let message = self.nextMessage(from: &buffer) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(message))
        return .continue
    }

    public mutating func decodeLast(
        context: ChannelHandlerContext,
        buffer: inout ByteBuffer,
        seenEOF: Bool
    ) throws -> DecodingState {
        while let message = self.nextMessage(from: &buffer) {
            context.fireChannelRead(Self.wrapInboundOut(message))
        }
        // A truncated frame at EOF has nobody left to answer; drop it rather than let
        // ByteToMessageHandler report leftover bytes as an error.
        buffer.moveReaderIndex(to: buffer.writerIndex)
        return .needMoreData
    }

    /// Pure parsing step, usable without a pipeline.
    public mutating func nextMessage(from buffer: inout ByteBuffer) -> TTRPCInboundMessage? {
        if var skip = self.skipping {
            let n = min(skip.remaining, buffer.readableBytes)
            buffer.moveReaderIndex(forwardBy: n)
            skip.remaining -= n
            guard skip.remaining == 0 else {
                self.skipping = skip
                return nil
            }
            self.skipping = nil
            return .oversized(streamID: skip.streamID, type: skip.type, length: skip.length)
        }

        guard
            let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self),
            let streamID = buffer.getInteger(at: buffer.readerIndex + 4, as: UInt32.self),
            let type = buffer.getInteger(at: buffer.readerIndex + 8, as: UInt8.self),
            let flags = buffer.getInteger(at: buffer.readerIndex + 9, as: UInt8.self)
        else { return nil }

        let frameType = TTRPCFrameType(rawValue: type)
        if Int(length) > TTRPCFrame.maxPayloadLength {
            buffer.moveReaderIndex(forwardBy: TTRPCFrame.headerLength)
            self.skipping = Skipping(streamID: streamID, type: frameType, length: length, remaining: Int(length))
            return self.nextMessage(from: &buffer)
        }
        guard buffer.readableBytes >= TTRPCFrame.headerLength + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: TTRPCFrame.headerLength)
        let payload = buffer.readSlice(length: Int(length))!
        return .frame(TTRPCFrame(streamID: streamID, type: frameType, flags: flags, payload: payload))
    }
}

public struct TTRPCFrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = TTRPCFrame

    public init() {}

    public func encode(data: TTRPCFrame, out: inout ByteBuffer) throws {
        // Callers check sizes and turn them into statuses; reaching this is a bug, but a
        // failed write is a better outcome than a frame the peer will reject.
        guard data.payload.readableBytes <= TTRPCFrame.maxPayloadLength else {
            throw TTRPCError(.resourceExhausted, "frame payload of \(data.payload.readableBytes) bytes exceeds limit")
        }
        data.write(to: &out)
    }
}
