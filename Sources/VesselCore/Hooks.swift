import Foundation
import VesselLinux

/// The OCI state of a container (runtime-spec state.md): what `vessel state` prints and what every
/// host hook reads on stdin.
public enum OCIState {
    public static let version = "1.1.0"

    public static func object(_ record: ContainerRecord, status: Lifecycle.Status? = nil) -> [String: Any] {
        let status = status ?? record.status
        var out: [String: Any] = [
            "ociVersion": version, "id": record.id, "pid": status == .stopped ? 0 : Int(record.pid),
            "status": status.rawValue, "bundle": record.bundle, "rootfs": record.rootfs,
            "created": record.created, "owner": "",
        ]
        if !record.annotations.isEmpty { out["annotations"] = record.annotations }
        if let failure = record.failure { out["failure"] = failure }
        return out
    }

    public static func json(_ object: Any, pretty: Bool = false) -> [UInt8] {
        let options: JSONSerialization.WritingOptions = pretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
        return [UInt8]((try? JSONSerialization.data(withJSONObject: object, options: options)) ?? Data())
    }
}

/// OCI hooks are host programs, run by the sandbox owner with the container's state on stdin.
/// argv[0] is the hook's own (docker's libnetwork-setkey hook is dockerd under another name).
public enum HostHooks {
    /// Hooks that can still stop the container (createRuntime, prestart): the first failure ends it.
    public static func run(_ hooks: [OCISpec.Hook]?, state: [String: Any], name: String) throws(RuntimeError) {
        let input = OCIState.json(state)
        for hook in hooks ?? [] { try runOne(hook, input: input, name: name) }
    }

    /// Hooks after the fact (poststart, poststop): as the runtime spec says, a failure is a warning
    /// and the rest still run.
    public static func runAll(_ hooks: [OCISpec.Hook]?, state: [String: Any], name: String, warn: (RuntimeError) -> Void) {
        let input = OCIState.json(state)
        for hook in hooks ?? [] {
            do { try runOne(hook, input: input, name: name) } catch { warn(error) }
        }
    }

    private static func runOne(_ hook: OCISpec.Hook, input: [UInt8], name: String) throws(RuntimeError) {
        let timeout = Double(hook.timeout ?? 30)
        let (status, output) = try during("\(name) hook \(hook.path)") {
            try runHook(path: hook.path, arguments: hook.args ?? [hook.path], environment: hook.env ?? [], input: input, timeout: timeout)
        }
        guard let status else { throw RuntimeError("\(name) hook \(hook.path) timed out after \(Int(timeout)) s") }
        if status != 0 {
            let said = String(decoding: output.prefix(500), as: UTF8.self).split(separator: "\n").joined(separator: "; ")
            throw RuntimeError("\(name) hook \(hook.path) exited with status \(status): \(said)")
        }
    }

    /// Returns the exit status (nil after a timeout, the hook then killed) and what it printed.
    static func runHook(
        path: String, arguments: [String], environment: [String], input: [UInt8], timeout: Double
    ) throws -> (Int32?, [UInt8]) {
        // Output goes to an unnamed file: a chatty hook must not block on a full pipe nobody reads yet.
        let output = try Linux.anonymousFile(in: "/tmp")
        defer { Linux.close(output) }
        let stdin = try Linux.pipe()
        let spawned: SpawnResult
        do {
            spawned = try spawn(
                exeFD: -1, path: path, arguments: arguments, environment: environment,
                fds: [(stdin.read, 0), (output, 1), (output, 2)])
        } catch {
            for fd in [stdin.read, stdin.write] { Linux.close(fd) }
            throw error
        }
        Linux.close(stdin.read)
        signal(SIGPIPE, SIG_IGN)
        _ = try? Linux.writeAll(stdin.write, input)
        Linux.close(stdin.write)
        let exited = Linux.waitGone(pid: spawned.pid, timeout: timeout)
        if !exited { kill(spawned.pid, SIGKILL) }
        let status = Linux.reap(spawned.pid)
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = pread(output, &buffer, buffer.count, 0)
        if spawned.execErrno != 0 { throw LinuxError(stage: "execve", errno: spawned.execErrno, detail: path) }
        return (exited ? status : nil, n > 0 ? Array(buffer[0..<n]) : [])
    }
}
