import Foundation
import VesselLinux

/// This binary re-executed in another role (a sandbox owner, a process monitor, containerd's shim
/// daemon) through the C spawn: never a fork of the threaded Swift process.
public enum SelfExec {
    /// The fd a re-executed helper reports on: one line, "ok" or "error: ...".
    public static let reportFD: Int32 = 3

    /// Starts `arguments` (argv[0] included) with `fds` mapped as given; returns its pid.
    public static func spawn(
        _ arguments: [String], fds: [(src: Int32, dst: Int32)], newSession: Bool,
        namespaces: UInt64 = 0
    ) throws(RuntimeError) -> Int32 {
        let environment = ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" }
        do throws(LinuxError) {
            let spawned = try VesselLinux.spawn(
                exeFD: -1, path: "/proc/self/exe", arguments: arguments, environment: environment,
                fds: fds, namespaces: namespaces, newSession: newSession)
            if spawned.execErrno != 0 {
                Linux.reap(spawned.pid)
                throw LinuxError(stage: "execve", errno: spawned.execErrno, detail: "/proc/self/exe")
            }
            return spawned.pid
        } catch {
            throw RuntimeError(stage: "start \(arguments.dropFirst().first ?? "helper")", error)
        }
    }

    /// Starts a helper with stdio as given and a report pipe on fd 3, and waits for its report.
    /// On "error: ..." (or none) the helper is reaped and the error thrown.
    public static func start(
        _ arguments: [String], stdio: [Int32] = [0, 1, 2], extraFDs: [(src: Int32, dst: Int32)] = [],
        newSession: Bool, namespaces: UInt64 = 0
    ) throws(RuntimeError) -> Int32 {
        let pipe: (read: Int32, write: Int32)
        do { pipe = try Linux.pipe() } catch { throw RuntimeError(stage: "create a report pipe", error) }
        defer { Linux.close(pipe.read) }
        let fds = stdio.enumerated().map { (src: $0.element, dst: Int32($0.offset)) } + [(pipe.write, reportFD)] + extraFDs
        let pid: Int32
        do {
            pid = try spawn(arguments, fds: fds, newSession: newSession, namespaces: namespaces)
        } catch {
            Linux.close(pipe.write)
            throw error
        }
        Linux.close(pipe.write)
        let line = readReport(pipe.read)
        if line == "ok" { return pid }
        let status = Linux.reap(pid)
        if line.hasPrefix("error: ") { throw RuntimeError(String(line.dropFirst(7))) }
        throw RuntimeError("\(arguments.dropFirst().first ?? "helper") exited without a report (status \(status))")
    }

    private static func readReport(_ fd: Int32) -> String {
        var report = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            report += buffer[0..<n]
        }
        return String(decoding: report, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The helper's side: one line, then the fd is closed so the waiting parent goes on.
    public static func report(_ result: Result<Void, RuntimeError>) {
        let line: String
        switch result {
        case .success: line = "ok\n"
        case .failure(let error): line = "error: \(error.message)\n"
        }
        _ = try? Linux.writeAll(reportFD, Array(line.utf8))
        Linux.close(reportFD)
    }
}

/// What a sandbox whose owner died leaves on the host, and its removal: QEMU (only if it is still
/// ours: its command line names the sandbox's socket), the mounts, the host cgroups, the directory.
public enum SandboxCleanup {
    public static func afterDeadOwner(_ store: StateStore, sandbox: String) {
        let paths = store.sandboxPaths(sandbox)
        guard let record = store.loadSandbox(sandbox) else {
            Linux.removeTree(paths.directory)
            return
        }
        guard !record.ownerAlive else { return }
        if record.qemuPid > 0, let cmdline = try? Linux.readFile("/proc/\(record.qemuPid)/cmdline"),
            cmdline.contains(paths.vhostUserSocket)
        {
            kill(record.qemuPid, SIGKILL)
            _ = Linux.waitGone(pid: record.qemuPid, timeout: 10)
        }
        SharedMounts.release(record.mounts)
        HostCgroup.remove(record.hostCgroups)
        Linux.removeTree(paths.directory)
    }
}
