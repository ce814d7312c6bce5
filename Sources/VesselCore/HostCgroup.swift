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
                fields[3].split(separator: ",").contains("rw")
            else { return nil }
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

    /// The container's limits on the sandbox's host cgroup as well: the guest enforces them only
    /// as long as its kernel is ours, so the sandbox's host processes (QEMU's vCPU and I/O threads,
    /// the owner, the monitor) are held to them there too, sized for a VM the way Kata sizes its
    /// sandbox cgroup. Each value goes to the file that exists in each hierarchy's directory (v1 or
    /// v2); a value the host refuses is a warning, as the guest applies it anyway.
    public static func limit(_ resources: OCISpec.Resources?, in directories: [String], warn: (String) -> Void) {
        guard let resources else { return }
        let writes = cpuWrites(resources.cpu) + pidsWrites(resources.pids) + deviceWrites(resources.devices)
        for directory in directories {
            for write in writes where Linux.exists(directory + "/" + write.file) {
                do {
                    if write == ("devices.deny", "a") {
                        try revokeAllDevices(directory)
                    } else {
                        try Linux.writeFile(directory + "/" + write.file, write.value)
                    }
                } catch {
                    warn("host cgroup \(directory)/\(write.file)=\(write.value): \(error)")
                }
            }
            if let devices = resources.devices, isUnified(directory) {
                do { try DeviceProgram.replace(with: hostRules(devices), cgroup: directory) } catch {
                    warn("host cgroup \(directory) device program: \(error)")
                }
            }
            // A parent's deny-all also revoked QEMU's devices in its child: give them back.
            let vmm = directory + "/" + vmmChild
            if resources.devices != nil, Linux.exists(vmm + "/devices.list") {
                do { try restrictToSandboxDevices(vmm) } catch { warn("host cgroup \(vmm): \(error)") }
            }
        }
    }

    /// A cgroup v2 directory: its device rules are a program, not files.
    static func isUnified(_ directory: String) -> Bool {
        Linux.exists(directory + "/cgroup.controllers")
    }

    private static func cpuWrites(_ cpu: OCISpec.CPU?) -> [(file: String, value: String)] {
        guard let cpu else { return [] }
        var writes: [(file: String, value: String)] = []
        if let shares = cpu.shares, shares > 0 {
            writes += [("cpu.shares", "\(shares)"), ("cpu.weight", "\(CgroupConversion.weight(shares: shares))")]
        }
        if cpu.quota != nil || cpu.period != nil {
            let quota = cpu.quota ?? 0, period = cpu.period ?? 0
            // v1: the period first, or a quota below the old period may be refused.
            writes += [
                ("cpu.cfs_period_us", "\(period == 0 ? CgroupConversion.defaultPeriod : period)"),
                ("cpu.cfs_quota_us", quota > 0 ? "\(quota)" : "-1"),
                ("cpu.max", CgroupConversion.cpuMax(quota: quota, period: period)),
            ]
        }
        if let cpus = cpu.cpus, !cpus.isEmpty { writes.append(("cpuset.cpus", cpus)) }
        if let mems = cpu.mems, !mems.isEmpty { writes.append(("cpuset.mems", mems)) }
        return writes
    }

    /// What the sandbox's own host tasks need at most: QEMU's main, RCU and vCPU threads and its
    /// thread pool (64 workers under 9p load), the owner's and the monitor's threads (NIO and
    /// Swift's pools grow with the cores), the hooks. A container's pids limit counts guest
    /// processes; on the host it bounds these, never below.
    public static let sandboxTasks = Int64(256 + 4 * ProcessInfo.processInfo.activeProcessorCount)

    private static func pidsWrites(_ pids: OCISpec.Pids?) -> [(file: String, value: String)] {
        guard let pids else { return [] }
        return [("pids.max", pids.limit > 0 ? "\(max(pids.limit, sandboxTasks))" : "max")]
    }

    /// Devices the sandbox's host processes open (Kata's list for its sandbox cgroup): the
    /// null/zero/full/random/urandom/tty/ptmx/pts set every container has, tun (taps), kvm,
    /// vhost-net and vhost-vsock. The sandbox's cgroup allows them after the spec's rules; QEMU's
    /// own child cgroup (`vmmDevices`) allows only them: a QEMU taken over by its guest cannot
    /// open the host's disks, even as root with CAP_DAC_OVERRIDE, whatever the spec allows.
    static let sandboxDevices: [DeviceRule] = [
        (1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2), (136, nil), (10, 200), (10, 232), (10, 238), (10, 241),
    ].map { DeviceRule(allow: true, kind: .char, major: $0.0, minor: $0.1) }

    /// The sandbox's rules, for either hierarchy: a deny-all, the spec's in its order (a later rule
    /// overrides an earlier one), then `sandboxDevices`, so the sandbox never has more than the
    /// spec and those. A rule that allows every device (a privileged container's) is the guest's
    /// business, not the host's: the guest's devices are its own.
    static func hostRules(_ rules: [OCISpec.DeviceCgroup]) -> [DeviceRule] {
        let spec = rules.compactMap { rule -> DeviceRule? in
            let kind = DeviceRule.Kind(type: rule.type)
            let major = rule.major.flatMap { $0 < 0 ? nil : $0 }
            if rule.allow && (kind == .all || major == nil) { return nil }
            return DeviceRule(
                allow: rule.allow, kind: kind, major: major, minor: rule.minor.flatMap { $0 < 0 ? nil : $0 },
                access: rule.access?.lowercased() ?? "")
        }
        return [.denyAll] + spec + sandboxDevices
    }

    /// A rule as cgroup v1's devices files and devices.list spell it.
    static func v1Entry(_ rule: DeviceRule) -> String {
        let number = { (n: Int64?) in n.map { "\($0)" } ?? "*" }
        switch rule.kind {
        case .all: return "a"
        case .char, .block:
            let access = rule.access.isEmpty ? "rwm" : rule.access
            return "\(rule.kind == .char ? "c" : "b") \(number(rule.major)):\(number(rule.minor)) \(access)"
        }
    }

    /// cgroup v1's devices files for `hostRules`; the deny-all goes through `revokeAllDevices`.
    /// On a v2 directory (no devices files) this part is a no-op.
    static func deviceWrites(_ rules: [OCISpec.DeviceCgroup]?) -> [(file: String, value: String)] {
        guard let rules else { return [] }
        return hostRules(rules).map { ($0.allow ? "devices.allow" : "devices.deny", v1Entry($0)) }
    }

    /// v1 refuses a deny-all (EINVAL) in a cgroup with children, as the sandbox's is once QEMU's
    /// `vmm` exists: then each rule it holds is revoked on its own, so that `update` replaces the
    /// rules instead of adding to them.
    private static func revokeAllDevices(_ directory: String) throws(LinuxError) {
        do {
            try Linux.writeFile(directory + "/devices.deny", "a")
        } catch  where error.errno == EINVAL {
            for rule in try Linux.readFile(directory + "/devices.list").split(separator: "\n") where !rule.isEmpty {
                try Linux.writeFile(directory + "/devices.deny", String(rule))
            }
        }
    }

    /// Where QEMU starts: a child of the sandbox's cgroup that allows only `sandboxDevices` (the
    /// spec's rules are its guest's business), in the v1 devices hierarchy (joined through its
    /// cgroup.procs) and in the v2 one (started in with CLONE_INTO_CGROUP; its program narrows the
    /// sandbox's, both must allow). `remove` takes them away with their parents.
    public struct VMMCgroups: Sendable {
        public var devices: String?
        public var unified: String?

        public init(devices: String? = nil, unified: String? = nil) {
            self.devices = devices
            self.unified = unified
        }
    }

    public static func vmmCgroups(in directories: [String]) throws(RuntimeError) -> VMMCgroups {
        var made = VMMCgroups()
        do {
            if let parent = directories.first(where: { Linux.exists($0 + "/devices.list") }) {
                made.devices = try makeVMMChild(of: parent, restrict: restrictToSandboxDevices)
            }
            if let parent = directories.first(where: isUnified) {
                made.unified = try makeVMMChild(of: parent) { child throws(LinuxError) in
                    try DeviceProgram.replace(with: [.denyAll] + sandboxDevices, cgroup: child)
                }
            }
        } catch {
            for child in [made.devices, made.unified].compactMap({ $0 }) { rmdir(child) }
            throw error
        }
        return made
    }

    static let vmmChild = "vmm"

    private static func makeVMMChild(of parent: String, restrict: (String) throws(LinuxError) -> Void) throws(RuntimeError) -> String {
        let child = parent + "/" + vmmChild
        do {
            try Linux.mkdirAll(child)
            try restrict(child)
        } catch {
            rmdir(child)
            throw RuntimeError(stage: "make QEMU's devices cgroup \(child)", error)
        }
        return child
    }

    private static func restrictToSandboxDevices(_ directory: String) throws(LinuxError) {
        try Linux.writeFile(directory + "/devices.deny", "a")
        for rule in sandboxDevices { try Linux.writeFile(directory + "/devices.allow", v1Entry(rule)) }
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
            for _ in 0..<150 where rmdir(directory + "/" + vmmChild) != 0 && errno == EBUSY { usleep(20_000) }
            for _ in 0..<150 where rmdir(directory) != 0 && errno == EBUSY { usleep(20_000) }
            let parent = (directory as NSString).deletingLastPathComponent
            if parent.hasSuffix("/vessel") { rmdir(parent) }
        }
    }
}
