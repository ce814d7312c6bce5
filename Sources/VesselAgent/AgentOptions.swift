/// How the agent runs: from the command line on a host, from `agent.*` kernel options in a guest.
public struct AgentOptions: Sendable {
    public enum ServerAddress: Sendable, Equatable {
        case unix(String)
        case vsock(port: UInt32)
    }

    public var serverAddress = ServerAddress.vsock(port: 1024)
    /// Where the host dials a process's stdio streams (`StdioStreams`): vsock port 1025 in the
    /// guest (`agent.stdio_vport`), `--stdio-addr unix:///path` on a host (none without it: a
    /// host's vsock is not ours to listen on).
    public var stdioAddress: ServerAddress?
    /// The sandbox's run area: CopyFile writes only below it.
    public var runDirectory = "/run/kata-containers"
    public var logLevel = "info"
    /// Host mode: an ordinary process on someone's machine, not the guest's init; refuses what
    /// would change the host (the clock).
    public var hostMode = true
    /// Guest only (kernel command line): Kata's names.
    public var debugConsole = false
    public var debugConsolePort: UInt32 = 1026
    public var logPort: UInt32?
    public var containerPipeSize: Int?
    public var hotplugTimeout = 3
    /// Containers enter their root with MS_MOVE + chroot instead of pivot_root (runc's --no-pivot).
    /// Forced on when "/" is the initramfs, where pivot_root fails; `--no-pivot` or
    /// `agent.no_pivot` ask for it anywhere.
    public var noPivot = false
    /// `agent.selftest=crash,poweroff`: what the boot test asks of PID 1 before the host can reach
    /// the agent (a crashing child must be reaped; a power-off request must end QEMU cleanly).
    public var selftest: [String] = []

    public init() {}

    /// `unix:///path/agent.sock` or `vsock://-1:1024`, as Kata's `agent.server_addr`.
    public static func parseServerAddress(_ text: String) throws -> ServerAddress {
        if text.hasPrefix("unix://") {
            let path = String(text.dropFirst("unix://".count))
            guard path.hasPrefix("/") else { throw AgentError.invalidArgument("server address \(text): unix path must be absolute") }
            return .unix(path)
        }
        if text.hasPrefix("vsock://"), let colon = text.lastIndex(of: ":"), let port = UInt32(text[text.index(after: colon)...]) {
            return .vsock(port: port)
        }
        throw AgentError.invalidArgument("server address \(text): expected unix:///path or vsock://-1:PORT")
    }

    /// Parses `--server-addr X --stdio-addr X --run-dir X --log-level X --no-pivot`.
    public static func parse(_ arguments: [String]) throws -> AgentOptions {
        var options = AgentOptions()
        var rest = arguments[...]
        while let flag = rest.popFirst() {
            if flag == "--no-pivot" {
                options.noPivot = true
                continue
            }
            guard let value = rest.popFirst() else { throw AgentError.invalidArgument("\(flag) needs a value") }
            switch flag {
            case "--server-addr": options.serverAddress = try parseServerAddress(value)
            case "--stdio-addr":
                guard case .unix(let path) = try parseServerAddress(value) else {
                    throw AgentError.invalidArgument("--stdio-addr \(value): expected unix:///path")
                }
                options.stdioAddress = .unix(path)
            case "--run-dir": options.runDirectory = value
            case "--log-level": options.logLevel = value
            default: throw AgentError.invalidArgument("unknown option \(flag)")
            }
        }
        return options
    }
}
