import Foundation
import VesselLinux
import VesselSpec

/// The OCI state of a container as the host knows it (`VesselSpec.OCIState` plus what only the
/// host has): what `vessel state` prints and what every host hook reads on stdin.
extension OCIState {
    public static func object(_ record: ContainerRecord, status: Lifecycle.Status? = nil) -> JSON {
        let status = status ?? record.status
        var state = object(
            id: record.id, status: status.rawValue, pid: status == .stopped ? 0 : record.pid, bundle: record.bundle,
            annotations: record.annotations)
        state["rootfs"] = .string(record.rootfs)
        state["created"] = .string(record.created)
        state["owner"] = ""
        if let failure = record.failure { state["failure"] = .string(failure) }
        return state
    }
}

/// OCI hooks are host programs, run by the sandbox owner with the container's state on stdin.
/// argv[0] is the hook's own (docker's libnetwork-setkey hook is dockerd under another name).
public enum HostHooks {
    /// Hooks that can still stop the container (createRuntime, prestart): the first failure ends it.
    public static func run(_ hooks: [OCISpec.Hook]?, state: JSON, name: String) throws(RuntimeError) {
        for hook in hooks ?? [] { try runOne(hook, state: state, name: name) }
    }

    /// Hooks after the fact (poststart, poststop): as the runtime spec says, a failure is a warning
    /// and the rest still run.
    public static func runAll(_ hooks: [OCISpec.Hook]?, state: JSON, name: String, warn: (RuntimeError) -> Void) {
        for hook in hooks ?? [] {
            do { try runOne(hook, state: state, name: name) } catch { warn(error) }
        }
    }

    private static func runOne(_ hook: OCISpec.Hook, state: JSON, name: String) throws(RuntimeError) {
        let command = HookCommand(
            path: hook.path, arguments: hook.args ?? [], environment: hook.env ?? [], timeout: Double(hook.timeout ?? 30))
        let status: Int32?, output: [UInt8]
        do { (status, output) = try runCapturing(command, state: state) } catch {
            throw RuntimeError(stage: "\(name) hook \(hook.path)", error)
        }
        guard let status else { throw RuntimeError("\(name) hook \(hook.path) timed out after \(Int(command.timeout ?? 0)) s") }
        if status != 0 {
            let said = String(decoding: output, as: UTF8.self).split(separator: "\n").joined(separator: "; ")
            throw RuntimeError("\(name) hook \(hook.path) exited with status \(status): \(said)")
        }
    }

    /// Its exit status (nil: timed out) and the start of what it printed, kept in an unnamed file:
    /// a chatty hook must not block on a full pipe nobody reads.
    private static func runCapturing(_ command: HookCommand, state: JSON) throws(LinuxError) -> (Int32?, [UInt8]) {
        let output = try Linux.anonymousFile(in: "/tmp")
        defer { Linux.close(output) }
        let status = try HookRunner.run(command, state: state, output: output)
        var buffer = [UInt8](repeating: 0, count: 500)
        let n = pread(output, &buffer, buffer.count, 0)
        return (status, n > 0 ? Array(buffer[0..<n]) : [])
    }
}
