import Logging
import NIOCore
import NIOPosix
import Synchronization
import VesselLinux
import VesselProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// Runs the agent: the ttrpc server over the sandbox.
public enum Agent {
    /// Runs the agent until SIGTERM/SIGINT (or, in the guest, DestroySandbox) and exits; errors are
    /// one line. As PID 1 it first sets up the guest, takes its options from the kernel command
    /// line, and powers the VM off at the end instead of exiting.
    public static func main(_ arguments: [String]) -> Never {
        let guest = getpid() == 1
        let status = Linux.runMain(takingSignals: [SIGTERM, SIGINT, SIGUSR1]) { signals in
            do {
                try await run(guest ? guestOptions() : try AgentOptions.parse(arguments), signals: signals)
                return 0
            } catch {
                printError("vessel-agent: \(error)")
                return 1
            }
        }
        if guest {
            LogForwarder.shared.flush(seconds: 1)
            GuestInit.powerOff(log: printError)
        }
        exit(status)
    }

    private static func guestOptions() -> AgentOptions {
        GuestInit.setup(log: printError)
        let (options, unknown) = GuestInit.options(cmdline: (try? Linux.readFile("/proc/cmdline")) ?? "")
        for word in unknown { printError("vessel-agent: unknown kernel option \(word) ignored") }
        return options
    }

    /// `signals`: SIGTERM, SIGINT and SIGUSR1 as `Linux.runMain` takes them.
    public static func run(_ options: AgentOptions, signals: AsyncStream<Int32>?) async throws {
        var options = options
        let forwardLogs = options.logPort != nil && !options.hostMode
        if let port = options.logPort, forwardLogs {
            LogForwarder.shared.start(port: port)
        } else {
            LogForwarder.shared.disable()
        }
        let level = Logger.Level(rawValue: options.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var console = StreamLogHandler.standardError(label: label)
            console.logLevel = level
            guard forwardLogs else { return console }
            return MultiplexLogHandler([console, ForwardingLogHandler(label: label, logLevel: level)])
        }
        let logger = Logger(label: "vessel-agent")
        // At boot PID 1 moved itself onto a tmpfs root (CVessel's switch_to_tmpfs_root); only if
        // that failed is "/" still the initramfs, where pivot_root cannot work.
        if !options.noPivot && GuestInit.rootIsInitramfs() {
            options.noPivot = true
            logger.info("/ is the initramfs: containers enter their root with MS_MOVE and chroot, not pivot_root")
        } else if !options.noPivot {
            logger.info("containers enter their root with pivot_root")
        }
        // Helpers are this very binary: keep an fd so a replaced or deleted file cannot matter.
        let exeFD = try Linux.open("/proc/self/exe", O_RDONLY)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let pool = NIOThreadPool(numberOfThreads: 4)
        pool.start()
        _ = Reaper.shared
        let termination = Termination()
        let stdioStreams = StdioStreams()
        let launcher = Launcher(
            exeFD: exeFD, group: group, pool: pool, logger: logger, noPivot: options.noPivot,
            pipeSize: options.containerPipeSize)
        let sandbox = Sandbox(options: options, launcher: launcher, stdioStreams: stdioStreams, logger: logger)
        let server = TTRPCServer(services: AgentService.make(sandbox, options: options, termination: termination), group: group)
        switch options.serverAddress {
        case .unix(let path): try await server.bind(unixPath: path)
        case .vsock(let port): try await server.bind(vsockPort: port)
        }
        var stdioListener: (any Channel)?
        if let address = options.stdioAddress { stdioListener = try await stdioStreams.listen(address, group: group) }
        var console: (any Channel)?
        if options.debugConsole {
            do {
                console = try await DebugConsole.listen(port: options.debugConsolePort, exeFD: exeFD, group: group)
            } catch {
                logger.error("debug console on vsock port \(options.debugConsolePort): \(error)")
            }
        }
        if options.hostMode {
            logger.info("vessel-agent listening on \(options.serverAddress)")
        } else {
            // The one line the host (and the boot test) waits for on the console.
            printError("vessel-agent ready in \(GuestInit.uptimeMilliseconds) ms (\(GuestInit.residentSummary))")
        }
        if let signals { watch(signals, termination: termination) }
        await SelfTest.run(options.selftest, exeFD: exeFD, termination: termination)
        await termination.wait()
        logger.info("vessel-agent stopping")
        try? await console?.close()
        try? await stdioListener?.close()
        await sandbox.destroySandbox()
        await server.close()
    }

    /// SIGTERM/SIGINT end the agent after its containers are removed; SIGUSR1 logs the agent's RSS.
    private static func watch(_ signals: AsyncStream<Int32>, termination: Termination) {
        Task {
            for await signal in signals {
                if signal == SIGUSR1 {
                    printError("vessel-agent \(GuestInit.residentSummary)")
                    continue
                }
                termination.request()
                return
            }
        }
    }
}

/// One-shot "stop now" for the agent: a signal, DestroySandbox in the guest, or a self-test.
final class Termination: Sendable {
    private let state = Mutex<(requested: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func request() {
        let waiters = state.withLock { s in
            s.requested = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { s in
                if !s.requested { s.waiters.append(continuation) }
                return s.requested
            }
            if done { continuation.resume() }
        }
    }
}

/// `agent.selftest=` for the boot test, until the host can reach the agent over vsock:
/// `crash` starts a child that dies of SIGSEGV (PID 1 must reap it and keep serving), `poweroff`
/// asks for the orderly shutdown DestroySandbox would.
enum SelfTest {
    static func run(_ steps: [String], exeFD: Int32, termination: Termination) async {
        for step in steps {
            switch step {
            case "crash":
                do {
                    let child = try spawn(
                        exeFD: exeFD, arguments: ["vessel-agent", Helper.argument, "crash"], environment: [],
                        fds: [(0, 0), (1, 1), (2, 2)])
                    Reaper.shared.watch(child.pid)
                    let status = await Reaper.shared.wait(child.pid)
                    Reaper.shared.forget(child.pid)
                    printError("vessel-agent selftest: crashing child reaped with status \(status), PID 1 still serving")
                } catch {
                    printError("vessel-agent selftest: \(error)")
                }
            case "poweroff":
                printError("vessel-agent selftest: power-off requested")
                termination.request()
            default:
                printError("vessel-agent selftest: unknown step \(step)")
            }
        }
    }
}

/// One line on standard error, without touching the C `stderr` global from concurrent code, and
/// to the host's log port when there is one.
func printError(_ line: String) {
    try? Linux.writeAll(2, Array((line + "\n").utf8))
    LogForwarder.shared.append(line)
}
