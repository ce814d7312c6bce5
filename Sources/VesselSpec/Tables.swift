import VesselLinux
import VesselProtocol

/// Capability names as the OCI spec writes them, indexed by their number.
public enum Capabilities {
    public static let names = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
        "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    ]
    private static let numbers = Dictionary(uniqueKeysWithValues: names.enumerated().map { ($1, $0) })

    /// A bit mask of the named capabilities; an unknown name is an error naming the field.
    public static func mask(_ list: [String], field: String) throws(SpecError) -> UInt64 {
        var mask: UInt64 = 0
        for name in list {
            let canonical = name.uppercased().hasPrefix("CAP_") ? name.uppercased() : "CAP_" + name.uppercased()
            guard let number = numbers[canonical] else {
                throw SpecError("\(field): unknown capability \"\(name)\"")
            }
            mask |= 1 << UInt64(number)
        }
        return mask
    }

    public struct Sets: Equatable, Sendable {
        public var bounding: UInt64, effective: UInt64, permitted: UInt64, inheritable: UInt64, ambient: UInt64
    }

    /// A process that names no capabilities gets none, as under runc (keeping the helper's full
    /// set would make every such container root with every capability).
    public static func sets(_ process: Grpc_Process, field: String) throws(SpecError) -> Sets {
        let c = process.capabilities
        return Sets(
            bounding: try mask(c.bounding, field: "\(field).capabilities.bounding"),
            effective: try mask(c.effective, field: "\(field).capabilities.effective"),
            permitted: try mask(c.permitted, field: "\(field).capabilities.permitted"),
            inheritable: try mask(c.inheritable, field: "\(field).capabilities.inheritable"),
            ambient: try mask(c.ambient, field: "\(field).capabilities.ambient"))
    }
}

public enum Rlimits {
    public static let resources: [String: Int32] = [
        "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4, "RLIMIT_RSS": 5,
        "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9, "RLIMIT_LOCKS": 10,
        "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13, "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
    ]

    public static func validate(_ process: Grpc_Process, field: String) throws(SpecError) {
        var seen: Set<String> = []
        for (index, limit) in process.rlimits.enumerated() {
            let name = "\(field).rlimits[\(index)]"
            guard resources[limit.type] != nil else { throw SpecError("\(name).type \"\(limit.type)\" is not an rlimit") }
            guard limit.soft <= limit.hard else {
                throw SpecError("\(name): soft limit \(limit.soft) exceeds hard limit \(limit.hard)")
            }
            guard seen.insert(limit.type).inserted else { throw SpecError("\(name): \(limit.type) given twice") }
        }
    }
}

/// Only keys the container's own namespaces isolate may be set: anything else would change the
/// whole VM (or, in host mode, the host) for everyone.
public enum Sysctl {
    private static let ipcKeys: Set<String> = [
        "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax", "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ]

    public static func validate(_ sysctl: [String: String], namespaces: Set<Namespace>) throws(SpecError) {
        for key in sysctl.keys.sorted() {
            let field = "OCI.linux.sysctl[\(key)]"
            if key.contains("/") || key.split(separator: ".").contains("..") {
                throw SpecError("\(field): invalid key")
            }
            let needed: Namespace
            if ipcKeys.contains(key) || key.hasPrefix("fs.mqueue.") {
                needed = .ipc
            } else if key.hasPrefix("net.") {
                needed = .network
            } else if key == "kernel.hostname" || key == "kernel.domainname" {
                needed = .uts
            } else {
                throw SpecError("\(field): not a namespaced sysctl, refused")
            }
            guard namespaces.contains(needed) else {
                throw SpecError("\(field): needs a private \(needed.rawValue) namespace")
            }
        }
    }
}

public enum SeccompSpec {
    public static let actions: Set<String> = [
        "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
    ]
    public static let operators: Set<String> = [
        "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ",
    ]
    public static let flags: Set<String> = ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]

    public static func validate(_ seccomp: Grpc_LinuxSeccomp) throws(SpecError) {
        let field = "OCI.linux.seccomp"
        guard actions.contains(seccomp.defaultAction) else {
            throw SpecError("\(field).defaultAction \"\(seccomp.defaultAction)\" is not a seccomp action")
        }
        if seccomp.defaultAction == "SCMP_ACT_NOTIFY" {
            throw SpecError("\(field).defaultAction: SCMP_ACT_NOTIFY needs a listener, which Vessel does not offer")
        }
        for flag in seccomp.flags where !flags.contains(flag) {
            throw SpecError("\(field).flags: unknown flag \"\(flag)\"")
        }
        for (index, rule) in seccomp.syscalls.enumerated() {
            guard actions.contains(rule.action), rule.action != "SCMP_ACT_NOTIFY" else {
                throw SpecError("\(field).syscalls[\(index)].action \"\(rule.action)\" is not supported")
            }
            for (a, arg) in rule.args.enumerated() {
                guard operators.contains(arg.op) else {
                    throw SpecError("\(field).syscalls[\(index)].args[\(a)].op \"\(arg.op)\" is not a comparison")
                }
                guard arg.index < 6 else {
                    throw SpecError("\(field).syscalls[\(index)].args[\(a)].index \(arg.index) is out of range 0-5")
                }
            }
        }
    }
}
