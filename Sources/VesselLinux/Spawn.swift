import CVessel

#if canImport(Glibc)
    import Glibc
#endif

/// Namespace flags shared by clone, unshare and setns.
public enum Namespace: String, CaseIterable, Sendable {
    case mount, pid, uts, ipc, network, cgroup, user

    public var cloneFlag: UInt64 {
        switch self {
        case .mount: 0x0002_0000
        case .uts: 0x0400_0000
        case .ipc: 0x0800_0000
        case .pid: 0x2000_0000
        case .network: 0x4000_0000
        case .cgroup: 0x0200_0000
        case .user: 0x1000_0000
        }
    }

    /// The name under /proc/PID/ns/.
    public var procName: String {
        switch self {
        case .mount: "mnt"
        case .network: "net"
        default: rawValue
        }
    }

    /// OCI's `linux.namespaces[].type` names.
    public init?(oci: String) {
        switch oci {
        case "mount": self = .mount
        case "pid": self = .pid
        case "uts": self = .uts
        case "ipc": self = .ipc
        case "network": self = .network
        case "cgroup": self = .cgroup
        case "user": self = .user
        default: return nil
        }
    }

    /// The namespace the file at `path` is (an nsfs file: /proc/PID/ns/X, or a bind mount of one),
    /// by NS_GET_NSTYPE: a path of another type, or not a namespace at all, is an error.
    public static func of(path: String) throws(LinuxError) -> Namespace {
        // statfs first: opening whatever a config names (a watchdog, a tape) could have effects.
        // Callers name the path in their message: the stages here do not repeat it.
        let fileSystem = try cvessel("statfs") { vessel_fs_type(path) }
        guard fileSystem == 0x6e73_6673 else {  // NSFS_MAGIC
            throw LinuxError(stage: "not a namespace file (nsfs)", errno: 0)
        }
        let fd = try sys("open") { Glibc.open(path, O_RDONLY | O_CLOEXEC) }
        defer { Linux.close(fd) }
        let type = try cvessel("ioctl(NS_GET_NSTYPE)") { vessel_ns_type(fd) }
        guard let namespace = allCases.first(where: { $0.cloneFlag == UInt64(type) }) else {
            throw LinuxError(stage: "a namespace of a type Vessel does not know (\(type))", errno: 0)
        }
        return namespace
    }
}

public struct SpawnResult: Sendable {
    public var pid: pid_t
    /// Non-zero when the child could not exec; the child then exits 127 and must still be reaped.
    public var execErrno: Int32
}

/// fork+exec done in C (no Swift runs in the child), with new namespaces from `namespaces`.
/// A `parentDeathSignal` reaches the child when this process dies (the spawn then runs on a
/// thread that lives as long as the process: the kernel ties the signal to the forking thread).
/// `cgroup`, an fd of a cgroup v2 directory, is where the child starts (CLONE_INTO_CGROUP).
/// `keepCapabilities` (bit n = capability n) bounds what a root child keeps, with no_new_privs.
/// `cgroupProcs`, an open cgroup.procs file (any hierarchy, v1 too), is joined before exec.
public func spawn(
    exeFD: Int32, path: String = "", arguments: [String], environment: [String],
    fds: [(src: Int32, dst: Int32)], namespaces: UInt64 = 0,
    parentDeathSignal: Int32 = 0, newSession: Bool = false, cgroup: Int32 = -1,
    keepCapabilities: UInt64? = nil, cgroupProcs: Int32 = -1
) throws(LinuxError) -> SpawnResult {
    let argv = CStringArray(arguments)
    let envp = CStringArray(environment)
    let map = fds.map { vessel_fd_map(src: $0.src, dst: $0.dst) }
    func fork() -> (pid: pid_t, execErrno: Int32) {
        var execErrno: Int32 = 0
        let pid = argv.withPointer { a in
            envp.withPointer { e in
                map.withUnsafeBufferPointer { m in
                    vessel_spawn(
                        exeFD, path, a, e, m.baseAddress, Int32(m.count), namespaces, &execErrno,
                        parentDeathSignal, newSession ? 1 : 0, cgroup, keepCapabilities ?? ~0, cgroupProcs)
                }
            }
        }
        return (pid, execErrno)
    }
    let (pid, execErrno) = parentDeathSignal == 0 ? fork() : LifetimeThread.run(fork)
    if pid < 0 { throw LinuxError(stage: "clone", errno: -pid) }
    return SpawnResult(pid: pid, execErrno: execErrno)
}
