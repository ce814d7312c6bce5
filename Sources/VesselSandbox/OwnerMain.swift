import Foundation
import NIOPosix
import VesselCore
import VesselLinux
import VesselProtocol

/// The sandbox owner as a process, for both front doors: the Task API on a Unix socket until the
/// owner is finished; SIGTERM or SIGINT stop every container and the sandbox.
public enum OwnerMain {
    public enum Listener: Sendable {
        /// The OCI CLI's owner socket.
        case path(String)
        /// containerd's: `start` bound it and handed it down as fd 3.
        case inherited(Int32)
    }

    /// `signals` must come from `Linux.signals([SIGTERM, SIGINT])` taken first thing in main;
    /// `ready` runs once the socket accepts connections.
    public static func run(
        owner: SandboxOwner, listener: Listener, signals: AsyncStream<Int32>, log: RuntimeLog,
        ready: @Sendable () -> Void
    ) async -> Int32 {
        // A fifo whose reader went away must be an EPIPE, not the end of the owner.
        signal(SIGPIPE, SIG_IGN)
        let server = TTRPCServer(services: [TaskService.make(owner)], group: MultiThreadedEventLoopGroup.singleton)
        do {
            switch listener {
            case .path(let path): try await server.bind(unixPath: path)
            case .inherited(let fd): try await server.bind(channelFromFD: fd)
            }
        } catch {
            log.error("sandbox owner: cannot listen: \(error)")
            await owner.shutdown()
            return 1
        }
        ready()
        let terminator = Task {
            for await signal in signals {
                log.info("sandbox owner: signal \(signal), stopping the sandbox")
                await owner.terminate()
                return
            }
        }
        await owner.finished()
        terminator.cancel()
        await server.close()
        return 0
    }
}

extension SandboxOwner {
    /// Everything still running is killed, then the sandbox goes.
    func terminate() async {
        if let agent {
            for id in containers.keys.sorted() { try? await agent.signal(id, "", signal: SIGKILL) }
        }
        await shutdown()
    }
}
