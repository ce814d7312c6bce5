import Foundation
import VesselCore
import VesselLinux

/// What `vessel exec` changes in the container's own process when no `--process` file is given
/// (as runc, a `--process` file is taken as it is).
struct ExecOverrides {
    var args: [String]
    var tty: Bool
    var cwd: String?
    var env: [String]
    var user: (uid: UInt32, gid: UInt32)?
    var noNewPrivileges: Bool
    /// `--cap`: added to the bounding, effective and permitted sets (and ambient, when the process
    /// has inheritable ones), as runc does.
    var capabilities: [String]
}

extension Context {
    /// The process `vessel exec` runs, as OCI JSON: `--process FILE`, or the container's own
    /// process with the overrides applied.
    func execProcess(id: String, processFile: String?, _ overrides: ExecOverrides) throws(RuntimeError) -> OCISpec.Process {
        if let processFile {
            guard let data = FileManager.default.contents(atPath: processFile) else {
                throw RuntimeError("--process \(processFile): cannot read file")
            }
            return try OCISpec.decode(OCISpec.Process.self, data, name: "--process \(processFile)")
        }
        if overrides.args.isEmpty { throw RuntimeError("exec: no command given (args or --process)") }
        let record = try store.load(id)
        guard var process = try OCISpec.load(record.bundle + "/config.json").process else {
            throw RuntimeError("container \(id): its bundle has no process")
        }
        process.args = overrides.args
        process.terminal = overrides.tty
        if let cwd = overrides.cwd { process.cwd = cwd }
        process.env = (process.env ?? []) + overrides.env
        if let user = overrides.user {
            process.user.uid = user.uid
            process.user.gid = user.gid
        }
        if overrides.noNewPrivileges { process.noNewPrivileges = true }
        if !overrides.capabilities.isEmpty {
            var caps = process.capabilities ?? OCISpec.Capabilities()
            caps.bounding = (caps.bounding ?? []) + overrides.capabilities
            caps.effective = (caps.effective ?? []) + overrides.capabilities
            caps.permitted = (caps.permitted ?? []) + overrides.capabilities
            if !(caps.inheritable ?? []).isEmpty { caps.ambient = (caps.ambient ?? []) + overrides.capabilities }
            process.capabilities = caps
        }
        return process
    }

    private func execRecord(_ id: String) throws(RuntimeError) -> ContainerRecord {
        let record = try store.load(id)
        guard record.status == .running || record.status == .created else {
            throw .precondition("cannot exec in a \(record.status.rawValue) container")
        }
        return record
    }

    /// Runs `process` in the container with this process as its monitor; returns its exit status.
    func exec(
        id: String, execID: String, process: OCISpec.Process, consoleSocket: String?, signals: AsyncStream<Int32>?
    ) async throws(RuntimeError)
        -> Int32
    {
        let record = try execRecord(id)
        let json = try during("encode the process") { try JSONEncoder().encode(process) }
        return try await monitor(
            id, sandbox: record.sandbox, role: .exec(execID: execID, processJSON: json), terminal: process.terminal ?? false,
            consoleSocket: consoleSocket, signals: signals
        ) {}
    }

    /// `exec --detach`: a monitor process of its own runs it (the process on its fd 4); returns its
    /// pid once the process runs.
    func execDetached(id: String, execID: String, process: OCISpec.Process, consoleSocket: String?) throws(RuntimeError) -> Int32 {
        _ = try execRecord(id)
        let json = try during("encode the process") { try JSONEncoder().encode(process) }
        let pipe: (read: Int32, write: Int32)
        do { pipe = try Linux.pipe() } catch { throw RuntimeError(stage: "create a pipe", error) }
        // The whole process fits the pipe's buffer long before it is this big.
        guard json.count < 60_000 else { throw RuntimeError("exec: the process is too large (\(json.count) bytes)") }
        do { try Linux.writeAll(pipe.write, [UInt8](json)) } catch { throw RuntimeError(stage: "hand over the process", error) }
        Linux.close(pipe.write)
        defer { Linux.close(pipe.read) }
        let arguments = ["__shim", "--exec", execID] + (consoleSocket.map { ["--console-socket", $0] } ?? []) + [id]
        return try SelfExec.start(selfCommand(arguments), extraFDs: [(pipe.read, 4)], newSession: true)
    }
}
