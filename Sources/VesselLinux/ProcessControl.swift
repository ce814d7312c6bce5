import CVessel

#if canImport(Glibc)
    import Glibc
#endif

/// The calls a container's helper makes on itself (namespaces, capabilities, credentials, its
/// terminal) and the guest init's own (reaping, power-off), so that nothing above this module
/// touches CVessel. Each throws `LinuxError` with the call as its stage.
extension Linux {
    /// O_PATH, which the Swift Glibc module does not export.
    public static let openPath: Int32 = VESSEL_O_PATH

    public static func setns(_ fd: Int32, name: String) throws(LinuxError) {
        try cvessel("setns", name) { vessel_setns(fd, 0) }
    }

    public static func unshare(_ flags: UInt64, name: String) throws(LinuxError) {
        try cvessel("unshare", name) { vessel_unshare(Int32(truncatingIfNeeded: flags)) }
    }

    /// fork() whose child is our parent's child (CLONE_PARENT); returns like fork.
    public static func forkAsSibling() throws(LinuxError) -> pid_t {
        try cvessel("clone") { vessel_clone_parent() }
    }

    /// pivot_root(".", "."): the caller is in the new root and unmounts the old one after.
    public static func pivotRootHere(detail: String) throws(LinuxError) {
        try cvessel("pivot_root", detail) { vessel_pivot_root(".", ".") }
    }

    public static func setHostname(_ name: String) throws(LinuxError) {
        try sys("sethostname", name) { Glibc.sethostname(name, name.utf8.count) }
    }

    /// Every fd from `fd` on is closed at exec.
    public static func closeOnExec(from fd: Int32) { vessel_cloexec_from(fd) }

    public static func setDumpable(_ dumpable: Bool) { _ = vessel_set_dumpable(dumpable ? 1 : 0) }

    public static func setNoNewPrivileges() throws(LinuxError) {
        try cvessel("prctl(PR_SET_NO_NEW_PRIVS)") { vessel_set_no_new_privs() }
    }

    public static func setKeepCapabilities(_ keep: Bool) throws(LinuxError) {
        try cvessel("prctl(PR_SET_KEEPCAPS)") { vessel_set_keepcaps(keep ? 1 : 0) }
    }

    public static func dropBoundingCapability(_ cap: Int, name: String) throws(LinuxError) {
        try cvessel("prctl(PR_CAPBSET_DROP)", name) { vessel_capbset_drop(Int32(cap)) }
    }

    /// Masks with bit n for capability n (capset version 3).
    public static func setCapabilities(effective: UInt64, permitted: UInt64, inheritable: UInt64) throws(LinuxError) {
        try cvessel("capset") { vessel_capset(effective, permitted, inheritable) }
    }

    public static func clearAmbientCapabilities() throws(LinuxError) {
        try cvessel("prctl(PR_CAP_AMBIENT_CLEAR_ALL)") { vessel_cap_ambient_clear() }
    }

    public static func raiseAmbientCapability(_ cap: Int, name: String) throws(LinuxError) {
        try cvessel("prctl(PR_CAP_AMBIENT_RAISE)", name) { vessel_cap_ambient_raise(Int32(cap)) }
    }

    public static func setGroups(_ gids: [UInt32]) throws(LinuxError) {
        try sys("setgroups") { gids.withUnsafeBufferPointer { Glibc.setgroups($0.count, $0.baseAddress) } }
    }

    /// One exited child of any kind (waitid P_ALL), blocking: its pid and shell-style status
    /// (code, or 128+signal); nil when there is no child at all (ECHILD).
    public static func reapAny() throws(LinuxError) -> (pid: pid_t, status: Int32)? {
        while true {
            var status: Int32 = 0
            let pid = vessel_reap_one(0, &status)
            if pid > 0 { return (pid, status) }
            if pid == -ECHILD { return nil }
            if pid != -EINTR { throw LinuxError(stage: "waitid", errno: -pid) }
        }
    }

    /// statfs(2)'s f_type of the file system holding `path`.
    public static func fileSystemType(_ path: String) throws(LinuxError) -> Int {
        try cvessel("statfs", path) { vessel_fs_type(path) }
    }

    /// reboot(RB_POWER_OFF); returns only when it failed.
    public static func powerOff() -> LinuxError {
        LinuxError(stage: "reboot", errno: -vessel_reboot_poweroff())
    }

    /// A blocking AF_VSOCK stream to `cid`:`port`. Guest side only: the host's vsock is not ours.
    public static func vsockConnect(cid: UInt32, port: UInt32) throws(LinuxError) -> Int32 {
        try cvessel("connect", "vsock \(cid):\(port)") { vessel_vsock_connect(cid, port) }
    }

    /// A cgroup device program (BPF_PROG_TYPE_CGROUP_DEVICE) from 8-byte instructions; on a
    /// refusal the error's detail is the verifier's complaint.
    public static func loadDeviceProgram(_ instructions: [UInt64]) throws(LinuxError) -> Int32 {
        func load(log: UnsafeMutableBufferPointer<CChar>?) -> Int32 {
            instructions.withUnsafeBufferPointer {
                vessel_bpf_load_device_program($0.baseAddress, UInt32($0.count), log?.baseAddress, UInt32(log?.count ?? 0))
            }
        }
        let fd = load(log: nil)
        guard fd < 0 else { return fd }
        // Again with the verifier's log (a successful load would overflow a small one).
        var log = [CChar](repeating: 0, count: 1 << 16)
        _ = log.withUnsafeMutableBufferPointer { load(log: $0) }
        let lines = log.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }.split(separator: "\n")
        throw LinuxError(
            stage: "bpf(BPF_PROG_LOAD) device filter", errno: -fd,
            detail: lines.first { !$0.hasPrefix("processed") }.map(String.init) ?? "")
    }

    /// Attaches or detaches a device program on a cgroup v2 directory fd.
    public static func setDeviceProgram(_ programFD: Int32, cgroup directoryFD: Int32, attached: Bool, detail: String) throws(LinuxError) {
        try cvessel(attached ? "bpf(BPF_PROG_ATTACH) device filter" : "bpf(BPF_PROG_DETACH)", detail) {
            vessel_bpf_device_attach(directoryFD, programFD, attached ? 1 : 0)
        }
    }

    /// The ids of the device programs attached to the cgroup directory itself (not its ancestors').
    public static func attachedDevicePrograms(cgroup directoryFD: Int32) throws(LinuxError) -> [UInt32] {
        var ids = [UInt32](repeating: 0, count: 64)
        var count = UInt32(ids.count)
        try cvessel("bpf(BPF_PROG_QUERY) device programs") {
            ids.withUnsafeMutableBufferPointer { vessel_bpf_device_query(directoryFD, $0.baseAddress, &count) }
        }
        return Array(ids.prefix(Int(count)))
    }

    /// An fd of a loaded program, by the id `attachedDevicePrograms` names.
    public static func deviceProgram(id: UInt32) throws(LinuxError) -> Int32 {
        try cvessel("bpf(BPF_PROG_GET_FD_BY_ID)", "program \(id)") { vessel_bpf_prog_fd_by_id(id) }
    }
}
