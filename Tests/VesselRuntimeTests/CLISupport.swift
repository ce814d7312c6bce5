import Foundation
import Testing
import VesselDevSupport
import VesselTestSupport

@testable import VesselCore

/// The `vessel` binary built next to the tests, run as docker or podman would run it.
struct VesselCLI {
    static let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("vessel").path
    static let kernel = TestGuest.kernel ?? ""
    static let initrd = TestGuest.initrd ?? ""
    static var guestAvailable: Bool { !kernel.isEmpty && !initrd.isEmpty }

    let directory: String
    var root: String { directory + "/root" }
    var config: String { directory + "/configuration.toml" }

    /// `agent` and `hypervisor` are appended to those tables (e.g. "request_timeout = 2").
    init(agent: String = "", hypervisor: String = "", initrd: String = VesselCLI.initrd) throws {
        directory = try temporaryDirectory("vessel-cli")
        let accelerator = ProcessInfo.processInfo.environment["VESSEL_ACCEL"] ?? "auto"
        try """
        [hypervisor]
        kernel = "\(Self.kernel)"
        initrd = "\(initrd)"
        accelerator = "\(accelerator)"
        memory_mib = 256
        \(hypervisor)
        [agent]
        \(agent)
        """.write(toFile: config, atomically: true, encoding: .utf8)
    }

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Runs `vessel --root R --config C ARGS` (VesselTestSupport's runner: output through files, so
    /// a detached shim that inherits them cannot hold `create` open). A call that outlives `timeout`
    /// gets SIGINT, then SIGKILL, and fails the test instead of stalling the suite.
    @discardableResult
    func run(
        _ arguments: [String], stdin: String? = nil, global: [String] = [], timeout: Double = 300,
        stdoutFile: String? = nil, stdinFile: String? = nil, binary: String = binary, workingDirectory: String? = nil
    ) throws
        -> Result
    {
        let result: CommandResult
        do {
            result = try runCommand(
                [binary, "--root", root, "--config", config] + global + arguments, directory: workingDirectory,
                input: stdinFile.map { .file($0) } ?? .text(stdin ?? ""), stdoutFile: stdoutFile, timeout: timeout,
                timeoutSignal: SIGINT)
        } catch let timedOut as CommandTimedOut {
            Issue.record("vessel \(arguments.joined(separator: " ")) still running after \(Int(timeout)) s: killed")
            if timedOut.survivedKill { throw TestSupportError("vessel \(arguments.joined(separator: " ")) survived SIGKILL") }
            result = timedOut.result
        }
        return Result(status: result.status, stdout: result.output, stderr: result.errors)
    }

    func bundle(_ args: [String], terminal: Bool = false, extraMounts: [[String: Any]] = []) throws -> String {
        let dir = directory + "/bundle-\(UUID().uuidString.prefix(8))"
        try OCIBundle.make(at: dir, args: args, terminal: terminal, extraMounts: extraMounts)
        return dir
    }

    func state(_ id: String) throws -> [String: Any] {
        let result = try run(["state", id])
        guard result.status == 0, let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] else {
            throw TestSupportError("state \(id) failed: \(result.stderr)")
        }
        return object
    }

    /// The sandbox record a lone container's owner writes (QEMU's and the owner's pids).
    func sandbox(_ id: String) throws -> SandboxRecord {
        let file = SandboxPaths(root: root, id: id).recordFile
        return try JSONDecoder().decode(SandboxRecord.self, from: Data(contentsOf: URL(fileURLWithPath: file)))
    }

    /// Nothing of the container may remain: state dir, sandbox dir, mounts, sockets, processes.
    func expectNothingLeft(_ id: String, cgroupsPath: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(!FileManager.default.fileExists(atPath: root + "/" + id), "state dir left", sourceLocation: sourceLocation)
        let sandboxDirectory = SandboxPaths(root: root, id: id).directory
        #expect(
            !FileManager.default.fileExists(atPath: sandboxDirectory), "sandbox dir \(sandboxDirectory) left",
            sourceLocation: sourceLocation)
        let mounts = MountTable.lines().filter { $0.contains(root) || $0.contains(sandboxDirectory) }
        #expect(mounts.isEmpty, "mounts left: \(mounts)", sourceLocation: sourceLocation)
        // The owner and the monitors name the root and end with the id, QEMU names the sandbox directory.
        let ours = HostProcesses.all().filter { process in
            (process.arguments.contains(root) && process.arguments.last == id) || process.commandLine.contains(sandboxDirectory)
        }.map(\.pid)
        #expect(ours.isEmpty, "processes left: \(ours)", sourceLocation: sourceLocation)
        // Every mounted hierarchy as the owner finds them: /sys/fs/cgroup itself on a v2-only host.
        let hierarchies = HostCgroup.hierarchies()
        #expect(!hierarchies.isEmpty, "no cgroup hierarchy mounted read-write", sourceLocation: sourceLocation)
        let relative = HostCgroup.relativePath(cgroupsPath: cgroupsPath, id: id)
        let cgroups = hierarchies.map { $0 + "/" + relative }.filter { FileManager.default.fileExists(atPath: $0) }
        #expect(cgroups.isEmpty, "cgroups left: \(cgroups)", sourceLocation: sourceLocation)
    }

    func cleanUp() {
        if let ids = try? FileManager.default.contentsOfDirectory(atPath: root) {
            for id in ids { _ = try? run(["delete", "--force", id]) }
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}
