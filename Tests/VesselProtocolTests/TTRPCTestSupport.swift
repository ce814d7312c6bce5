import Foundation
import NIOCore
import NIOEmbedded
import SwiftProtobuf
import Synchronization
import Testing
import VesselTestSupport

@testable import VesselProtocol

/// A thread-safe bag of facts handlers report to tests.
final class Recorder: Sendable {
    private let events = Mutex<[String]>([])

    func record(_ event: String) { self.events.withLock { $0.append(event) } }
    func contains(_ event: String) -> Bool { self.events.withLock { $0.contains(event) } }

    /// Polls because handlers run in their own Tasks and finish asynchronously.
    func waitFor(_ event: String, timeout: Double = 5) async -> Bool {
        await waitUntil(timeout: timeout, every: 0.01) { self.contains(event) }
    }
}

struct PlainError: Error, CustomStringConvertible {
    var description: String { "plain failure" }
}

/// Service "test.Service": Echo, Slow (sleeps the number of milliseconds in the request),
/// Fail (NotFound), Plain (a non-ttrpc error) and Big (a response over the frame limit).
func makeTestService(_ recorder: Recorder) -> TTRPCService {
    let service = TTRPCService(name: "test.Service")
    service.register("Echo") { (request: Google_Protobuf_StringValue) in request }
    service.register("Slow") { (request: Google_Protobuf_StringValue) -> Google_Protobuf_StringValue in
        recorder.record("slow started \(request.value)")
        do {
            try await Task.sleep(for: .milliseconds(Int(request.value) ?? 0))
        } catch {
            recorder.record("slow cancelled \(request.value)")
            throw error
        }
        recorder.record("slow finished \(request.value)")
        return request
    }
    service.register("Fail") { (_: Google_Protobuf_Empty) -> Google_Protobuf_Empty in throw TTRPCError(.notFound, "no such thing") }
    service.register("Plain") { (_: Google_Protobuf_Empty) -> Google_Protobuf_Empty in throw PlainError() }
    service.register("Big") { (_: Google_Protobuf_Empty) in
        Google_Protobuf_StringValue(String(repeating: "x", count: TTRPCFrame.maxPayloadLength + 1))
    }
    return service
}

func frameBytes(streamID: UInt32, type: UInt8, flags: UInt8 = 0, payload: [UInt8]) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.writeInteger(UInt32(payload.count))
    buffer.writeInteger(streamID)
    buffer.writeInteger(type)
    buffer.writeInteger(flags)
    buffer.writeBytes(payload)
    return buffer
}

func requestFrame(
    streamID: UInt32,
    service: String = "test.Service",
    method: String,
    payload: [UInt8],
    timeoutNano: Int64 = 0
) throws -> ByteBuffer {
    var request = Ttrpc_Request()
    request.service = service
    request.method = method
    request.payload = Data(payload)
    request.timeoutNano = timeoutNano
    return frameBytes(streamID: streamID, type: 1, payload: try request.serializedBytes())
}

func requestFrame(
    streamID: UInt32,
    service: String = "test.Service",
    method: String,
    message: some SwiftProtobuf.Message,
    timeoutNano: Int64 = 0
) throws -> ByteBuffer {
    try requestFrame(
        streamID: streamID,
        service: service,
        method: method,
        payload: message.serializedBytes(),
        timeoutNano: timeoutNano
    )
}

/// A server connection pipeline on a thread-safe test channel (handlers run in Tasks that
/// hop back to the loop from other threads, which plain EmbeddedChannel does not allow).
func makeServerConnection(_ services: [TTRPCService]) async throws -> NIOAsyncTestingChannel {
    let byName = Dictionary(uniqueKeysWithValues: services.map { ($0.name, $0) })
    let channel = try await NIOAsyncTestingChannel { channel in
        try TTRPCServer.addHandlers(to: channel.pipeline.syncOperations, services: byName)
    }
    // Makes the channel active, so tests can tell whether the server closed it.
    try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
    return channel
}

struct DecodedResponse {
    var streamID: UInt32
    var response: Ttrpc_Response
    var code: TTRPCCode? { TTRPCCode(rawValue: self.response.status.code) }
}

func nextResponse(_ channel: NIOAsyncTestingChannel) async throws -> DecodedResponse {
    var buffer = try await channel.waitForOutboundWrite(as: ByteBuffer.self)
    var decoder = TTRPCFrameDecoder()
    guard case .frame(let frame) = decoder.nextMessage(from: &buffer) else {
        throw TTRPCError(.internal, "server wrote something that is not a whole frame")
    }
    guard frame.type == .response, buffer.readableBytes == 0 else {
        throw TTRPCError(.internal, "unexpected frame \(frame.type) or trailing bytes")
    }
    return DecodedResponse(
        streamID: frame.streamID,
        response: try Ttrpc_Response(serializedBytes: Array(buffer: frame.payload))
    )
}

/// Deterministic PRNG so fuzz failures reproduce.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Expects `body` to fail with a ttrpc error of `code`.
func expectCode(_ code: TTRPCCode, sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void) async {
    do {
        try await body()
        Issue.record("expected \(code), call succeeded", sourceLocation: sourceLocation)
    } catch let error as TTRPCError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected TTRPCError \(code), got \(error)", sourceLocation: sourceLocation)
    }
}
