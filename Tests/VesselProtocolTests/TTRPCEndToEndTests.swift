import Foundation
import NIOCore
import NIOPosix
import SwiftProtobuf
import Testing
import VesselLinux
import VesselTestSupport

@testable import VesselProtocol

/// Real client and server over a Unix socket in a temporary directory.
@Suite("ttrpc over a Unix socket", .timeLimit(.minutes(1)))
struct TTRPCEndToEndTests {
    private struct Fixture {
        let group: MultiThreadedEventLoopGroup
        let server: TTRPCServer
        let client: TTRPCClient
        let recorder: Recorder
        let directory: String
        let socketPath: String

        func tearDown() async throws {
            await self.client.close()
            await self.server.close()
            try await self.group.shutdownGracefully()
            try? FileManager.default.removeItem(atPath: self.directory)
        }
    }

    private func withFixture(_ body: (Fixture) async throws -> Void) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let recorder = Recorder()
        let directory = try temporaryDirectory("vessel-ttrpc")
        let socketPath = directory + "/ttrpc.sock"
        let server = TTRPCServer(services: [makeTestService(recorder)], group: group)
        try await server.bind(unixPath: socketPath)
        let client = try await TTRPCClient.connect(unixPath: socketPath, group: group)
        let fixture = Fixture(
            group: group,
            server: server,
            client: client,
            recorder: recorder,
            directory: directory,
            socketPath: socketPath
        )
        do {
            try await body(fixture)
        } catch {
            try? await fixture.tearDown()
            throw error
        }
        try await fixture.tearDown()
    }

    @Test func echoRoundTrip() async throws {
        try await self.withFixture { f in
            let reply = try await f.client.call(
                service: "test.Service",
                method: "Echo",
                request: Google_Protobuf_StringValue("hello"),
                as: Google_Protobuf_StringValue.self
            )
            #expect(reply.value == "hello")
        }
    }

    @Test func manyConcurrentCallsAreMatchedByStreamID() async throws {
        try await self.withFixture { f in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<200 {
                    group.addTask {
                        let reply: Google_Protobuf_StringValue = try await f.client.call(
                            service: "test.Service",
                            method: i % 2 == 0 ? "Echo" : "Slow",
                            request: Google_Protobuf_StringValue(i % 2 == 0 ? "\(i)" : "\(i % 7)")
                        )
                        #expect(reply.value == (i % 2 == 0 ? "\(i)" : "\(i % 7)"))
                    }
                }
                try await group.waitForAll()
            }
        }
    }

    @Test func slowCallDoesNotBlockFastCall() async throws {
        try await self.withFixture { f in
            async let slow: Google_Protobuf_StringValue = f.client.call(
                service: "test.Service",
                method: "Slow",
                request: Google_Protobuf_StringValue("5000")
            )
            #expect(await f.recorder.waitFor("slow started 5000"))
            let fast: Google_Protobuf_StringValue = try await f.client.call(
                service: "test.Service",
                method: "Echo",
                request: Google_Protobuf_StringValue("fast")
            )
            #expect(fast.value == "fast")
            // The condition itself, not a time a loaded debug build may overrun: the fast answer
            // came while the slow call was still running.
            #expect(!f.recorder.contains("slow finished 5000"))
            #expect(try await slow.value == "5000")
        }
    }

    @Test func timeoutGivesDeadlineExceededAndCancelsServerHandler() async throws {
        try await self.withFixture { f in
            let clock = ContinuousClock()
            let start = clock.now
            await expectCode(.deadlineExceeded) {
                let _: Google_Protobuf_StringValue = try await f.client.call(
                    service: "test.Service",
                    method: "Slow",
                    request: Google_Protobuf_StringValue("30000"),
                    timeout: .milliseconds(200)
                )
            }
            #expect(clock.now - start < .seconds(5))
            // The request carried timeout_nano, so the server cancels its handler too.
            #expect(await f.recorder.waitFor("slow cancelled 30000"))
            // A late server-side DeadlineExceeded for the abandoned stream must not confuse later calls.
            let reply: Google_Protobuf_StringValue = try await f.client.call(
                service: "test.Service",
                method: "Echo",
                request: Google_Protobuf_StringValue("after")
            )
            #expect(reply.value == "after")
        }
    }

    @Test func serverErrorsArriveAsTTRPCError() async throws {
        try await self.withFixture { f in
            await expectCode(.notFound) {
                let _: Google_Protobuf_Empty = try await f.client.call(
                    service: "test.Service",
                    method: "Fail",
                    request: Google_Protobuf_Empty()
                )
            }
            await expectCode(.unimplemented) {
                let _: Google_Protobuf_Empty = try await f.client.call(
                    service: "test.Service",
                    method: "Missing",
                    request: Google_Protobuf_Empty()
                )
            }
            await expectCode(.unimplemented) {
                let _: Google_Protobuf_Empty = try await f.client.call(
                    service: "other.Service",
                    method: "Echo",
                    request: Google_Protobuf_Empty()
                )
            }
            await expectCode(.resourceExhausted) {
                let _: Google_Protobuf_StringValue = try await f.client.call(
                    service: "test.Service",
                    method: "Big",
                    request: Google_Protobuf_Empty()
                )
            }
        }
    }

    @Test func tooLargeRequestFailsLocallyWithoutBreakingConnection() async throws {
        try await self.withFixture { f in
            await expectCode(.resourceExhausted) {
                let _: Google_Protobuf_StringValue = try await f.client.call(
                    service: "test.Service",
                    method: "Echo",
                    request: Google_Protobuf_StringValue(String(repeating: "y", count: TTRPCFrame.maxPayloadLength))
                )
            }
            let reply: Google_Protobuf_StringValue = try await f.client.call(
                service: "test.Service",
                method: "Echo",
                request: Google_Protobuf_StringValue("fine")
            )
            #expect(reply.value == "fine")
        }
    }

    @Test func cancellingTheCallerFailsWithCancelled() async throws {
        try await self.withFixture { f in
            let call = Task {
                let _: Google_Protobuf_StringValue = try await f.client.call(
                    service: "test.Service",
                    method: "Slow",
                    request: Google_Protobuf_StringValue("20000")
                )
            }
            #expect(await f.recorder.waitFor("slow started 20000"))
            call.cancel()
            await expectCode(.cancelled) { try await call.value }
        }
    }

    @Test func serverCloseFailsPendingAndLaterCallsWithUnavailable() async throws {
        try await self.withFixture { f in
            let pending = Task {
                let _: Google_Protobuf_StringValue = try await f.client.call(
                    service: "test.Service",
                    method: "Slow",
                    request: Google_Protobuf_StringValue("20001")
                )
            }
            #expect(await f.recorder.waitFor("slow started 20001"))
            await f.server.close()
            await expectCode(.unavailable) { try await pending.value }
            #expect(await f.recorder.waitFor("slow cancelled 20001"))
            await expectCode(.unavailable) {
                let _: Google_Protobuf_Empty = try await f.client.call(
                    service: "test.Service",
                    method: "Echo",
                    request: Google_Protobuf_Empty()
                )
            }
            // The listener is gone too.
            await #expect(throws: (any Error).self) {
                _ = try await TTRPCClient.connect(unixPath: f.socketPath, group: f.group)
            }
        }
    }

    @Test func bindReplacesStaleSocketFile() async throws {
        try await self.withFixture { f in
            await f.server.close()
            // The closed listener leaves its socket file behind; a new server must still bind.
            let again = TTRPCServer(services: [makeTestService(f.recorder)], group: f.group)
            try await again.bind(unixPath: f.socketPath)
            let client = try await TTRPCClient.connect(unixPath: f.socketPath, group: f.group)
            let reply: Google_Protobuf_StringValue = try await client.call(
                service: "test.Service",
                method: "Echo",
                request: Google_Protobuf_StringValue("again")
            )
            #expect(reply.value == "again")
            await client.close()
            await again.close()
        }
    }

    @Test func connectedSocketClient() async throws {
        try await self.withFixture { f in
            let fd = try Linux.connectUnix(f.socketPath)
            let client = try await TTRPCClient.connect(connectedSocket: fd, group: f.group)
            let reply: Google_Protobuf_StringValue = try await client.call(
                service: "test.Service",
                method: "Echo",
                request: Google_Protobuf_StringValue("fd")
            )
            #expect(reply.value == "fd")
            await client.close()
        }
    }
}
