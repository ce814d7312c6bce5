import VesselLinux
import VesselProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// OCI hooks: each runs with the container's state as JSON on stdin and must exit 0 within its
/// timeout. The agent waits through the reaper (async); the helper, which has no reaper and is
/// single-threaded, waits with waitpid.
enum Hooks {
    struct State {
        var ociVersion: String
        var id: String
        var status: String
        var pid: Int32
        var bundle: String
        var annotations: [String: String]

        init(ociVersion: String, id: String, status: String, pid: Int32, bundle: String, annotations: [String: String]) {
            (self.ociVersion, self.id, self.status, self.pid, self.bundle, self.annotations) = (
                ociVersion, id, status, pid, bundle, annotations
            )
        }

        init(spec: Grpc_Spec, id: String, status: String, pid: Int32) {
            self.init(
                ociVersion: spec.version, id: id, status: status, pid: pid, bundle: Hooks.bundle(of: spec), annotations: spec.annotations)
        }

        var json: String {
            let notes = annotations.sorted { $0.key < $1.key }.map { "\(quote($0.key)):\(quote($0.value))" }.joined(separator: ",")
            return "{\"ociVersion\":\(quote(ociVersion)),\"id\":\(quote(id)),\"status\":\(quote(status)),"
                + "\"pid\":\(pid),\"bundle\":\(quote(bundle)),\"annotations\":{\(notes)}}"
        }
    }

    /// The agent gets no bundle path; the rootfs's parent is where the bundle lives in Kata's layout.
    static func bundle(of spec: Grpc_Spec) -> String {
        let parts = spec.root.path.split(separator: "/").dropLast()
        return "/" + parts.joined(separator: "/")
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Starts one hook; `output` receives its stdout and stderr.
    static func start(_ hook: Grpc_Hook, state: State, output: Int32, exeFD: Int32 = -1) throws -> pid_t {
        let stdin = try Linux.pipe()
        defer {
            Linux.close(stdin.read)
            Linux.close(stdin.write)
        }
        let args = hook.args.isEmpty ? [hook.path] : hook.args
        let result = try spawn(
            exeFD: -1, path: hook.path, arguments: args, environment: hook.env,
            fds: [(stdin.read, 0), (output, 1), (output, 2)])
        if result.execErrno != 0 {
            throw Failure(description: "\(hook.path): \(LinuxError(stage: "exec", errno: result.execErrno))")
        }
        // The state is far below a pipe's capacity, so this cannot block on a hook that never reads.
        try? Linux.writeAll(stdin.write, Array(state.json.utf8))
        return result.pid
    }

    /// Agent side: in order, each to completion; the first failure stops the rest.
    static func run(_ hooks: [Grpc_Hook], kind: String, state: State) async throws {
        for (index, hook) in hooks.enumerated() {
            let name = "hooks.\(kind)[\(index)] (\(hook.path))"
            let pid: pid_t
            do { pid = try start(hook, state: state, output: 2) } catch { throw AgentError.invalidArgument("\(name): \(error)") }
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

    /// Helper side: same contract, blocking.
    static func runBlocking(_ hooks: [Grpc_Hook], kind: String, state: State) throws {
        let devNull = try Linux.open("/dev/null", O_WRONLY)
        defer { Linux.close(devNull) }
        for (index, hook) in hooks.enumerated() {
            let name = "hooks.\(kind)[\(index)] (\(hook.path))"
            let pid = try start(hook, state: state, output: devNull)
            let deadline = hook.timeout > 0 ? ContinuousClock.now + .seconds(hook.timeout) : nil
            var status: Int32 = 0
            while waitpid(pid, &status, WNOHANG) == 0 {
                if let deadline, ContinuousClock.now > deadline {
                    kill(pid, SIGKILL)
                    waitpid(pid, &status, 0)
                    throw LinuxError(stage: name, errno: ETIMEDOUT, detail: "timed out after \(hook.timeout)s")
                }
                usleep(2000)
            }
            let code = Linux.shellStatus(status)
            if code != 0 { throw LinuxError(stage: name, errno: 0, detail: "exited with status \(code)") }
        }
    }
}

/// A JSON string literal.
func quote(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20:
            let hex = String(scalar.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}
