import ArgumentParser
import Foundation
import VesselAgentClient
import VesselCore
import VesselDevSupport
import VesselLinux
import VesselProtocol
import VesselSandbox
import VesselVM
import VesselVsock

// Developer tool: `demo` runs a busybox container through a host-mode agent; `bench` measures the
// agent next to crun and runc in one run (the numbers `make bench` prints).

let defaultAgent = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("vessel-agent").path

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    guard !sorted.isEmpty else { return .nan }
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

func milliseconds(_ body: () async throws -> Void) async rethrows -> Double {
    let start = ContinuousClock.now
    try await body()
    let elapsed = ContinuousClock.now - start
    return Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
}

func format(_ ms: Double) -> String { String(format: "%.2f ms", ms) }

func demo(agent binary: String) async throws {
    let status = try await LocalAgent.with(binary: binary) { agent in
        try await agent.client.createContainer("demo", spec: agent.spec(["sh", "-c", "echo hello from a vessel container on $(hostname)"]))
        try await agent.client.startContainer("demo")
        FileHandle.standardOutput.write(Data(try await agent.client.readAll("demo")))
        let status = try await agent.client.wait("demo")
        try await agent.client.removeContainer("demo")
        return status
    }
    print("container exited with status \(status)")
}

/// An OCI bundle with the same busybox rootfs and the same namespaces as the agent's spec.
func makeBundle(at dir: String, rootfs: String) throws {
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let spec = Process()
    spec.executableURL = URL(fileURLWithPath: "/usr/sbin/runc")
    spec.arguments = ["spec", "--bundle", dir]
    try spec.run()
    spec.waitUntilExit()
    let url = URL(fileURLWithPath: dir + "/config.json")
    var config = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
    // runc refuses a rootfs reached through a symlink: point at the agent's rootfs directly.
    config["root"] = ["path": rootfs, "readonly": false]
    var process = config["process"] as! [String: Any]
    process["terminal"] = false
    process["args"] = ["/bin/true"]
    config["process"] = process
    var linux = config["linux"] as! [String: Any]
    linux["namespaces"] = ["pid", "mount", "uts", "ipc"].map { ["type": $0] }
    config["linux"] = linux
    try JSONSerialization.data(withJSONObject: config).write(to: url)
}

/// Runs `runtime run` `count` times; started by `bench` inside `unshare -m` with the empty cgroup2
/// mount removed, because crun refuses this host's hybrid cgroup layout otherwise.
func ociBench(runtime: String, bundle: String, count: Int) throws {
    _ = umount2("/sys/fs/cgroup/unified", Int32(MNT_DETACH))
    var times: [Double] = []
    for i in 0..<count {
        // posix_spawn + waitpid: Foundation's Process.waitUntilExit polls every 50 ms, which
        // would swamp what is measured here.
        let words: [String] = [runtime, "run", "--bundle", bundle, "vessel-bench-\(getpid())-\(i)"]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { word in word.withCString { strdup($0) } } + [nil]
        defer { argv.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var pid: pid_t = 0
        let start = ContinuousClock.now
        guard posix_spawn(&pid, runtime, &actions, nil, argv, environ) == 0 else { throw DevSupportError("cannot spawn \(runtime)") }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        let elapsed = ContinuousClock.now - start
        guard status == 0 else { throw DevSupportError("\(runtime) run exited with wait status \(status)") }
        times.append(Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15)
    }
    print(median(times))
}

func runOCIBench(_ runtime: String, bundle: String, count: Int) throws -> Double? {
    guard FileManager.default.isExecutableFile(atPath: runtime) else { return nil }
    let p = Process()
    let pipe = Pipe()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
    p.arguments = ["-m", "--propagation", "private", CommandLine.arguments[0], "oci-bench", runtime, bundle, String(count)]
    p.standardOutput = pipe
    try p.run()
    let out = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0, let value = Double(String(decoding: out, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    else {
        throw DevSupportError("\(runtime) benchmark failed (exit \(p.terminationStatus))")
    }
    return value
}

struct AgentNumbers {
    var spawn: [Double] = [], exec: [Double] = [], check: [Double] = []
    var idleRSS = 0, busyRSS = 0
    var crun: Double?, runc: Double?
}

func measureAgent(_ agent: LocalAgent, count: Int) async throws -> AgentNumbers {
    var numbers = AgentNumbers()
    numbers.idleRSS = agent.residentKiB
    for i in 0..<count {
        numbers.spawn.append(
            try await milliseconds {
                let id = "bench-\(i)"
                try await agent.client.createContainer(id, spec: agent.spec(["/bin/true"]))
                try await agent.client.startContainer(id)
                _ = try await agent.client.wait(id)
                try await agent.client.removeContainer(id)
            })
    }
    try await agent.client.createContainer("exec", spec: agent.spec(["sleep", "1000"]))
    try await agent.client.startContainer("exec")
    for i in 0..<count {
        numbers.exec.append(
            try await milliseconds {
                try await agent.client.exec("exec", "e\(i)", process: LocalAgent.process(["/bin/true"]))
                _ = try await agent.client.wait("exec", "e\(i)")
            })
        numbers.check.append(try await milliseconds { _ = try await agent.client.check() })
    }
    try await agent.client.removeContainer("exec")
    numbers.busyRSS = agent.residentKiB

    let bundle = agent.directory.appendingPathComponent("bundle").path
    try makeBundle(at: bundle, rootfs: agent.rootfs)
    numbers.crun = try runOCIBench("/usr/bin/crun", bundle: bundle, count: count)
    numbers.runc = try runOCIBench("/usr/sbin/runc", bundle: bundle, count: count)
    return numbers
}

func bench(agent binary: String, count: Int) async throws {
    let numbers = try await LocalAgent.with(binary: binary) { try await measureAgent($0, count: count) }
    let agentMedian = median(numbers.spawn)
    print("agent create+start+wait+remove of /bin/true: \(format(agentMedian)) (median of \(count))")
    for (name, value) in [("crun", numbers.crun), ("runc", numbers.runc)] {
        if let value {
            print("\(name) run of the same bundle: \(format(value)); agent/\(name) = \(String(format: "%.2f", agentMedian / value))x")
        } else {
            print("\(name) run: \(name) is not installed")
        }
    }
    let execMedian = median(numbers.exec), checkMedian = median(numbers.check)
    print(
        "exec /bin/true + wait: \(format(execMedian)); Health.Check round trip: \(format(checkMedian)); ratio \(String(format: "%.1f", execMedian / checkMedian))x"
    )
    print("agent RSS: idle \(numbers.idleRSS) KiB, after the benchmark \(numbers.busyRSS) KiB")
    let socket = "/tmp/vessel-bench-stdio-\(getpid()).sock"
    defer { unlink(socket) }
    let (rpc, stream) = try await LocalAgent.with(
        binary: binary,
        arguments: ["--stdio-addr", "unix://\(socket)"]
    ) { try await measureStdio($0, socket: socket) }
    print(
        "stdout of a container, 256 MiB: ReadStdout round trips \(String(format: "%.0f", rpc)) MB/s; its stdio stream "
            + "\(String(format: "%.0f", stream)) MB/s; ratio \(String(format: "%.1f", stream / rpc))x")
}

/// MB/s (10^6, as the vsock benchmark counts) of a container's stdout read by ReadStdout (Kata's way) and through a stdio stream.
func measureStdio(_ agent: LocalAgent, socket: String) async throws -> (rpc: Double, stream: Double) {
    let mib = 256
    func rate(_ id: String, stdio: StdioPorts, read: () async throws -> Int) async throws -> Double {
        try await agent.client.createContainer(id, spec: agent.spec(["dd", "if=/dev/zero", "bs=1M", "count=\(mib)"]), stdio: stdio)
        let start = ContinuousClock.now
        try await agent.client.startContainer(id)
        let bytes = try await read()
        let elapsed = ContinuousClock.now - start
        guard bytes == mib << 20, try await agent.client.wait(id) == 0 else { throw DevSupportError("\(id): \(bytes) bytes read") }
        try await agent.client.removeContainer(id)
        return Double(mib << 20) / 1e6 / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
    }
    let rpc = try await rate("rpc", stdio: StdioPorts()) {
        var total = 0
        while case let chunk = try await agent.client.read("rpc", max: 1 << 20), !chunk.isEmpty { total += chunk.count }
        return total
    }
    let stream = try StdioStreamClient.dial(socket)
    defer { stream.close() }
    return (rpc, try await rate("stream", stdio: StdioPorts(stdout: stream.id)) { try await stream.drain() })
}

/// QEMU start -> "vessel-agent ready" next to QEMU start -> exit of an init that only powers off.
func bootBench(_ guest: GuestFiles, count: Int) throws {
    let kernel = guest.kernel, initrd = guest.initrd, baseline = guest.baselineInitrd
    var ready: [Double] = [], lowerBound: [Double] = [], rss: [Int] = []
    var accelerator = VMConfig.Accelerator.tcg
    for _ in 0..<count {
        var config = VMConfig(kernel: kernel, initrd: initrd)
        config.kernelParameters = ["agent.selftest=poweroff"]
        let vm = try GuestVM(config)
        accelerator = vm.accelerator
        ready.append(try vm.waitFor("vessel-agent ready in", timeout: 120) * 1000)
        _ = try vm.waitForExit(timeout: 60)
        if let line = vm.output.split(separator: "\n").first(where: { $0.contains("vessel-agent ready in") }),
            let kib = line.split(separator: "(rss ").last?.split(separator: " ").first.flatMap({ Int($0) })
        {
            rss.append(kib)
        }
        let base = try GuestVM(VMConfig(kernel: kernel, initrd: baseline))
        _ = try base.waitForExit(timeout: 120)
        lowerBound.append(Date().timeIntervalSince(base.startedAt) * 1000)
    }
    let r = median(ready), b = median(lowerBound)
    print(
        "boot (\(accelerator.rawValue), q35, 1 vCPU, 256 MiB): QEMU start -> agent ready \(format(r)); "
            + "QEMU start -> exit with a power-off init \(format(b)); ratio \(String(format: "%.2f", r / b))x (medians of \(count))")
    print("agent RSS at ready (PID 1): \(rss.sorted()[rss.count / 2]) KiB")
    for (name, path) in [("initrd", initrd), ("kernel", kernel)] {
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        print("\(name) \(path): \(size) bytes")
    }
}

/// Runs a command with stdout and stderr to /dev/null and stdin from `stdin` (no Foundation
/// polling); returns (exit status, milliseconds).
func timed(_ arguments: [String], stdin: String = "/dev/null") throws -> (Int32, Double) {
    var pid: pid_t = 0
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    for fd in [0, 1, 2] as [Int32] {
        posix_spawn_file_actions_addopen(&actions, fd, fd == 0 ? stdin : "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0)
    }
    let argv = arguments.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    let start = ContinuousClock.now
    guard posix_spawn(&pid, arguments[0], &actions, nil, argv, environ) == 0 else { throw DevSupportError("cannot spawn \(arguments[0])") }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    let elapsed = ContinuousClock.now - start
    return ((status >> 8) & 0xff, Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15)
}

func pssKiB(_ pid: Int32) -> Int { Linux.procKiB("Pss", in: "/proc/\(pid)/smaps_rollup") }

/// Cold `vessel run BUNDLE` of /bin/true next to the same QEMU command booting a power-off init;
/// then `vessel exec true` latency and the host PSS of one idle sandbox.
func runBench(vessel: String, _ guest: GuestFiles, count: Int) throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vessel-run-bench-\(getpid())").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    var config = RuntimeConfig()
    config.hypervisor.kernel = guest.kernel
    config.hypervisor.initrd = guest.initrd
    try config.toml().write(toFile: dir + "/config.toml", atomically: true, encoding: .utf8)
    let cli = [vessel, "--root", dir + "/root", "--config", dir + "/config.toml"]
    try OCIBundle.make(at: dir + "/true", args: ["true"])
    try OCIBundle.make(at: dir + "/sleep", args: ["sleep", "100000"])

    var runs: [Double] = [], lower: [Double] = []
    for i in 0..<count {
        let (status, ms) = try timed(cli + ["run", "--bundle", dir + "/true", "bench-\(i)"])
        guard status == 0 else { throw DevSupportError("vessel run failed with status \(status)") }
        runs.append(ms)
        // The lower bound: the sandbox's own QEMU command and vsock backend, with an init that powers off.
        let paths = SandboxPaths(root: dir + "/lower", id: "l\(i)")
        try FileManager.default.createDirectory(atPath: paths.shared, withIntermediateDirectories: true)
        var options = VsockBackend.Options()
        options.logger.logLevel = .warning
        let backend = try VsockBackend(
            vhostUserSocketPath: paths.vhostUserSocket, hybridSocketPath: paths.hybridSocket, guestCID: 3,
            options: options)
        let thread = backend.start()
        var vmConfig = SandboxVMConfig.make(config, paths: paths)
        vmConfig.initrd = guest.baselineInitrd
        let vm = try GuestVM(vmConfig)
        _ = try vm.waitForExit(timeout: 120)
        lower.append(Date().timeIntervalSince(vm.startedAt) * 1000)
        backend.stop()
        _ = thread.join()
        try? FileManager.default.removeItem(atPath: paths.directory)
    }
    let r = median(runs), b = median(lower)
    print(
        "cold `vessel run` of /bin/true: \(format(r)); same QEMU command with a power-off init: \(format(b)); "
            + "ratio \(String(format: "%.2f", r / b))x (medians of \(count))")

    guard try timed(cli + ["run", "--detach", "--bundle", dir + "/sleep", "idle"]).0 == 0 else {
        throw DevSupportError("vessel run --detach failed")
    }
    defer { _ = try? timed(cli + ["delete", "--force", "idle"]) }
    var execs: [Double] = []
    for _ in 0..<count {
        let (status, ms) = try timed(cli + ["exec", "idle", "true"])
        guard status == 0 else { throw DevSupportError("vessel exec failed with status \(status)") }
        execs.append(ms)
    }
    // stdio: 500 MiB each way through `vessel exec`, less the latency of an exec of true; next
    // to the same bytes through one pipe inside the guest, which stdio cannot beat (the process
    // writes to a pipe the agent reads), and the raw vsock (VSOCK-BENCH below).
    let mib = 500, input = dir + "/input"
    try Data(count: mib << 20).write(to: URL(fileURLWithPath: input))
    defer { try? FileManager.default.removeItem(atPath: input) }
    for (what, arguments, stdin) in [
        // dd, not head -c: busybox's head writes 4 KiB at a time, which measures head.
        ("stdout through `vessel exec`", ["dd", "if=/dev/zero", "bs=1M", "count=\(mib)"], "/dev/null"),
        ("stdin through `vessel exec`", ["sh", "-c", "cat > /dev/null"], input),
        ("one pipe inside the guest", ["sh", "-c", "dd if=/dev/zero bs=1M count=\(mib) 2>/dev/null | cat > /dev/null"], "/dev/null"),
    ] {
        let (status, ms) = try timed(cli + ["exec", "idle"] + arguments, stdin: stdin)
        guard status == 0 else { throw DevSupportError("vessel exec (\(what)) failed with status \(status)") }
        let rate = Double(mib << 20) / 1e6 / ((ms - median(execs)) / 1000)
        print("\(what): \(mib) MiB in \(format(ms)), \(String(format: "%.0f", rate)) MB/s beyond an exec of true")
    }
    print("`vessel exec idle true`: \(format(median(execs))) (median of \(count))")
    let store = StateStore(root: dir + "/root")
    sleep(2)
    let (monitor, owner, qemu) = try sandboxPSS(store, "idle")
    print(
        "host PSS of one idle sandbox: \(monitor + owner + qemu) KiB (owner with the vsock backend \(owner) KiB, QEMU \(qemu) KiB, "
            + "process monitor \(monitor) KiB)")
    // With three pods the text of QEMU, vessel and the page cache of kernel and initrd are split
    // three ways, as on a host that runs many.
    for id in ["idle2", "idle3"] {
        guard try timed(cli + ["run", "--detach", "--bundle", dir + "/sleep", id]).0 == 0 else {
            throw DevSupportError("vessel run --detach failed")
        }
    }
    defer { for id in ["idle2", "idle3"] { _ = try? timed(cli + ["delete", "--force", id]) } }
    sleep(5)
    let totals = try ["idle", "idle2", "idle3"].map { id in
        let (monitor, owner, qemu) = try sandboxPSS(store, id)
        return monitor + owner + qemu
    }
    print("host PSS per idle sandbox with three running: \(totals.map(String.init).joined(separator: ", ")) KiB")
}

/// PSS of a container's process monitor, its sandbox's owner and QEMU, in KiB.
func sandboxPSS(_ store: StateStore, _ id: String) throws -> (monitor: Int, owner: Int, qemu: Int) {
    let record = try store.load(id)
    guard let sandbox = store.loadSandbox(record.sandbox) else { throw DevSupportError("no sandbox record for \(id)") }
    return (pssKiB(record.pid), pssKiB(sandbox.ownerPid), pssKiB(sandbox.qemuPid))
}

/// The guest files a boot benchmark compares: the real initrd next to one that only powers off.
struct GuestFiles: ParsableArguments {
    @Option var kernel = "out/bzImage"
    @Option var initrd = "out/initrd.img"
    @Option(name: .customLong("baseline-initrd")) var baselineInitrd = "out/poweroff-initrd.img"
}

@main
struct VesselDev: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vessel-dev",
        abstract: "Developer tool: the demo, the benchmarks `make bench` prints, OCI bundles.",
        subcommands: [Demo.self, Bench.self, BootBench.self, RunBench.self, MakeBundle.self, OCIBench.self])

    struct Demo: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Runs a busybox container through a host-mode agent.")
        @Option var agent = defaultAgent
        func run() async throws { try await demo(agent: agent) }
    }

    struct Bench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The host-mode agent next to crun and runc, in one run.")
        @Option var agent = defaultAgent
        @Option var count = 50
        func run() async throws { try await bench(agent: agent, count: count) }
    }

    struct BootBench: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "QEMU start to agent ready, next to a power-off init.")
        @OptionGroup var guest: GuestFiles
        @Option var count = 5
        func run() throws { try bootBench(guest, count: count) }
    }

    struct RunBench: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cold `vessel run`, exec latency, stdio rates and an idle pod's PSS.")
        @Option var vessel = "out/vessel"
        @OptionGroup var guest: GuestFiles
        @Option var count = 10
        func run() throws { try runBench(vessel: vessel, guest, count: count) }
    }

    struct MakeBundle: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bundle", abstract: "An OCI bundle with a busybox rootfs running COMMAND.")
        @Argument var directory: String
        @Flag var tty = false
        @Argument(parsing: .postTerminator) var command: [String]
        func validate() throws { if command.isEmpty { throw ValidationError("a COMMAND after -- is required") } }
        func run() throws {
            try? FileManager.default.removeItem(atPath: directory)
            try OCIBundle.make(at: directory, args: command, terminal: tty)
        }
    }

    /// Started by `bench` inside `unshare -m` (see `ociBench`).
    struct OCIBench: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "oci-bench", shouldDisplay: false)
        @Argument var runtime: String
        @Argument var bundle: String
        @Argument var count = 10
        func run() throws { try ociBench(runtime: runtime, bundle: bundle, count: count) }
    }
}
