import FuzzSupport
import NIOCore
import NIOEmbedded
import SwiftProtobuf

@testable import VesselProtocol

// Both ends of a ttrpc connection fed a hostile byte stream. Byte 0: bit 0 picks the side (server:
// requests reach dispatch through a registered service; client: calls are pending and the bytes are
// the peer's responses, as the agent's are to the host), bits 1-7 the read size the stream arrives
// in (0: all at once), so frames are split across reads at every offset.

let service: TTRPCService = {
    let service = TTRPCService(name: "fuzz.Service")
    service.register("Echo") { (request: Google_Protobuf_StringValue) in request }
    service.register("Fail") { (_: Google_Protobuf_Empty) -> Google_Protobuf_Empty in
        throw TTRPCError(.notFound, "no such thing")
    }
    // Real agent messages, so their decoders see fuzzed payloads from dispatch.
    service.register("CreateContainer") { (request: Grpc_CreateContainerRequest) in
        Google_Protobuf_StringValue(request.containerID)
    }
    service.register("ExecProcess") { (request: Grpc_ExecProcessRequest) in
        Google_Protobuf_StringValue(request.execID)
    }
    return service
}()

/// What the frame decoder makes of the whole stream at once; the pipeline must agree, however
/// the stream is cut into reads.
func decodeAll(_ bytes: [UInt8]) -> [TTRPCInboundMessage] {
    var decoder = TTRPCFrameDecoder()
    var buffer = ByteBuffer(bytes: bytes)
    var out: [TTRPCInboundMessage] = []
    while let message = decoder.nextMessage(from: &buffer) {
        if case .frame(let frame) = message {
            fuzzCheck(frame.payload.readableBytes <= TTRPCFrame.maxPayloadLength, "frame over the limit")
            // A decoded frame re-encodes to the same length it took from the stream.
            var encoded = ByteBuffer()
            frame.write(to: &encoded)
            fuzzCheck(encoded.readableBytes == TTRPCFrame.headerLength + frame.payload.readableBytes, "re-encoding")
        }
        out.append(message)
    }
    fuzzCheck(
        buffer.readableBytes < TTRPCFrame.headerLength || decoder.nextMessage(from: &buffer) == nil,
        "decoder stopped with a whole header left")
    return out
}

func feed(_ channel: NIOAsyncTestingChannel, _ stream: [UInt8], readSize: Int) async throws {
    var offset = 0
    while offset < stream.count {
        let n = readSize == 0 ? stream.count : min(readSize, stream.count - offset)
        try await channel.writeInbound(ByteBuffer(bytes: stream[offset..<offset + n]))
        offset += n
    }
}

/// Every write is one whole response frame carrying a decodable `Ttrpc_Response`.
func responses(_ channel: NIOAsyncTestingChannel) async throws -> [(UInt32, Ttrpc_Response)] {
    var out: [(UInt32, Ttrpc_Response)] = []
    while var bytes = try await channel.readOutbound(as: ByteBuffer.self) {
        var decoder = TTRPCFrameDecoder()
        guard case .frame(let frame) = decoder.nextMessage(from: &bytes), bytes.readableBytes == 0 else {
            fuzzCheck(false, "server wrote something that is not one whole frame")
            return out
        }
        fuzzCheck(frame.type == .response, "server wrote a \(frame.type) frame")
        let response = try Ttrpc_Response(serializedBytes: Array(buffer: frame.payload))
        out.append((frame.streamID, response))
    }
    return out
}

/// Weak references to a connection's handler and channel, to tell whether they outlive it: the
/// leak check for this target (libFuzzer's own cannot tell here: the handlers' Tasks and NIO's
/// test loop free memory on other threads after an input returns, so it is off for ttrpc).
final class Survivors: @unchecked Sendable {
    // @unchecked: set on the channel's loop before the input ends, read after everything finished.
    weak var handler: AnyObject?
    weak var channel: AnyObject?
}

func fuzzServer(_ stream: [UInt8], readSize: Int, survivors: Survivors) async throws {
    let tasks = TTRPCHandlerTasks()
    let channel = try await NIOAsyncTestingChannel { channel in
        try TTRPCServer.addHandlers(
            to: channel.pipeline.syncOperations, services: [service.name: service],
            tasks: tasks)
        survivors.handler = try channel.pipeline.syncOperations.handler(type: TTRPCServerHandler.self)
    }
    survivors.channel = channel
    try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
    try await feed(channel, stream, readSize: readSize)
    // Handlers run in Tasks that answer through the loop: wait for them, then run what they queued.
    await tasks.drain()
    await channel.testingEventLoop.run()

    let expected = decodeAll(stream).filter {
        switch $0 {
        case .frame(let frame): frame.type == .request
        case .oversized: true
        }
    }
    let answered = try await responses(channel)
    // Deadlines are on the loop's virtual clock, which never moves here: every request is answered
    // once, by its handler or with an error, and nothing else is sent.
    fuzzCheck(answered.count == expected.count, "\(expected.count) requests, \(answered.count) responses")
    for ((id, _), message) in zip(answered.sorted { $0.0 < $1.0 }, expected.map(streamID).sorted()) {
        fuzzCheck(id == message, "response on stream \(id), no request there")
    }
    fuzzCheck(channel.isActive, "the server closed the connection over bad input")
    try await channel.close()
    await tasks.drain()
    await channel.testingEventLoop.shutdownGracefully()
}

func streamID(_ message: TTRPCInboundMessage) -> UInt32 {
    switch message {
    case .frame(let frame): frame.streamID
    case .oversized(let id, _, _): id
    }
}

func fuzzClient(_ stream: [UInt8], readSize: Int, calls: Int, survivors: Survivors) async throws {
    let channel = try await NIOAsyncTestingChannel { channel in
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(TTRPCFrameDecoder()))
        try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(TTRPCFrameEncoder()))
        let handler = TTRPCClientHandler()
        try channel.pipeline.syncOperations.addHandler(handler)
        survivors.handler = handler
    }
    survivors.channel = channel
    try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
    var futures: [EventLoopFuture<Ttrpc_Response>] = []
    let request =
        try Ttrpc_Request.with {
            $0.service = AgentAPI.waitProcess.service
            $0.method = AgentAPI.waitProcess.name
        }
        .serializedBytes() as [UInt8]
    for call in 0..<calls {
        let promise = channel.eventLoop.makePromise(of: Ttrpc_Response.self)
        try await channel.testingEventLoop.executeInContext {
            try channel.pipeline.syncOperations.handler(type: TTRPCClientHandler.self)
                .start(request, promise: promise, timeout: call == 0 ? .seconds(1) : nil)
        }
        futures.append(promise.futureResult)
    }
    while try await channel.readOutbound(as: ByteBuffer.self) != nil {}
    try await feed(channel, stream, readSize: readSize)
    await channel.testingEventLoop.advanceTime(by: .seconds(2))
    try await channel.close()
    // Every call is over once the connection is: a response, its deadline or the close.
    for future in futures {
        guard let response = try? await future.get() else { continue }
        if response.status.code != TTRPCCode.ok.rawValue {
            _ = TTRPCError(status: response.status).description
        } else {
            // What the host's agent client decodes from the guest.
            _ = try? Grpc_WaitProcessResponse(serializedBytes: response.payload)
            _ = try? Grpc_StatsContainerResponse(serializedBytes: response.payload)
            _ = try? Grpc_ReadStreamResponse(serializedBytes: response.payload)
            _ = try? Grpc_GuestDetailsResponse(serializedBytes: response.payload)
        }
    }
    await channel.testingEventLoop.shutdownGracefully()
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let mode = input.u8()
    let stream = input.rest()
    let survivors = Survivors()
    runBlocking {
        do {
            if mode & 1 == 0 {
                try await fuzzServer(stream, readSize: Int(mode >> 1), survivors: survivors)
            } else {
                try await fuzzClient(
                    stream, readSize: Int(mode >> 2), calls: 1 + Int(mode >> 1 & 1) * 3,
                    survivors: survivors)
            }
        } catch {
            fuzzCheck(false, "test channel failed: \(error)")
        }
    }
    fuzzCheck(survivors.handler == nil, "the connection's handler outlived it (a reference cycle)")
    fuzzCheck(survivors.channel == nil, "the channel outlived its connection (a reference cycle)")
    return 0
}
