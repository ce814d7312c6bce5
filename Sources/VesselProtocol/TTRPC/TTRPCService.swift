import SwiftProtobuf
import Synchronization

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// A named set of unary methods, e.g. "grpc.AgentService".
public final class TTRPCService: Sendable {
    /// Handlers are erased to serialized bytes in and out, so the server never sees message types.
    typealias Method = @Sendable (Data) async throws -> Data

    public let name: String
    private let methods = Mutex<[String: Method]>([:])

    public init(name: String) {
        self.name = name
    }

    /// Registers (or replaces) `method`. A request payload that does not decode as `Req`
    /// is answered with InvalidArgument without calling `handler`.
    public func register<Req: SwiftProtobuf.Message, Resp: SwiftProtobuf.Message>(
        _ method: String,
        _ handler: @escaping @Sendable (Req) async throws -> Resp
    ) {
        let qualified = "\(self.name)/\(method)"
        let erased: Method = { payload in
            let request: Req
            do {
                request = try Req(serializedBytes: payload)
            } catch {
                throw TTRPCError(.invalidArgument, "\(qualified): cannot decode \(Req.protoMessageName): \(error)")
            }
            let response = try await handler(request)
            do {
                return try response.serializedBytes()
            } catch {
                throw TTRPCError(.internal, "\(qualified): cannot encode \(Resp.protoMessageName): \(error)")
            }
        }
        self.methods.withLock { $0[method] = erased }
    }

    func method(_ name: String) -> Method? {
        self.methods.withLock { $0[name] }
    }
}
