import VesselLinux
import VesselProtocol
import VesselSpec

#if canImport(Glibc)
    import Glibc
#endif

/// OCI hooks in the guest (`HookRunner`, as on the host): each must exit 0 within its timeout.
/// The agent waits through its reaper (async); the helper, which has no reaper and is
/// single-threaded, waits for the hook itself.
enum Hooks {
    static func state(spec: Grpc_Spec, id: String, status: String, pid: Int32) -> JSON {
        OCIState.object(ociVersion: spec.version, id: id, status: status, pid: pid, bundle: bundle(of: spec), annotations: spec.annotations)
    }

    /// The agent gets no bundle path; the rootfs's parent is where the bundle lives in Kata's layout.
    static func bundle(of spec: Grpc_Spec) -> String {
        let parts = spec.root.path.split(separator: "/").dropLast()
        return "/" + parts.joined(separator: "/")
    }

    static func command(_ hook: Grpc_Hook) -> HookCommand {
        HookCommand(path: hook.path, arguments: hook.args, environment: hook.env, timeout: hook.timeout > 0 ? Double(hook.timeout) : nil)
    }

    /// Agent side: in order, each to completion, output to the agent's stderr; the first failure stops the rest.
    static func run(_ hooks: [Grpc_Hook], kind: String, state: JSON) async throws {
        for (index, hook) in hooks.enumerated() {
            let name = "hooks.\(kind)[\(index)] (\(hook.path))"
            let pid: pid_t
            do { pid = try HookRunner.start(command(hook), state: state, output: 2) } catch {
                throw AgentError.invalidArgument("\(name): \(error)")
            }
            Reaper.shared.watch(pid)
            defer { Reaper.shared.forget(pid) }
            let status: Int32? = await withTaskGroup(of: Int32?.self) { group in
                group.addTask { await Reaper.shared.wait(pid) }
                if hook.timeout > 0 {
                    group.addTask {
                        try? await Task.sleep(for: .seconds(hook.timeout))
                        return nil
                    }
                }
                let first = await group.next()!
                if first == nil { kill(pid, SIGKILL) }
                group.cancelAll()
                return first
            }
            guard let status else { throw AgentError(kind: .deadlineExceeded, message: "\(name) timed out after \(hook.timeout)s") }
            guard status == 0 else { throw AgentError.failedPrecondition("\(name) exited with status \(status)") }
        }
    }

    /// Helper side: same contract, blocking, output discarded.
    static func runBlocking(_ hooks: [Grpc_Hook], kind: String, state: JSON) throws {
        let devNull = try Linux.open("/dev/null", O_WRONLY)
        defer { Linux.close(devNull) }
        for (index, hook) in hooks.enumerated() {
            let name = "hooks.\(kind)[\(index)] (\(hook.path))"
            guard let code = try HookRunner.run(command(hook), state: state, output: devNull) else {
                throw LinuxError(stage: name, errno: ETIMEDOUT, detail: "timed out after \(hook.timeout)s")
            }
            if code != 0 { throw LinuxError(stage: name, errno: 0, detail: "exited with status \(code)") }
        }
    }
}
