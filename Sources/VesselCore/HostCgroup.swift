import Foundation
import VesselLinux

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
    public static func relativePath(cgroupsPath: String?, id: String) -> String {
        guard let path = cgroupsPath, !path.isEmpty else { return "vessel/\(id)" }
        let parts = path.split(separator: ":", omittingEmptySubsequences: false)
        if parts.count == 3 { return "\(parts[0])/\(parts[1])-\(parts[2]).scope" }
        return path.split(separator: "/").filter { $0 != ".." && $0 != "." }.joined(separator: "/")
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
