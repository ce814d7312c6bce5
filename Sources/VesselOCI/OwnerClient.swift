import NIOPosix
import VesselCore
import VesselLinux
import VesselProtocol

/// The OCI CLI's connection to a sandbox owner: containerd's Task API over the owner's socket.
/// The owner's error messages (runc's wording) come back as the one line the CLI prints.
struct OwnerClient: Sendable {
    let ttrpc: TTRPCClient
    let paths: SandboxPaths

    static func connect(_ paths: SandboxPaths) async throws(RuntimeError) -> OwnerClient {
        do {
            let ttrpc = try await TTRPCClient.connect(unixPath: paths.ownerSocket, group: MultiThreadedEventLoopGroup.singleton)
            return OwnerClient(ttrpc: ttrpc, paths: paths)
        } catch {
            throw RuntimeError("sandbox \(paths.id) is not running (its owner does not answer: \(error))", kind: .unavailable)
        }
    }

    /// `timeout` nil: as long as it takes (Wait, Create while a guest boots).
    func call<Req, Resp>(
        _ method: TTRPCMethod<Req, Resp>, _ request: Req, timeout: Duration? = .seconds(120)
    ) async throws(RuntimeError)
        -> Resp
    {
        do {
            return try await ttrpc.call(method, request, timeout: timeout)
        } catch let error as TTRPCError {
            let kind: RuntimeError.Kind =
                switch error.code {
                case .notFound: .notFound
                case .alreadyExists: .alreadyExists
                case .failedPrecondition: .failedPrecondition
                case .invalidArgument: .invalidArgument
                case .unavailable: .unavailable
                default: .failed
                }
            // The connection itself broke: the owner died mid-call.
            if error.code == .unavailable && !ttrpc.isActive {
                throw RuntimeError("the owner of sandbox \(paths.id) exited during \(method.name)", kind: .unavailable)
            }
            throw RuntimeError(error.message, kind: kind)
        } catch {
            throw RuntimeError("\(method.name): \(error)")
        }
    }

    func close() async { await ttrpc.close() }

    /// Runs `body` with a connection to the owner of `record`'s sandbox.
    static func with<T: Sendable>(
        _ store: StateStore, _ record: ContainerRecord,
        _ body: (OwnerClient) async throws(RuntimeError) -> T
    ) async throws(RuntimeError) -> T {
        let client = try await connect(store.sandboxPaths(record.sandbox))
        do {
            let result = try await body(client)
            await client.close()
            return result
        } catch {
            await client.close()
            throw error
        }
    }
}
