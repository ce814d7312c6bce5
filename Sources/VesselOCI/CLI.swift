import Foundation
import VesselCore
import VesselLinux
import VesselProtocol
import VesselSandbox
import VesselSpec

/// `vessel`: runc's commands and flags, as docker and podman call them. Every command is a client
/// of a sandbox owner (containerd's Task API on the owner's socket); the CLI itself writes no status.
public struct CLI {
    let global: Arguments
    let globalTokens: [String]
    let log: RuntimeLog

    public static let usage = """
        vessel: run OCI containers, each pod in its own lightweight VM (runc-compatible)

        usage: vessel [--root DIR] [--log FILE] [--log-format text|json] [--debug] [--config FILE] COMMAND [ARGS]

        commands:
          create [--bundle DIR] [--console-socket SOCK] [--pid-file FILE] ID
          start ID | state ID | pause ID | resume ID | ps [--format json] ID
          run [--bundle DIR] [--detach] [--console-socket SOCK] [--pid-file FILE] ID
          exec [--tty] [--detach] [--process FILE] [--env K=V] [--cwd DIR] [--user UID[:GID]] ID [COMMAND...]
          kill [--all] ID [SIGNAL]     delete [--force] ID     list [--format json] [--quiet]
          events [--stats] [--interval 5s] ID     update [--resources FILE] [--memory N] [--pids-limit N] ... ID
          features | spec [--bundle DIR] | version
          check                        whether this host can run Vessel, with a remedy per failing line
          env [--json]                 the effective configuration
        """

    /// Global flags come before the command, as with runc.
    static let globalFlags = ["debug", "systemd-cgroup"]
    static let globalOptions = ["root", "log", "log-format", "config", "criu", "rootless"]

    /// Splits argv into the global tokens and the command with its arguments.
    static func split(_ arguments: [String]) -> (global: [String], command: String, rest: [String]) {
        var tokens = Array(arguments.dropFirst())
        var global: [String] = []
        while let first = tokens.first, first.hasPrefix("-"), !["-v", "--version", "-h", "--help"].contains(first) {
            global.append(tokens.removeFirst())
            let name = String(first.drop(while: { $0 == "-" }))
            if globalOptions.contains(name), let value = tokens.first {
                global.append(value)
                tokens.removeFirst()
            }
        }
        return (global, tokens.first ?? "help", Array(tokens.dropFirst()))
    }

    /// The signals the roles that stand in for a process take (`Linux.runMain` blocks them before
    /// any thread exists): monitors forward them, owners stop on them.
    public static func signals(_ arguments: [String]) -> [Int32] {
        let (_, command, rest) = split(arguments)
        switch command {
        case "__shim": return ProcessMonitor.forwardedSignals
        case "exec" where !detaches(rest): return ProcessMonitor.forwardedSignals
        case "__owner": return [SIGTERM, SIGINT]
        case "run": return [SIGTERM]
        default: return []
        }
    }

    /// Whether `exec`'s flags (those before the container id) ask for --detach.
    static func detaches(_ tokens: [String]) -> Bool {
        let valued = Set([
            "console-socket", "cwd", "e", "env", "u", "user", "p", "process", "pid-file", "process-label", "apparmor",
            "c", "cap", "preserve-fds", "cgroup",
        ])
        var index = 0
        while index < tokens.count, tokens[index].hasPrefix("-") {
            let name = String(tokens[index].drop(while: { $0 == "-" }))
            if ["d", "detach", "d=true", "detach=true"].contains(name) { return true }
            index += valued.contains(name) ? 2 : 1
        }
        return false
    }

    /// The whole `vessel` command line; returns the exit status.
    public static func main(_ arguments: [String], signals: AsyncStream<Int32>?) async -> Int32 {
        let (globalTokens, command, rest) = split(arguments)
        do throws(RuntimeError) {
            let global = try Arguments(globalTokens, flags: globalFlags, options: globalOptions)
            guard let format = RuntimeLog.Format(rawValue: global.option("log-format") ?? "text") else {
                throw RuntimeError("invalid log format \"\(global.option("log-format") ?? "")\": use text or json")
            }
            let log = RuntimeLog(path: global.option("log"), format: format, debug: global.flag("debug"))
            do throws(RuntimeError) {
                return try await CLI(global: global, globalTokens: globalTokens, log: log).run(command, rest, signals: signals)
            } catch {
                log.error(error.message)
                return error.exitCode
            }
        } catch {
            FileHandle.standardError.write(Data((error.message + "\n").utf8))
            return 1
        }
    }

    func context() throws(RuntimeError) -> Context {
        let (config, path) = try RuntimeConfig.load(explicit: global.option("config"))
        return Context(
            store: StateStore(root: global.option("root") ?? "/run/vessel"), config: config, configPath: path, log: log,
            globalTokens: globalTokens)
    }

    func run(_ command: String, _ tokens: [String], signals: AsyncStream<Int32>?) async throws(RuntimeError) -> Int32 {
        switch command {
        case "create":
            let a = try Arguments(
                tokens, flags: ["no-pivot", "no-new-keyring"], options: ["b|bundle", "console-socket", "pid-file", "preserve-fds"])
            try warnPreservedFDs(a)
            let pid = try context().create(
                id: try a.id(command), bundle: a.option("bundle") ?? ".", consoleSocket: a.option("console-socket"))
            try writePIDFile(a.option("pid-file"), pid)
        case "start":
            try await context().start(id: try Arguments(tokens).id(command))
        case "run":
            return try await runContainer(tokens, signals: signals)
        case "state":
            let context = try context()
            printJSON(OCIState.object(try context.store.load(try Arguments(tokens).id(command))))
        case "kill":
            let a = try Arguments(tokens, flags: ["a|all"])
            let signal = try Signals.parse(a.positionals.dropFirst().first ?? "SIGTERM")
            try await context().kill(id: try a.id(command), signal: signal, all: a.flag("all"))
        case "delete":
            let a = try Arguments(tokens, flags: ["f|force"])
            try await context().delete(id: try a.id(command), force: a.flag("force"))
        case "exec":
            return try await exec(tokens, signals: signals)
        case "ps":
            let a = try Arguments(tokens, options: ["f|format"])
            let pids = try await context().pids(id: try a.id(command))
            if a.option("format") == "json" {
                printJSON(.array(pids.map { .int(Int($0)) }))
            } else {
                print("PID\n" + pids.map(String.init).joined(separator: "\n"))
            }
        case "list", "ls":
            try list(try Arguments(tokens, flags: ["q|quiet"], options: ["f|format"]))
        case "pause", "resume":
            try await context().pause(id: try Arguments(tokens).id(command), resume: command == "resume")
        case "events":
            try await events(try Arguments(tokens, flags: ["stats"], options: ["interval"]))
        case "update":
            try await update(try Arguments(tokens, options: ["r|resources"] + Self.updateFlags))
        case "features":
            print(Features.json)
        case "spec":
            let a = try Arguments(tokens, flags: ["rootless"], options: ["b|bundle"])
            try Features.writeSpec(bundle: a.option("bundle") ?? ".")
        case "version", "-v", "--version":
            print("vessel version \(VesselVersion.string)\nspec: \(OCIState.version)")
        case "check":
            return Check.run(try context())
        case "env":
            try env(try Arguments(tokens, flags: ["json"]))
        case "__owner":
            return try await context().ownerMain(sandbox: try Arguments(tokens).id(command), signals: signals)
        case "__shim":
            let a = try Arguments(tokens, options: ["console-socket", "bundle", "sandbox", "exec"])
            return try await context().monitorMain(
                id: try a.id(command), sandbox: a.option("sandbox"), bundle: a.option("bundle"),
                execID: a.option("exec"),
                consoleSocket: a.option("console-socket"), signals: signals)
        case "__nettest":
            return Check.networkTest()
        case "__hold":
            // A sandbox's new network namespace, held while the hooks configure it: until stdin closes.
            _ = try? Linux.readAll(0)
        case "help", "-h", "--help":
            print(Self.usage)
        default:
            throw RuntimeError("unknown command \"\(command)\" (see vessel help)")
        }
        return 0
    }

    /// `run` = create + start; in the foreground the monitor is our child and its exit status is ours.
    func runContainer(_ tokens: [String], signals: AsyncStream<Int32>?) async throws(RuntimeError) -> Int32 {
        let a = try Arguments(
            tokens, flags: ["d|detach", "no-pivot", "no-new-keyring", "keep"],
            options: ["b|bundle", "console-socket", "pid-file", "preserve-fds"])
        let context = try context()
        let id = try a.id("run")
        try warnPreservedFDs(a)
        let detach = a.flag("detach")
        // The foreground monitor stays in our process group: terminal signals reach it directly.
        for sig in [SIGINT, SIGQUIT, SIGTSTP] where !detach { signal(sig, SIG_IGN) }
        let monitor = try context.create(
            id: id, bundle: a.option("bundle") ?? ".", consoleSocket: a.option("console-socket"),
            detach: detach)
        do throws(RuntimeError) {
            try writePIDFile(a.option("pid-file"), monitor)
            try await context.start(id: id)
        } catch {
            try? await context.delete(id: id, force: true)
            throw error
        }
        if detach { return 0 }
        let forwarding = Task {
            for await _ in signals ?? AsyncStream { $0.finish() } { kill(monitor, SIGTERM) }
        }
        let status = await Linux.blocking { Linux.reap(monitor) }
        forwarding.cancel()
        if !a.flag("keep") { try? await context.delete(id: id, force: true) }
        return status
    }

    func exec(_ tokens: [String], signals: AsyncStream<Int32>?) async throws(RuntimeError) -> Int32 {
        let a = try Arguments(
            tokens, flags: ["t|tty", "d|detach", "no-new-privs", "ignore-paused"],
            options: [
                "console-socket", "cwd", "e|env", "u|user", "p|process", "pid-file", "process-label",
                "apparmor", "c|cap", "preserve-fds", "cgroup",
            ])
        let context = try context()
        let id = try a.id("exec")
        if a.option("cgroup") != nil {
            throw RuntimeError("exec --cgroup: an exec'd process always runs in its container's cgroup inside the VM")
        }
        if let count = a.option("preserve-fds"), count != "0" {
            throw RuntimeError("exec --preserve-fds \(count): file descriptors cannot be passed into the VM")
        }
        let overrides = ExecOverrides(
            args: Array(a.positionals.dropFirst()), tty: a.flag("tty"), cwd: a.option("cwd"),
            env: a.all("env"), user: try Self.user(a.option("user")),
            noNewPrivileges: a.flag("no-new-privs"), capabilities: a.all("cap"))
        let process = try context.execProcess(id: id, processFile: a.option("process"), overrides)
        let execID = "exec-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        if a.flag("detach") {
            if process.terminal == true && a.option("console-socket") == nil {
                throw RuntimeError("cannot allocate tty if vessel will detach without setting console socket")
            }
            let pid = try context.execDetached(id: id, execID: execID, process: process, consoleSocket: a.option("console-socket"))
            try writePIDFile(a.option("pid-file"), pid)
            return 0
        }
        try writePIDFile(a.option("pid-file"), getpid())
        return try await context.exec(id: id, execID: execID, process: process, consoleSocket: a.option("console-socket"), signals: signals)
    }

    /// `--user UID[:GID]`, numbers only (there is no passwd to look names up in outside the guest).
    static func user(_ value: String?) throws(RuntimeError) -> (uid: UInt32, gid: UInt32)? {
        guard let value else { return nil }
        let parts = value.split(separator: ":", omittingEmptySubsequences: false).map { UInt32($0) }
        guard (1...2).contains(parts.count), let uid = parts[0], parts.count == 1 || parts[1] != nil else {
            throw RuntimeError("--user \"\(value)\": expected UID[:GID] as numbers")
        }
        return (uid, parts.count > 1 ? parts[1]! : 0)
    }

    func list(_ a: Arguments) throws(RuntimeError) {
        let records = try context().store.list()
        if a.flag("quiet") {
            records.forEach { print($0.id) }
            return
        }
        if a.option("format") == "json" {
            printJSON(.array(records.map { OCIState.object($0) }))
            return
        }
        print("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER")
        for r in records {
            print("\(r.id)\t\(r.status == .stopped ? 0 : r.pid)\t\(r.status.rawValue)\t\(r.bundle)\t\(r.created)\troot")
        }
    }

    func events(_ a: Arguments) async throws(RuntimeError) {
        let context = try context()
        let id = try a.id("events")
        let interval = Double(a.option("interval")?.replacingOccurrences(of: "s", with: "") ?? "5") ?? 5
        while true {
            printJSON(try Stats.event(id: id, try await context.stats(id: id)))
            if a.flag("stats") { return }
            try? await Task.sleep(for: .seconds(interval))
            if try context.store.load(id).status == .stopped { return }
        }
    }

    static let updateFlags = [
        "memory", "memory-swap", "memory-reservation", "cpu-quota", "cpu-period", "cpu-shares", "cpuset-cpus",
        "cpuset-mems", "pids-limit",
    ]

    func update(_ a: Arguments) async throws(RuntimeError) {
        let flags = Dictionary(uniqueKeysWithValues: Self.updateFlags.compactMap { name in a.option(name).map { (name, $0) } })
        let resources = try Stats.resources(file: a.option("resources"), flags: flags)
        try await context().update(id: try a.id("update"), resources: resources)
    }

    func env(_ a: Arguments) throws(RuntimeError) {
        let context = try context()
        if a.flag("json") {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: (try? encoder.encode(context.config)) ?? Data(), as: UTF8.self))
        } else {
            print("# \(context.configPath ?? "built-in defaults (no \(RuntimeConfig.defaultPath))")")
            print("# network: each interface of a pod's network namespace is joined to a QEMU tap by tc redirects")
            print("# (Kata's tcfilter) and configured in the guest; a spec without a network namespace gets none")
            print(context.config.toml())
        }
    }

    func warnPreservedFDs(_ a: Arguments) throws(RuntimeError) {
        if let n = a.option("preserve-fds"), n != "0" {
            guard Int(n) != nil else { throw RuntimeError("--preserve-fds \"\(n)\" is not a number") }
            log.warning("--preserve-fds \(n): host file descriptors cannot cross into the VM; ignored")
        }
    }

    /// runc writes the pid atomically (callers poll the file).
    func writePIDFile(_ path: String?, _ pid: Int32) throws(RuntimeError) {
        guard let path else { return }
        let temporary = path + ".tmp-\(getpid())"
        guard (try? String(pid).write(toFile: temporary, atomically: false, encoding: .utf8)) != nil, rename(temporary, path) == 0 else {
            throw RuntimeError("cannot write pid file \(path)")
        }
    }

    func printJSON(_ value: JSON) {
        print(value.encoded(pretty: true))
    }
}
