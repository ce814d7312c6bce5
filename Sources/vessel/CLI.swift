import Foundation
import VesselProtocol
import VesselRuntime

struct CLI {
    let global: Arguments
    let globalTokens: [String]
    let log: RuntimeLog

    static let version = "0.1.0"
    static let specVersion = "1.1.0"

    func runtime() throws(RuntimeError) -> Runtime {
        let (config, path) = try RuntimeConfig.load(explicit: global.option("config"))
        return Runtime(root: global.option("root") ?? "/run/vessel", config: config, configPath: path, log: log, globalArguments: globalTokens)
    }

    func run(_ command: String, _ tokens: [String]) async throws(RuntimeError) -> Int32 {
        switch command {
        case "create":
            let a = try Arguments(tokens, flags: ["no-pivot", "no-new-keyring"], options: ["b|bundle", "console-socket", "pid-file", "preserve-fds"])
            let runtime = try runtime()
            try warnPreservedFDs(a)
            let pid = try runtime.create(id: try a.id(command), bundle: a.option("bundle") ?? ".", consoleSocket: a.option("console-socket"))
            try writePIDFile(a.option("pid-file"), pid)
        case "start":
            try await runtime().start(id: try Arguments(tokens).id(command))
        case "run":
            return try await runContainer(tokens)
        case "state":
            try printJSON(stateJSON(try runtime().store.load(try Arguments(tokens).id(command))))
        case "kill":
            let a = try Arguments(tokens, flags: ["a|all"])
            let signal = try Signals.parse(a.positionals.dropFirst().first ?? "SIGTERM")
            try await runtime().kill(id: try a.id(command), signal: signal, all: a.flag("all"))
        case "delete":
            let a = try Arguments(tokens, flags: ["f|force"])
            try runtime().delete(id: try a.id(command), force: a.flag("force"))
        case "exec":
            return try await exec(tokens)
        case "ps":
            let a = try Arguments(tokens, options: ["f|format"])
            let state = try runtime().store.load(try a.id(command))
            let pids = state.status == .stopped ? [] : [state.pid]
            if a.option("format") == "json" { try printJSON(pids) } else { print("PID\n" + pids.map(String.init).joined(separator: "\n")) }
        case "list", "ls":
            try list(try Arguments(tokens, flags: ["q|quiet"], options: ["f|format"]))
        case "pause", "resume":
            try await runtime().pause(id: try Arguments(tokens).id(command), resume: command == "resume")
        case "events":
            try await events(try Arguments(tokens, flags: ["stats"], options: ["interval"]))
        case "update":
            try await update(try Arguments(tokens, options: ["r|resources", "memory", "memory-swap", "memory-reservation", "cpu-quota",
                                                             "cpu-period", "cpu-shares", "cpuset-cpus", "cpuset-mems", "pids-limit"]))
        case "features":
            print(Features.json)
        case "spec":
            let a = try Arguments(tokens, flags: ["rootless"], options: ["b|bundle"])
            try Features.writeSpec(bundle: a.option("bundle") ?? ".")
        case "version", "-v", "--version":
            print("vessel version \(Self.version)\nspec: \(Self.specVersion)")
        case "check":
            return Check.run(try runtime())
        case "env":
            let a = try Arguments(tokens, flags: ["json"])
            let runtime = try runtime()
            if a.flag("json") {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: (try? encoder.encode(runtime.config)) ?? Data(), as: UTF8.self))
            } else {
                print("# \(runtime.configPath ?? "built-in defaults (no \(RuntimeConfig.defaultPath))")\n" + runtime.config.toml())
            }
        case "__shim":
            let a = try Arguments(tokens, options: ["console-socket"])
            let runtime = try runtime()
            return await ContainerShim.run(store: runtime.store, id: try a.id(command), config: runtime.config,
                                           consoleSocket: a.option("console-socket"), log: log)
        case "__exec":
            let a = try Arguments(tokens, options: ["console-socket"])
            guard a.positionals.count == 2 else { throw RuntimeError("__exec needs a container id and an exec id") }
            return try await runtime().execHelper(id: a.positionals[0], execID: a.positionals[1], consoleSocket: a.option("console-socket"))
        case "help", "-h", "--help":
            print(Self.usage)
        default:
            throw RuntimeError("unknown command \"\(command)\" (see vessel help)")
        }
        return 0
    }

    /// `run` = create + start; in the foreground the shim is our child and its exit status is ours.
    func runContainer(_ tokens: [String]) async throws(RuntimeError) -> Int32 {
        let a = try Arguments(tokens, flags: ["d|detach", "no-pivot", "no-new-keyring", "keep"],
                              options: ["b|bundle", "console-socket", "pid-file", "preserve-fds"])
        let runtime = try runtime()
        let id = try a.id("run")
        try warnPreservedFDs(a)
        let detach = a.flag("detach")
        // The foreground shim stays in our process group: terminal signals reach it directly.
        let shim = try runtime.create(id: id, bundle: a.option("bundle") ?? ".", consoleSocket: a.option("console-socket"), detachShim: detach)
        do throws(RuntimeError) {
            try writePIDFile(a.option("pid-file"), shim)
            try await runtime.start(id: id)
        } catch {
            try? runtime.delete(id: id, force: true)
            throw error
        }
        if detach { return 0 }
        for sig in [SIGINT, SIGQUIT, SIGTSTP] { signal(sig, SIG_IGN) }
        let forward = DispatchSource.makeSignalSource(signal: SIGTERM)
        signal(SIGTERM, SIG_IGN)
        forward.setEventHandler { kill(shim, SIGTERM) }
        forward.resume()
        let status = runtime.waitForShim(shim)
        if !a.flag("keep") { try? runtime.delete(id: id, force: true) }
        return status
    }

    func exec(_ tokens: [String]) async throws(RuntimeError) -> Int32 {
        let a = try Arguments(tokens, flags: ["t|tty", "d|detach", "no-new-privs", "ignore-paused"],
                              options: ["console-socket", "cwd", "e|env", "u|user", "p|process", "pid-file", "process-label",
                                        "apparmor", "c|cap", "preserve-fds", "cgroup"])
        let runtime = try runtime()
        let id = try a.id("exec")
        var user: (UInt32, UInt32)?
        if let spec = a.option("user") {
            let parts = spec.split(separator: ":").map { UInt32($0) }
            guard let uid = parts.first ?? nil else { throw RuntimeError("--user \"\(spec)\": expected UID[:GID]") }
            user = (uid, parts.count > 1 ? (parts[1] ?? 0) : 0)
        }
        let process = try runtime.execProcess(id: id, processFile: a.option("process"), args: Array(a.positionals.dropFirst()),
                                              tty: a.flag("tty"), cwd: a.option("cwd"), env: a.all("env"), user: user)
        let execID = "exec-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        if a.flag("detach") {
            if process.terminal && a.option("console-socket") == nil {
                throw RuntimeError("cannot allocate tty if vessel will detach without setting console socket")
            }
            let pid = try runtime.execDetached(id: id, execID: execID, process: process, consoleSocket: a.option("console-socket"))
            try writePIDFile(a.option("pid-file"), pid)
            return 0
        }
        try writePIDFile(a.option("pid-file"), getpid())
        return try await runtime.exec(id: id, execID: execID, process: process, consoleSocket: a.option("console-socket"))
    }

    func list(_ a: Arguments) throws(RuntimeError) {
        let states = try runtime().store.list()
        if a.flag("quiet") { states.forEach { print($0.id) }; return }
        if a.option("format") == "json" { try printJSON(states.map(stateJSON)); return }
        print("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER")
        for s in states { print("\(s.id)\t\(s.status == .stopped ? 0 : s.pid)\t\(s.status.rawValue)\t\(s.bundle)\t\(s.created)\t\(s.owner)") }
    }

    func events(_ a: Arguments) async throws(RuntimeError) {
        let runtime = try runtime()
        let id = try a.id("events")
        let interval = Double(a.option("interval")?.replacingOccurrences(of: "s", with: "") ?? "5") ?? 5
        while true {
            let stats = try await runtime.withAgent(id) { agent throws(RuntimeError) in
                try await during("stats") { try await agent.stats(id) }
            }
            try printJSON(Stats.event(id: id, stats))
            if a.flag("stats") { return }
            try? await Task.sleep(for: .seconds(interval))
            if try runtime.store.load(id).status == .stopped { return }
        }
    }

    func update(_ a: Arguments) async throws(RuntimeError) {
        let runtime = try runtime()
        let id = try a.id("update")
        let flagNames = ["memory", "memory-swap", "memory-reservation", "cpu-quota", "cpu-period", "cpu-shares", "cpuset-cpus", "cpuset-mems", "pids-limit"]
        let flags = Dictionary(uniqueKeysWithValues: flagNames.compactMap { name in a.option(name).map { (name, $0) } })
        let resources = try Stats.resources(file: a.option("resources"), flags: flags)
        try await runtime.withAgent(id) { agent throws(RuntimeError) in
            try await during("update container \(id)") {
                try await agent.call("UpdateContainer", Grpc_UpdateContainerRequest.with { $0.containerID = id; $0.resources = resources })
            }
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

    func stateJSON(_ s: ContainerState) -> [String: Any] {
        var out: [String: Any] = ["ociVersion": Self.specVersion, "id": s.id, "pid": s.status == .stopped ? 0 : Int(s.pid),
                                  "status": s.status.rawValue, "bundle": s.bundle, "rootfs": s.rootfs, "created": s.created, "owner": ""]
        if !s.annotations.isEmpty { out["annotations"] = s.annotations }
        if let failure = s.failure { out["failure"] = failure }
        return out
    }

    func printJSON(_ value: Any) throws(RuntimeError) {
        guard let data = try? JSONSerialization.data(withJSONObject: value, options: [.prettyPrinted, .sortedKeys]) else {
            throw RuntimeError("cannot encode JSON output")
        }
        print(String(decoding: data, as: UTF8.self))
    }

    static let usage = """
    vessel: run OCI containers, each in its own lightweight VM (runc-compatible)

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
}
