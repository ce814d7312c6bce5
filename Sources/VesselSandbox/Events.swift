import Foundation
import NIOPosix
import SwiftProtobuf
import VesselCore
import VesselLinux
import VesselProtocol

/// Task events for containerd, in the order they happen: one queue, one sender. containerd 1.6
/// takes them over ttrpc (Events/Forward on TTRPC_ADDRESS); the OCI CLI has no event sink.
final class EventSink: Sendable {
    enum Topic: String {
        case create = "/tasks/create", start = "/tasks/start", oom = "/tasks/oom", exit = "/tasks/exit"
        case delete = "/tasks/delete", execAdded = "/tasks/exec-added", execStarted = "/tasks/exec-started"
        case paused = "/tasks/paused", resumed = "/tasks/resumed"
    }

    private struct Envelope: Sendable {
        var topic: Topic
        var event: Google_Protobuf_Any
        var time: Date
    }

    private let queue: AsyncStream<Envelope>.Continuation?
    private let sender: Task<Void, Never>?

    static let none = EventSink()

    private init() {
        queue = nil
        sender = nil
    }

    init(ttrpcAddress: String, namespace: String, log: RuntimeLog) {
        let (stream, continuation) = AsyncStream.makeStream(of: Envelope.self)
        queue = continuation
        sender = Task {
            var client: TTRPCClient?
            for await envelope in stream {
                let request = Containerd_Services_Events_Ttrpc_V1_ForwardRequest.with {
                    $0.envelope = .with {
                        $0.timestamp = Google_Protobuf_Timestamp(date: envelope.time)
                        $0.namespace = namespace
                        $0.topic = envelope.topic.rawValue
                        $0.event = envelope.event
                    }
                }
                // containerd's own publisher retries five times, redialling a closed connection.
                for attempt in 1...5 {
                    do {
                        if client == nil {
                            client = try await TTRPCClient.connect(
                                unixPath: Self.path(ttrpcAddress), group: MultiThreadedEventLoopGroup.singleton)
                        }
                        _ = try await client!.call(
                            EventsAPI.forward, request, timeout: .seconds(5),
                            metadata: [EventsAPI.namespaceKey: namespace])
                        break
                    } catch {
                        if let failed = client { await failed.close() }
                        client = nil
                        if attempt == 5 {
                            log.warning("event \(envelope.topic.rawValue) not delivered to containerd: \(error)")
                        } else {
                            try? await Task.sleep(for: .seconds(attempt))
                        }
                    }
                }
            }
            await client?.close()
        }
    }

    private static func path(_ address: String) -> String {
        address.hasPrefix("unix://") ? String(address.dropFirst(7)) : address
    }

    func publish(_ topic: Topic, _ event: some SwiftProtobuf.Message) {
        guard let queue, let any = try? Google_Protobuf_Any(bareTypeOf: event) else { return }
        queue.yield(Envelope(topic: topic, event: any, time: Date()))
    }

    /// Sends what is queued (bounded by the sender's retries), then stops.
    func flush() async {
        queue?.finish()
        await sender?.value
    }
}
