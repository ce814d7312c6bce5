import Foundation
import VesselLinux
import VesselSpec

/// The sandbox's processes (shim, vsock backend thread, QEMU) in one host cgroup per hierarchy:
/// the spec's `linux.cgroupsPath` when the caller gave one (docker and podman look there), else
/// vessel/ID. Works on v1, v2 and hybrid hosts: every mounted cgroup hierarchy gets the directory.
public enum HostCgroup {
    /// Mount points of cgroup and cgroup2 file systems (read-write only).
    static func hierarchies() -> [String] {
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        return mounts.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count >= 4, fields[2] == "cgroup" || fields[2] == "cgroup2",
                  fields[3].split(separator: ",").contains("rw") else { return nil }
            return String(fields[1])
        }
    }

    /// The relative cgroup for a container: systemd-style "slice:prefix:name" paths become prefix-name.scope.
    /// Either way it stays below each hierarchy's root: "." and ".." are dropped from every part.
    public static func relativePath(cgroupsPath: String?, id: String) -> String {
        guard let path = cgroupsPath, !path.isEmpty else { return "vessel/\(id)" }
        let parts = path.split(separator: ":", omittingEmptySubsequences: false)
        let raw = parts.count == 3 ? "\(parts[0])/\(parts[1])-\(parts[2]).scope" : path
        let clean = raw.split(separator: "/").filter { $0 != ".." && $0 != "." }.joined(separator: "/")
        return clean.isEmpty ? "vessel/\(id)" : clean
    }

    /// Moves `pid` into the cgroup in every hierarchy; returns the directories that hold it.
    public static func join(relativePath: String, pid: Int32) throws(RuntimeError) -> [String] {
        var joined: [String] = []
        for mountPoint in hierarchies() {
            let directory = mountPoint + "/" + relativePath
            do {
                try Linux.mkdirAll(directory)
                try inheritCpuset(mountPoint: mountPoint, relativePath: relativePath)
                try Linux.writeFile(directory + "/cgroup.procs", "\(pid)")
                joined.append(directory)
            } catch {
                remove(joined)
                throw RuntimeError(stage: "put the sandbox into cgroup \(directory)", error)
            }
        }
        return joined
    }

    /// Moves one more process into cgroups `join` made.
    public static func add(_ pid: Int32, to directories: [String], warn: (String) -> Void) {
        for directory in directories {
            do { try Linux.writeFile(directory + "/cgroup.procs", "\(pid)") } catch {
                warn("move \(pid) into \(directory): \(error)")
            }
        }
    }

    /// The container's CPU limits on the sandbox's host cgroup as well: the guest enforces them
    /// only as long as its kernel is ours, so QEMU (every vCPU and I/O thread) is held to them on
    /// the host. Each value goes to the file that exists in each hierarchy's directory (v1 cpu,
    /// v1 cpuset, v2); a value the host refuses is a warning, as the guest applies it anyway.
    public static func limitCPU(_ cpu: OCISpec.CPU?, in directories: [String], warn: (String) -> Void) {
        guard let cpu else { return }
        var writes: [(file: String, value: String)] = []
        if let shares = cpu.shares, shares > 0 {
            writes += [("cpu.shares", "\(shares)"), ("cpu.weight", "\(CgroupConversion.weight(shares: shares))")]
        }
        if cpu.quota != nil || cpu.period != nil {
            let quota = cpu.quota ?? 0, period = cpu.period ?? 0
            // v1: the period first, or a quota below the old period may be refused.
            writes += [("cpu.cfs_period_us", "\(period == 0 ? CgroupConversion.defaultPeriod : period)"),
                       ("cpu.cfs_quota_us", quota > 0 ? "\(quota)" : "-1"),
                       ("cpu.max", CgroupConversion.cpuMax(quota: quota, period: period))]
        }
        if let cpus = cpu.cpus, !cpus.isEmpty { writes.append(("cpuset.cpus", cpus)) }
        if let mems = cpu.mems, !mems.isEmpty { writes.append(("cpuset.mems", mems)) }
        for directory in directories {
            for write in writes where Linux.exists(directory + "/" + write.file) {
                do { try Linux.writeFile(directory + "/" + write.file, write.value) } catch {
                    warn("host cgroup \(directory)/\(write.file)=\(write.value): \(error)")
                }
            }
        }
    }

    /// A v1 cpuset cgroup refuses processes (ENOSPC) until cpus and mems are set: copy them down.
    static func inheritCpuset(mountPoint: String, relativePath: String) throws(LinuxError) {
        var parent = mountPoint
        for component in relativePath.split(separator: "/") {
            let child = parent + "/" + component
            for file in ["cpuset.cpus", "cpuset.mems"] where Linux.exists(child + "/" + file) {
                let current = try Linux.readFile(child + "/" + file).trimmingCharacters(in: .whitespacesAndNewlines)
                if current.isEmpty { try Linux.writeFile(child + "/" + file, try Linux.readFile(parent + "/" + file)) }
            }
            parent = child
        }
    }

    /// The sandbox owner's own way out: it moves itself to each hierarchy's root (exempt from
    /// cgroup v2's no-internal-process rule), then removes the directories.
    public static func leave(_ directories: [String]) {
        let roots = hierarchies()
        for directory in directories {
            guard let root = roots.filter({ directory.hasPrefix($0 + "/") }).max(by: { $0.count < $1.count }) else { continue }
            try? Linux.writeFile(root + "/cgroup.procs", "\(getpid())")
        }
        remove(directories)
    }

    /// Removes the leaf directories (and an empty "vessel" parent); they must be empty of processes.
    public static func remove(_ directories: [String]) {
        for directory in directories {
            // A just-killed shim or QEMU stays in the cgroup as a zombie until its new parent (init)
            // reaps it: EBUSY for a moment.
            for _ in 0..<150 where rmdir(directory) != 0 && errno == EBUSY { usleep(20_000) }
            let parent = (directory as NSString).deletingLastPathComponent
            if parent.hasSuffix("/vessel") { rmdir(parent) }
        }
    }
}
