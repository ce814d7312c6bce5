import CVessel
import VesselLinux
import VesselProtocol
#if canImport(Glibc)
import Glibc
#endif

/// Builds the container's mount namespace in the init helper: private propagation, the rootfs as a
/// mount point, the spec's mounts resolved inside the rootfs, default /dev, hostname, pivot_root.
struct RootfsSetup {
    let spec: Grpc_Spec

    func run() throws {
        try Linux.mount("", "/", nil, MountFlags([.recursive, .private]).rawValue, nil)
        let root = spec.root.path
        guard Linux.isDirectory(root) else {
            throw LinuxError(stage: "root.path", errno: ENOENT, detail: root)
        }
        // pivot_root needs the new root to be a mount point.
        try Linux.mount(root, root, nil, MountFlags([.bind, .recursive]).rawValue, nil)
        let rootFD = try Linux.open(root, VESSEL_O_PATH | O_DIRECTORY)
        defer { Linux.close(rootFD) }
        let rooted = RootedPath(rootFD: rootFD)

        for (index, mount) in spec.mounts.enumerated() {
            try mountOne(mount, field: "mounts[\(index)]", rooted: rooted)
        }
        if spec.mounts.contains(where: { $0.destination == "/dev" && $0.type != "bind" }) {
            try populateDev(rooted)
        }
        try setHostname()
        try pivot(into: root)
        if spec.root.readonly {
            try Linux.mount("", "/", nil, MountFlags([.bind, .remount, .readOnly]).rawValue, nil)
        }
    }

    private func mountOne(_ mount: Grpc_Mount, field: String, rooted: RootedPath) throws {
        let options = MountOptions(mount.options)
        let components = try RootedPath.components(mount.destination, field: "\(field).destination")
        let isBind = options.isBind || mount.type == "bind"
        var sourceIsDirectory = true
        if isBind {
            guard Linux.exists(mount.source) else {
                throw LinuxError(stage: "\(field).source", errno: ENOENT, detail: mount.source)
            }
            sourceIsDirectory = Linux.isDirectory(mount.source)
        }
        let target = try rooted.create(components, directory: sourceIsDirectory)
        defer { Linux.close(target) }
        let targetPath = procFDPath(target)
        var flags = options.flags
        if isBind {
            flags.insert(.bind)
            try Linux.mount(mount.source, targetPath, nil, flags.subtracting([.readOnly, .remount]).rawValue, nil)
            // Bind mounts ignore most flags on creation: apply them with a remount of the new mount.
            let extra = flags.subtracting([.bind, .recursive])
            if !extra.isEmpty {
                try Linux.mount("", targetPath, nil, flags.union([.remount, .bind]).subtracting(.recursive).rawValue, nil)
            }
        } else {
            let type = mount.type == "" ? "tmpfs" : mount.type
            let source = mount.source == "" ? type : mount.source
            let rc = Glibc.mount(source, targetPath, type, flags.rawValue, options.dataString)
            if rc != 0 {
                // Host mode on a cgroup v1 host: the container gets no cgroupfs (the agent logs it).
                if type == "cgroup" || type == "cgroup2" { return }
                throw LinuxError(stage: "mount", detail: "\(type) on \(mount.destination) (\(field))")
            }
        }
        if !options.propagation.isEmpty {
            try Linux.mount("", targetPath, nil, options.propagation.rawValue, nil)
        }
    }

    private func populateDev(_ rooted: RootedPath) throws {
        let devices: [(String, UInt32, UInt32)] = [
            ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0),
        ]
        let dev = try rooted.open(["dev"], flags: O_DIRECTORY)
        defer { Linux.close(dev) }
        for (name, major, minor) in devices {
            let devno = dev_t((major << 8) | minor)
            if mknodat(dev, name, S_IFCHR | 0o666, devno) != 0 && errno != EEXIST {
                throw LinuxError(stage: "mknod", detail: "/dev/\(name)")
            }
            fchmodat(dev, name, 0o666, 0)
        }
        let links = [("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                     ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("core", "/proc/kcore")]
        for (name, target) in links where symlinkat(target, dev, name) != 0 && errno != EEXIST {
            throw LinuxError(stage: "symlink", detail: "/dev/\(name)")
        }
    }

    private func setHostname() throws {
        guard !spec.hostname.isEmpty else { return }
        guard spec.linux.namespaces.contains(where: { $0.type == "uts" }) else {
            throw LinuxError(stage: "hostname", errno: EINVAL, detail: "needs a private uts namespace")
        }
        try sys("sethostname", spec.hostname) { vessel_sethostname(spec.hostname, spec.hostname.utf8.count) }
    }

    /// pivot_root(".", ".") then detach the old root stacked underneath: no temporary directory
    /// inside the container is needed (the trick runc uses).
    private func pivot(into root: String) throws {
        try sys("chdir", root) { chdir(root) }
        try sys("pivot_root", root) { vessel_pivot_root(".", ".") }
        try sys("umount old root") { umount2(".", Int32(MNT_DETACH)) }
        try sys("chdir /") { chdir("/") }
    }
}
