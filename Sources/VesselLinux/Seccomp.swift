import CSeccomp

#if canImport(Glibc)
    import Glibc
#endif

/// A seccomp filter in OCI's terms (action and operator names as the spec spells them), built
/// with libseccomp and loaded into the calling process (and so into what it execs). The spec's
/// rules were checked before (`VesselSpec`); names this kernel or libseccomp does not know are
/// skipped with a line to `log`, as runc does.
public struct SeccompFilter: Sendable {
    public struct Condition: Sendable {
        public var index: UInt32
        public var op: String
        public var value: UInt64
        public var valueTwo: UInt64

        public init(index: UInt32, op: String, value: UInt64, valueTwo: UInt64) {
            self.index = index
            self.op = op
            self.value = value
            self.valueTwo = valueTwo
        }
    }

    public struct Rule: Sendable {
        public var names: [String]
        public var action: String
        public var errnoRet: UInt32?
        public var conditions: [Condition]

        public init(names: [String], action: String, errnoRet: UInt32?, conditions: [Condition]) {
            self.names = names
            self.action = action
            self.errnoRet = errnoRet
            self.conditions = conditions
        }
    }

    public var defaultAction: String
    public var flags: [String]
    public var architectures: [String]
    public var rules: [Rule]

    public init(defaultAction: String, flags: [String], architectures: [String], rules: [Rule]) {
        self.defaultAction = defaultAction
        self.flags = flags
        self.architectures = architectures
        self.rules = rules
    }

    static func action(_ name: String, errnoRet: UInt32?) -> UInt32 {
        switch name {
        case "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD": SCMP_ACT_KILL
        case "SCMP_ACT_KILL_PROCESS": SCMP_ACT_KILL_PROCESS
        case "SCMP_ACT_TRAP": SCMP_ACT_TRAP
        case "SCMP_ACT_ERRNO": vessel_scmp_act_errno(UInt16(truncatingIfNeeded: errnoRet ?? UInt32(EPERM)))
        case "SCMP_ACT_TRACE": vessel_scmp_act_trace(UInt16(truncatingIfNeeded: errnoRet ?? UInt32(EPERM)))
        case "SCMP_ACT_LOG": SCMP_ACT_LOG
        default: SCMP_ACT_ALLOW
        }
    }

    static func compare(_ op: String) -> scmp_compare {
        switch op {
        case "SCMP_CMP_NE": SCMP_CMP_NE
        case "SCMP_CMP_LT": SCMP_CMP_LT
        case "SCMP_CMP_LE": SCMP_CMP_LE
        case "SCMP_CMP_GE": SCMP_CMP_GE
        case "SCMP_CMP_GT": SCMP_CMP_GT
        case "SCMP_CMP_MASKED_EQ": SCMP_CMP_MASKED_EQ
        default: SCMP_CMP_EQ
        }
    }

    public func load(log: (String) -> Void) throws(LinuxError) {
        let defaultAction = Self.action(self.defaultAction, errnoRet: nil)
        guard let ctx = seccomp_init(defaultAction) else { throw LinuxError(stage: "seccomp_init", errno: EINVAL) }
        defer { seccomp_release(ctx) }
        // We set no_new_privs ourselves, when the spec asks; libseccomp would force it.
        try check("seccomp attribute NNP") { seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0) }
        for flag in flags {
            switch flag {
            case "SECCOMP_FILTER_FLAG_TSYNC": try check(flag) { seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1) }
            case "SECCOMP_FILTER_FLAG_LOG": try check(flag) { seccomp_attr_set(ctx, SCMP_FLTATR_CTL_LOG, 1) }
            case "SECCOMP_FILTER_FLAG_SPEC_ALLOW": try check(flag) { seccomp_attr_set(ctx, SCMP_FLTATR_CTL_SSB, 1) }
            default: break
            }
        }
        for name in architectures {
            let short = name.hasPrefix("SCMP_ARCH_") ? String(name.dropFirst("SCMP_ARCH_".count)).lowercased() : name.lowercased()
            let arch = seccomp_arch_resolve_name(short)
            if arch == 0 {
                log("seccomp: unknown architecture \(name) skipped")
                continue
            }
            let rc = seccomp_arch_add(ctx, arch)
            if rc < 0 && rc != -EEXIST { throw LinuxError(stage: "seccomp_arch_add", errno: -rc, detail: name) }
        }
        for rule in rules {
            let action = Self.action(rule.action, errnoRet: rule.errnoRet)
            // libseccomp refuses rules that repeat the default action; they change nothing anyway.
            if action == defaultAction { continue }
            let conditions = rule.conditions.map { c in
                scmp_arg_cmp(arg: c.index, op: Self.compare(c.op), datum_a: c.value, datum_b: c.valueTwo)
            }
            for name in rule.names {
                let number = seccomp_syscall_resolve_name(name)
                if number == __NR_SCMP_ERROR {
                    log("seccomp: syscall \(name) unknown here, rule skipped")
                    continue
                }
                try check("seccomp rule for \(name)") {
                    conditions.withUnsafeBufferPointer { seccomp_rule_add_array(ctx, action, number, UInt32($0.count), $0.baseAddress) }
                }
            }
        }
        try check("seccomp_load") { seccomp_load(ctx) }
    }

    /// libseccomp returns -errno instead of setting errno.
    private func check(_ stage: String, _ call: () -> Int32) throws(LinuxError) {
        let rc = call()
        if rc < 0 { throw LinuxError(stage: stage, errno: -rc) }
    }
}
