import Logging
import Synchronization
import NIOCore
import NIOPosix
import VesselLinux
import VesselProtocol
#if canImport(Glibc)
import Glibc
#endif

/// Runs the agent: the ttrpc server over the sandbox.
public enum Agent {
    /// Parses the options, runs the agent until SIGTERM/SIGINT and exits; errors are one line.
    public static func main(_ arguments: [String]) -> Never {
        let done = Condition()
        let result = Mutex<Int32?>(nil)
        Task.detached {
            var status: Int32 = 0
            do {
                try await run(try AgentOptions.parse(arguments))
            } catch {
                printError("vessel-agent: \(error)")
                status = 1
            }
            result.withLock { $0 = status }
            done.signal()
        }
        done.wait { result.withLock { $0 } != nil }
        exit(result.withLock { $0 } ?? 1)
    }

    public static func run(_ options: AgentOptions) async throws {
        let terminationSignals = blockTerminationSignals()
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = Logger.Level(rawValue: options.logLevel) ?? .info
            return handler
        }
        let logger = Logger(label: "vessel-agent")
        // Helpers are this very binary: keep an fd so a replaced or deleted file cannot matter.
        let exeFD = try Linux.open("/proc/self/exe", O_RDONLY)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let pool = NIOThreadPool(numberOfThreads: 4)
        pool.start()
        _ = Reaper.shared
        let sandbox = Sandbox(options: options, launcher: Launcher(exeFD: exeFD, group: group, pool: pool, logger: logger), logger: logger)
        let server = TTRPCServer(services: AgentService.make(sandbox, options: options), group: group)
        switch options.serverAddress {
        case .unix(let path): try await server.bind(unixPath: path)
        case .vsock(let port): try await server.bind(vsockPort: port)
        }
        logger.info("vessel-agent listening on \(options.serverAddress)")
        await waitForTermination(terminationSignals)
        logger.info("vessel-agent stopping")
        await sandbox.destroySandbox()
        await server.close()
    }

    /// SIGTERM/SIGINT end the agent after its containers are removed. They are blocked before any
    /// thread exists (so every thread inherits the mask) and taken with sigwait on a thread of their own.
    private static func blockTerminationSignals() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        return set
    }

    private static func waitForTermination(_ set: sigset_t) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            var thread = pthread_t()
            let box = Unmanaged.passRetained(SignalWait(set: set, continuation: continuation)).toOpaque()
            pthread_create(&thread, nil, { arg in
                let wait = Unmanaged<SignalWait>.fromOpaque(arg!).takeRetainedValue()
                var set = wait.set
                var signal: Int32 = 0
                sigwait(&set, &signal)
                wait.continuation.resume()
                return nil
            }, box)
            pthread_detach(thread)
        }
    }
}

private final class SignalWait {
    let set: sigset_t
    let continuation: CheckedContinuation<Void, Never>
    init(set: sigset_t, continuation: CheckedContinuation<Void, Never>) {
        self.set = set
        self.continuation = continuation
    }
}

/// One line on standard error, without touching the C `stderr` global from concurrent code.
func printError(_ line: String) {
    try? Linux.writeAll(2, Array((line + "\n").utf8))
}
