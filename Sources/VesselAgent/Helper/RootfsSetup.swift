import VesselLinux
import VesselProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// Builds the container's mount namespace in the init helper: private propagation, the rootfs as a
/// mount point, the spec's mounts resolved inside the rootfs, default /dev, hostname, pivot_root
/// (or, with `noPivot`, a move onto "/" and chroot).
struct RootfsSetup {
    let spec: Grpc_Spec
    let noPivot: Bool
    let log: (String) -> Void
    /// The createContainer hooks: in the container's namespaces, mounts done, before pivot_root.
    let beforePivot: () throws -> Void
    /// Inside the new root, before anything turns read-only (the terminal's /dev/console).
    let afterPivot: () throws -> Void

    func run() throws {
        try Linux.mount("", "/", nil, MountFlags([.recursive, .private]).rawValue, nil)
        let root = spec.root.path
        guard Linux.isDirectory(root) else {
            throw LinuxError(stage: "root.path", errno: ENOENT, detail: root)
        }
        // pivot_root needs the new root to be a mount point.
        try Linux.mount(root, root, nil, MountFlags([.bind, .recursive]).rawValue, nil)
        let rootFD = try Linux.open(root, Linux.openPath | O_DIRECTORY)
        defer { Linux.close(rootFD) }
        let rooted = RootedPath(rootFD: rootFD)

        for (index, mount) in spec.mounts.enumerated() {
            try mountOne(mount, field: "mounts[\(index)]", rooted: rooted)
        }
        if spec.mounts.contains(where: { $0.destination == "/dev" && $0.type != "bind" }) {
            try populateDev(rooted)
        }
        for (index, device) in spec.linux.devices.enumerated() {
            try createDevice(device, field: "linux.devices[\(index)]", rooted: rooted)
        }
        try setHostname()
        try beforePivot()
        if noPivot { try moveRoot(root) } else { try pivot(into: root) }
        try afterPivot()
        // As runc: sysctls before /proc/sys turns read-only, masks last.
        for (key, value) in spec.linux.sysctl.sorted(by: { $0.key < $1.key }) {
            try Linux.writeFile("/proc/sys/" + key.replacingDots(), value)
        }
        for path in spec.linux.readonlyPaths { try readonly(path) }
        for path in spec.linux.maskedPaths { try mask(path) }
        if spec.root.readonly {
            try Linux.mount("", "/", nil, MountFlags([.bind, .remount, .readOnly]).rawValue, nil)
        }
        if !spec.linux.rootfsPropagation.isEmpty {
            let propagation = MountOptions([spec.linux.rootfsPropagation]).propagation
            try Linux.mount("", "/", nil, propagation.rawValue, nil)
        }
    }

    /// A recursive read-only bind of the path onto itself; missing paths are fine (as runc).
    private func readonly(_ path: String) throws {
        guard Linux.exists(path) else { return }
        try Linux.mount(path, path, nil, MountFlags([.bind, .recursive]).rawValue, nil)
        try Linux.mount("", path, nil, MountFlags([.bind, .remount, .readOnly, .recursive]).rawValue, nil)
    }

    /// Files are covered with /dev/null, directories with an empty read-only tmpfs. The image may
    /// have made its own /dev/null anything (a symlink to /proc/sys/kernel/core_pattern: the
    /// CVE-2025-31133 class), so the mask binds only the real null device, by fd.
    private func mask(_ path: String) throws {
        guard Linux.exists(path) else { return }
        if Linux.isDirectory(path) {
            try Linux.mount("tmpfs", path, "tmpfs", MountFlags.readOnly.rawValue, "size=0k,mode=0755")
            return
        }
        let null = try Linux.open("/dev/null", Linux.openPath | O_NOFOLLOW)
        defer { Linux.close(null) }
        var st = stat()
        guard fstat(null, &st) == 0, (st.st_mode & S_IFMT) == S_IFCHR, st.st_rdev == 0x103 else {  // makedev(1, 3)
            throw LinuxError(stage: "mask \(path)", errno: EPERM, detail: "the container's /dev/null is not the null device (1:3)")
        }
        try Linux.mount(procFDPath(null), path, nil, MountFlags.bind.rawValue, nil)
    }

    private func createDevice(_ device: Grpc_LinuxDevice, field: String, rooted: RootedPath) throws {
        let components = try RootedPath.components(device.path, field: "\(field).path")
        guard let name = components.last else { throw LinuxError(stage: "\(field).path", errno: EINVAL, detail: device.path) }
        let parent = try rooted.create(Array(components.dropLast()), directory: true)
        defer { Linux.close(parent) }
        let type: mode_t =
            switch device.type {
            case "b": S_IFBLK
            case "p": S_IFIFO
            default: S_IFCHR
            }
        let mode = device.fileMode == 0 ? 0o666 : mode_t(device.fileMode & 0o7777)
        let major = UInt64(device.major), minor = UInt64(device.minor)
        let devno = ((major & 0xfffff000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffffff00) << 12) | (minor & 0xff)
        // The parent fd is O_PATH: go through /proc/self/fd to name it for mknodat.
        let dir = try Linux.open(procFDPath(parent), O_DIRECTORY)
        defer { Linux.close(dir) }
        unlinkat(dir, name, 0)
        try sys("mknod", device.path) { mknodat(dir, name, type | mode, dev_t(devno)) }
        try sys("fchmodat", device.path) { fchmodat(dir, name, mode, 0) }
        try sys("chown", device.path) { fchownat(dir, name, device.uid, device.gid, Int32(AT_SYMLINK_NOFOLLOW)) }
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
        var flags = options.flags
        if isBind {
            flags.insert(.bind)
            try Linux.mount(mount.source, procFDPath(target), nil, flags.subtracting([.readOnly, .remount]).rawValue, nil)
        } else {
            var type = mount.type == "" ? "tmpfs" : mount.type
            // As runc on a unified host: a v1 "cgroup" mount would steal controllers from the
            // guest's cgroup2 hierarchy (for every container, not just this one).
            if type == "cgroup" && Linux.exists("/sys/fs/cgroup/cgroup.controllers") { type = "cgroup2" }
            let source = mount.source == "" ? type : mount.source
            if Glibc.mount(source, procFDPath(target), type, flags.rawValue, options.dataString) != 0 {
                let error = LinuxError(stage: "mount", detail: "\(type) on \(mount.destination) (\(field))")
                // Host mode on a cgroup v1 host: the container gets no cgroupfs.
                guard type == "cgroup" || type == "cgroup2" else { throw error }
                log("\(field) skipped: \(error)")
                return
            }
        }
        // Remount and propagation act on the new mount, which the old fd (beneath it) is not.
        let extra = flags.subtracting([.bind, .recursive])
        guard (isBind && !extra.isEmpty) || !options.propagation.isEmpty else { return }
        let mounted = try rooted.open(components)
        defer { Linux.close(mounted) }
        if isBind && !extra.isEmpty {
            // Bind mounts ignore most flags on creation: apply them with a remount.
            try Linux.mount("", procFDPath(mounted), nil, flags.union([.remount, .bind]).subtracting(.recursive).rawValue, nil)
        }
        if !options.propagation.isEmpty {
            try Linux.mount("", procFDPath(mounted), nil, options.propagation.rawValue, nil)
        }
    }

    private func populateDev(_ rooted: RootedPath) throws {
        let devices: [(String, UInt32, UInt32)] = [
            ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0),
        ]
        let dev = try rooted.open(["dev"], flags: O_DIRECTORY | O_RDONLY)
        defer { Linux.close(dev) }
        for (name, major, minor) in devices {
            let devno = dev_t((major << 8) | minor)
            if mknodat(dev, name, S_IFCHR | 0o666, devno) != 0 && errno != EEXIST {
                throw LinuxError(stage: "mknod", detail: "/dev/\(name)")
            }
            fchmodat(dev, name, 0o666, 0)
        }
        let links = [
            ("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("core", "/proc/kcore"),
        ]
        for (name, target) in links where symlinkat(target, dev, name) != 0 && errno != EEXIST {
            throw LinuxError(stage: "symlink", detail: "/dev/\(name)")
        }
    }

    private func setHostname() throws {
        guard !spec.hostname.isEmpty else { return }
        guard spec.linux.namespaces.contains(where: { $0.type == "uts" }) else {
            throw LinuxError(stage: "hostname", errno: EINVAL, detail: "needs a private uts namespace")
        }
        try Linux.setHostname(spec.hostname)
    }

    /// pivot_root(".", ".") then detach the old root stacked underneath: no temporary directory
    /// inside the container is needed (the trick runc uses).
    private func pivot(into root: String) throws {
        try sys("chdir", root) { chdir(root) }
        try Linux.pivotRootHere(detail: root)
        try sys("umount old root") { umount2(".", Int32(MNT_DETACH)) }
        try sys("chdir /") { chdir("/") }
    }

    /// For a "/" that pivot_root refuses (the initramfs, which has no parent mount), as runc's
    /// --no-pivot: move the new root onto "/" and chroot into it. Until the chroot, absolute paths
    /// still resolve from the old root, under the moved mount, so every mount outside the new
    /// root can then be detached by path: the guest's /proc, /run, the 9p share and the rest, even
    /// those the new root lived under (detached before the move they would have taken it along).
    /// What stays is the initramfs itself, underneath: only a chroot escape (CAP_SYS_CHROOT)
    /// could reach its files, never a guest mount.
    private func moveRoot(_ root: String) throws {
        guard let resolved = realpath(root, nil) else { throw LinuxError(stage: "realpath", detail: root) }
        let newRoot = String(cString: resolved)
        free(resolved)
        // By mount id, not path: the root may be a bind over a storage mounted at the same path.
        let mounts = try MountInfo.read()
        guard let rootMount = mounts.last(where: { $0.mountPoint == newRoot }) else {
            throw LinuxError(stage: "mountinfo", errno: ENOENT, detail: "no mount at \(newRoot)")
        }
        var keep: Set<Int> = [rootMount.id]
        var grew = true
        while grew {
            let children = mounts.filter { keep.contains($0.parentID) && !keep.contains($0.id) }
            keep.formUnion(children.map(\.id))
            grew = !children.isEmpty
        }
        let outside = mounts.filter { !keep.contains($0.id) && $0.mountPoint != "/" }.map(\.mountPoint)
        try sys("chdir", root) { chdir(root) }
        try sys("mount --move", root) { Glibc.mount(".", "/", nil, MountFlags.move.rawValue, nil) }
        // Deepest first; a mount that went with its parent answers EINVAL.
        for point in outside.sorted(by: { $0.split(separator: "/").count > $1.split(separator: "/").count }) {
            if umount2(point, Int32(MNT_DETACH)) != 0 && errno != EINVAL && errno != ENOENT {
                throw LinuxError(stage: "umount", detail: point)
            }
        }
        try sys("chroot") { chroot(".") }
        try sys("chdir /") { chdir("/") }
    }
}

extension String {
    /// "net.ipv4.ip_forward" -> "net/ipv4/ip_forward"
    func replacingDots() -> String { String(map { $0 == "." ? "/" : $0 }) }
}
