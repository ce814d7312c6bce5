import Foundation
import VesselLinux

/// One process of the host, as /proc shows it.
public struct HostProcess: Sendable {
    public let pid: Int32
    /// /proc/PID/cmdline as read: each argument ends in a NUL.
    public let commandLine: String
    public var arguments: [String] { commandLine.split(separator: "\0").map(String.init) }
}

/// Scans of /proc: what a test checks is gone after it (processes, their mounts, their memory).
/// A process that exits while it is read is simply not there.
public enum HostProcesses {
    public static var pids: [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }
    }

    /// Every process with its command line (kernel threads have an empty one).
    public static func all() -> [HostProcess] {
        pids.compactMap { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
            return HostProcess(pid: pid, commandLine: String(decoding: data, as: UTF8.self))
        }
    }

    /// Pids whose command line has `marker` as one of its arguments.
    public static func pids(withArgument marker: String) -> [Int32] {
        all().filter { $0.arguments.contains(marker) }.map(\.pid)
    }

    /// Its start time (field 22, clock ticks since boot): with the pid, one process for good.
    public static func startTime(_ pid: Int32) -> String? {
        guard let fields = Linux.statFields(pid), fields.count > 19 else { return nil }
        return String(fields[19])
    }

    /// The children of `parent`, each with its start time.
    public static func children(of parent: Int32) -> [(pid: Int32, startTime: String)] {
        pids.compactMap { pid in
            guard let fields = Linux.statFields(pid), fields.count > 19, Int32(fields[1]) == parent else { return nil }
            return (pid, String(fields[19]))
        }
    }
}

/// /proc/PID/mountinfo, read as text: the fields tests look at.
public enum MountTable {
    /// The lines of a process's mountinfo (none when it is gone).
    public static func lines(_ pid: String = "self") -> [String] {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/mountinfo") else { return [] }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").map(String.init)
    }

    /// Field 5 of a mountinfo line: its mount point (as the kernel escapes it).
    public static func mountPoint(_ line: some StringProtocol) -> String? {
        String(line).split(separator: " ").dropFirst(4).first.map(String.init)
    }

    /// The mount points of mountinfo `text` (a container's own, say), in its order.
    public static func mountPoints(_ text: String) -> [String] {
        text.split(separator: "\n").compactMap { mountPoint($0) }
    }

    /// Our per-mount options (field 6) of the mount at `path`, the newest if stacked.
    public static func options(at path: String) -> Set<String>? {
        let line = lines().last { mountPoint($0) == path }
        return line.map { Set($0.split(separator: " ")[5].split(separator: ",").map(String.init)) }
    }

    /// Every line that mentions `fragment` in any process's mountinfo on the host.
    public static func everywhere(mentioning fragment: String) -> [String] {
        HostProcesses.pids.flatMap { lines(String($0)).filter { $0.contains(fragment) } }
    }
}
