import VesselLinux
import VesselProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// A container's cgroup: cgroup v2 in the guest (our kernel), or the v1 controllers this kind of
/// host offers in host mode. Enough for stats and the freezer; limits belong to the next layer.
struct Cgroup: Sendable {
    enum Layout: Sendable {
        case v2(root: String)
        case v1(root: String)
    }

    static let v1Controllers = ["freezer", "memory", "cpuacct", "pids"]

    /// nil when this machine offers no usable cgroup hierarchy.
    static func detect(root: String = "/sys/fs/cgroup") -> Layout? {
        if let controllers = try? Linux.readFile(root + "/cgroup.controllers"),
            !controllers.trimmed.isEmpty
        {
            return .v2(root: root)
        }
        if v1Controllers.allSatisfy({ Linux.isDirectory(root + "/" + $0) }) { return .v1(root: root) }
        return nil
    }

    let layout: Layout
    let relative: String

    /// The v2 directory, where device programs attach; nil on v1.
    var unifiedDirectory: String? {
        if case .v2(let root) = layout { return root + "/" + relative }
        return nil
    }

    private var directories: [String] {
        switch layout {
        case .v2(let root): [root + "/" + relative]
        case .v1(let root): Self.v1Controllers.map { root + "/" + $0 + "/" + relative }
        }
    }

    private func file(_ controller: String, _ name: String) -> String {
        switch layout {
        case .v2(let root): "\(root)/\(relative)/\(name)"
        case .v1(let root): "\(root)/\(controller)/\(relative)/\(name)"
        }
    }

    static func create(_ layout: Layout, relative: String) throws -> Cgroup {
        let cgroup = Cgroup(layout: layout, relative: relative)
        if case .v2(let root) = layout {
            // Children can only use controllers their parent enabled for its subtree.
            var path = root
            for component in relative.split(separator: "/").dropLast() {
                path += "/" + component
                try Linux.mkdirAll(path)
                cgroup.enableControllers(at: path)
            }
            cgroup.enableControllers(at: root)
        }
        for directory in cgroup.directories { try Linux.mkdirAll(directory) }
        return cgroup
    }

    private func enableControllers(at path: String) {
        guard let available = try? Linux.readFile(path + "/cgroup.controllers") else { return }
        for controller in available.split(separator: " ") {
            try? Linux.writeFile(path + "/cgroup.subtree_control", "+" + controller.trimmed)
        }
    }

    /// The v2 directory, for CLONE_INTO_CGROUP (nil on v1 hosts: the caller adds the pid after).
    func openDirectory() throws -> Int32? {
        guard let unifiedDirectory else { return nil }
        return try Linux.open(unifiedDirectory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    }

    func add(_ pid: pid_t) throws {
        for directory in directories { try Linux.writeFile(directory + "/cgroup.procs", "\(pid)") }
    }

    /// Writes `linux.resources`; returns what could not be applied, for the log.
    func apply(_ resources: Grpc_LinuxResources) throws -> [String] {
        switch layout {
        case .v2(let root):
            let (writes, skipped) = CgroupResources.v2(resources)
            for write in writes { try Linux.writeFile("\(root)/\(relative)/\(write.file)", write.value) }
            return skipped
        case .v1(let root):
            let writes = CgroupResources.v1(resources)
            for write in writes {
                let parts = write.file.split(separator: "/", maxSplits: 1)
                try Linux.writeFile("\(root)/\(parts[0])/\(relative)/\(parts[1])", write.value)
            }
            let all = CgroupResources.v2(resources)
            return all.writes.count > writes.count ? ["host mode (cgroup v1): only memory and pids limits are applied"] : []
        }
    }

    /// How many times the kernel's OOM killer struck in this cgroup.
    var oomKills: UInt64 {
        switch layout {
        case .v2: keyValues(file("", "memory.events"))["oom_kill"] ?? 0
        case .v1: keyValues(file("memory", "memory.oom_control"))["oom_kill"] ?? 0
        }
    }

    func freeze(_ frozen: Bool) throws {
        switch layout {
        case .v2: try Linux.writeFile(file("", "cgroup.freeze"), frozen ? "1" : "0")
        case .v1: try Linux.writeFile(file("freezer", "freezer.state"), frozen ? "FROZEN" : "THAWED")
        }
    }

    /// Removes the container's cgroup and then its parents (vessel/<sandbox>, vessel) as far as
    /// they are empty: rmdir refuses a cgroup that still has children or processes.
    func remove() {
        for directory in directories {
            var path = Substring(directory)
            for _ in relative.split(separator: "/") {
                guard rmdir(String(path)) == 0, let slash = path.lastIndex(of: "/") else { break }
                path = path[..<slash]
            }
        }
    }

    func stats() -> Grpc_CgroupStats {
        var stats = Grpc_CgroupStats()
        switch layout {
        case .v2:
            let cpu = keyValues(file("", "cpu.stat"))
            stats.cpuStats.cpuUsage.totalUsage = (cpu["usage_usec"] ?? 0) * 1000
            stats.cpuStats.cpuUsage.usageInUsermode = (cpu["user_usec"] ?? 0) * 1000
            stats.cpuStats.cpuUsage.usageInKernelmode = (cpu["system_usec"] ?? 0) * 1000
            stats.memoryStats.usage.usage = number(file("", "memory.current"))
            stats.memoryStats.usage.maxUsage = number(file("", "memory.peak"))
            stats.memoryStats.usage.limit = number(file("", "memory.max"))
            stats.memoryStats.stats = keyValues(file("", "memory.stat"))
            stats.pidsStats.current = number(file("", "pids.current"))
            stats.pidsStats.limit = number(file("", "pids.max"))
        case .v1:
            stats.cpuStats.cpuUsage.totalUsage = number(file("cpuacct", "cpuacct.usage"))
            stats.cpuStats.cpuUsage.percpuUsage = ((try? Linux.readFile(file("cpuacct", "cpuacct.usage_percpu"))) ?? "")
                .split(separator: " ").compactMap { UInt64($0.trimmed) }
            let ticks = keyValues(file("cpuacct", "cpuacct.stat"))
            let nanosPerTick = UInt64(1_000_000_000 / sysconf(Int32(_SC_CLK_TCK)))
            stats.cpuStats.cpuUsage.usageInUsermode = (ticks["user"] ?? 0) * nanosPerTick
            stats.cpuStats.cpuUsage.usageInKernelmode = (ticks["system"] ?? 0) * nanosPerTick
            stats.memoryStats.usage.usage = number(file("memory", "memory.usage_in_bytes"))
            stats.memoryStats.usage.maxUsage = number(file("memory", "memory.max_usage_in_bytes"))
            stats.memoryStats.usage.limit = number(file("memory", "memory.limit_in_bytes"))
            stats.memoryStats.usage.failcnt = number(file("memory", "memory.failcnt"))
            stats.memoryStats.stats = keyValues(file("memory", "memory.stat"))
            stats.memoryStats.cache = stats.memoryStats.stats["cache"] ?? 0
            stats.pidsStats.current = number(file("pids", "pids.current"))
            stats.pidsStats.limit = number(file("pids", "pids.max"))
        }
        return stats
    }

    /// "max" and missing files read as 0, as runc reports an unlimited value.
    private func number(_ path: String) -> UInt64 {
        UInt64(((try? Linux.readFile(path)) ?? "").trimmed) ?? 0
    }

    private func keyValues(_ path: String) -> [String: UInt64] {
        var result: [String: UInt64] = [:]
        for line in ((try? Linux.readFile(path)) ?? "").split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let value = UInt64(parts[1]) { result[String(parts[0])] = value }
        }
        return result
    }
}

extension StringProtocol {
    var trimmed: String {
        var s = Substring(self)
        while let c = s.first, c.isWhitespace { s.removeFirst() }
        while let c = s.last, c.isWhitespace { s.removeLast() }
        return String(s)
    }
}
