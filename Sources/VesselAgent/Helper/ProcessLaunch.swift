import VesselLinux
import VesselProtocol
import VesselSpec

#if canImport(Glibc)
    import Glibc
#endif

/// The last steps before the container process runs, in the helper, in runc's order: session and
/// terminal, rlimits, oom score, (seccomp here if no_new_privs is off: loading it needs
/// CAP_SYS_ADMIN), bounding set, credentials with kept capabilities, capability sets, ambient set,
/// no_new_privs, working directory, (seccomp here if no_new_privs is on), execve.
struct ProcessLaunch {
    let process: Grpc_Process
    let seccomp: Grpc_LinuxSeccomp?
    let log: (String) -> Void
    /// Set before a user namespace was entered: in it, /proc/self/oom_score_adj is not ours to open.
    var limitsApplied = false

    static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    func exec() throws -> Never {
        guard let program = process.args.first, !program.isEmpty else {
            throw LinuxError(stage: "process.args", errno: EINVAL, detail: "is empty")
        }
        _ = setsid()
        if process.terminal {
            try Linux.setControllingTerminal(0)
        }
        if !limitsApplied { try applyLimits() }
        if !process.apparmorProfile.isEmpty || !process.selinuxLabel.isEmpty {
            log("apparmorProfile/selinuxLabel ignored: the guest has no LSM policy")
        }
        if !process.noNewPrivileges, let seccomp { try Self.filter(seccomp).load(log: log) }
        let capabilities = try Capabilities.sets(process, field: "process")
        try dropBounding(keeping: capabilities.bounding)
        try setCredentials()
        try setCapabilities(capabilities)
        if process.noNewPrivileges { try Linux.setNoNewPrivileges() }
        let cwd = process.cwd.isEmpty ? "/" : process.cwd
        try sys("process.cwd", cwd) { chdir(cwd) }
        let path = try resolve(program)
        if process.noNewPrivileges, let seccomp { try Self.filter(seccomp).load(log: log) }
        let argv = CStringArray(process.args)
        let envp = CStringArray(process.env)
        _ = argv.withPointer { a in envp.withPointer { e in execve(path, a, e) } }
        throw LinuxError(stage: "exec", detail: program)
    }

    static func filter(_ spec: Grpc_LinuxSeccomp) -> SeccompFilter {
        SeccompFilter(
            defaultAction: spec.defaultAction, flags: spec.flags, architectures: spec.architectures,
            rules: spec.syscalls.map { rule in
                let errnoRet: UInt32? = if case .errnoret(let value)? = rule.errnoRet { value } else { nil }
                return SeccompFilter.Rule(
                    names: rule.names, action: rule.action, errnoRet: errnoRet,
                    conditions: rule.args.map {
                        SeccompFilter.Condition(index: UInt32($0.index), op: $0.op, value: $0.value, valueTwo: $0.valueTwo)
                    })
            })
    }

    /// rlimits and the OOM score (raising or lowering them needs the guest's root).
    func applyLimits() throws {
        try setRlimits()
        if process.oomscoreAdj != 0 {
            try Linux.writeFile("/proc/self/oom_score_adj", "\(process.oomscoreAdj)")
        }
    }

    private func setRlimits() throws {
        for limit in process.rlimits {
            guard let resource = Rlimits.resources[limit.type] else { continue }
            var value = rlimit(rlim_cur: rlim_t(limit.soft), rlim_max: rlim_t(limit.hard))
            try sys("setrlimit", limit.type) { setrlimit(__rlimit_resource_t(UInt32(resource)), &value) }
        }
    }

    /// Highest capability this kernel knows; names above it are skipped rather than failing.
    private static var lastCapability: Int {
        Int(((try? Linux.readFile("/proc/sys/kernel/cap_last_cap")) ?? "").trimmed) ?? 40
    }

    private func dropBounding(keeping bounding: UInt64) throws {
        for cap in 0...Self.lastCapability where bounding & (1 << UInt64(cap)) == 0 {
            try Linux.dropBoundingCapability(cap, name: Capabilities.names[safe: cap])
        }
    }

    private func setCredentials() throws {
        let user = process.user
        // Keep the permitted set across the uid change; the spec's sets are applied right after.
        try Linux.setKeepCapabilities(true)
        try Linux.setGroups(user.additionalGids)
        try sys("setgid", "\(user.gid)") { setgid(user.gid) }
        try sys("setuid", "\(user.uid)") { setuid(user.uid) }
        try Linux.setKeepCapabilities(false)
    }

    private func setCapabilities(_ sets: Capabilities.Sets) throws {
        let known: UInt64 = Self.lastCapability >= 63 ? ~0 : (1 << UInt64(Self.lastCapability + 1)) - 1
        try Linux.setCapabilities(
            effective: sets.effective & known, permitted: sets.permitted & known, inheritable: sets.inheritable & known)
        try Linux.clearAmbientCapabilities()
        for cap in 0...Self.lastCapability where sets.ambient & (1 << UInt64(cap)) != 0 {
            // Ambient needs the capability permitted and inheritable; runc skips it otherwise too.
            do { try Linux.raiseAmbientCapability(cap, name: Capabilities.names[safe: cap]) } catch {
                log("ambient capability not raised: \(error)")
            }
        }
    }

    /// execvp semantics, but with the container's PATH from process.env, not the helper's.
    private func resolve(_ program: String) throws -> String {
        if program.contains("/") { return program }
        let pathVariable = process.env.last { $0.hasPrefix("PATH=") }.map { String($0.dropFirst(5)) } ?? Self.defaultPath
        for directory in pathVariable.split(separator: ":", omittingEmptySubsequences: false) {
            let candidate = (directory.isEmpty ? "." : String(directory)) + "/" + program
            var st = stat()
            if stat(candidate, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG && access(candidate, X_OK) == 0 {
                return candidate
            }
        }
        throw LinuxError(stage: "exec", errno: ENOENT, detail: "\(program) (not found in PATH)")
    }
}

extension Array where Element == String {
    subscript(safe index: Int) -> String { indices.contains(index) ? self[index] : "capability \(index)" }
}
