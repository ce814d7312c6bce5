import VesselLinux
import VesselProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// Kata's `Storage`s: filesystems the host asks for before containers use them (the 9p share that
/// carries the bundles, volumes). They are mounted in the agent's own mount namespace, so every
/// container created later inherits them, and counted per mount point: the sandbox and several
/// containers may name the same one, and only the last user unmounts it.
struct StorageTable {
    static let drivers = ["9p", "local", "bind", "ephemeral"]

    /// Every mount point lies strictly below this directory: /run in the guest, the run directory
    /// in host mode (where /run is the host's).
    let base: String
    private var entries: [String: (storage: Grpc_Storage, users: Int)] = [:]

    init(base: String) {
        self.base = base
    }

    var mountPoints: [String] { entries.keys.sorted() }

    /// Mounts what is not mounted yet (validated already by `Validation.storages`) and returns the
    /// mount points to release later; on a failure the ones acquired so far are released again.
    mutating func acquire(_ storages: [Grpc_Storage], log: (String) -> Void) throws -> [String] {
        var acquired: [String] = []
        do {
            for (index, storage) in storages.enumerated() {
                let field = "storages[\(index)]"
                let key = Self.normalized(storage.mountPoint)
                if let entry = entries[key] {
                    guard Self.sameMount(entry.storage, storage) else {
                        throw AgentError.invalidArgument(
                            "\(field).mount_point \(storage.mountPoint) is already mounted from another source")
                    }
                    entries[key]!.users += 1
                } else {
                    try mount(storage, field: field)
                    entries[key] = (storage, 1)
                }
                acquired.append(key)
            }
        } catch {
            release(acquired, log: log)
            throw error
        }
        return acquired
    }

    /// Unmounts (lazily: a process of a dying container may still hold a file) whatever lost its
    /// last user, newest first. Failures are logged: there is nobody left to report them to.
    mutating func release(_ mountPoints: [String], log: (String) -> Void) {
        for mountPoint in mountPoints.reversed() {
            guard let entry = entries[mountPoint] else { continue }
            if entry.users > 1 {
                entries[mountPoint]!.users -= 1
                continue
            }
            entries.removeValue(forKey: mountPoint)
            do {
                try unmount(entry.storage)
            } catch {
                log("storage \(mountPoint): \(error)")
            }
        }
    }

    /// One key per directory however the request spelled it ("//run/x/" is "/run/x").
    static func normalized(_ path: String) -> String {
        "/" + path.split(separator: "/").joined(separator: "/")
    }

    /// Same driver, source, type and options: a second request for it is a second user.
    private static func sameMount(_ a: Grpc_Storage, _ b: Grpc_Storage) -> Bool {
        a.driver == b.driver && a.source == b.source && a.fstype == b.fstype && a.options == b.options
    }

    /// `base` as the root of every lookup, with escapes refused (RESOLVE_BENEATH): a symlink
    /// planted under /run cannot send a mount elsewhere.
    private func beneathBase() throws -> (RootedPath, Int32) {
        try Linux.mkdirAll(base)
        let fd = try Linux.open(base, Linux.openPath | O_DIRECTORY)
        return (RootedPath(rootFD: fd, confined: true), fd)
    }

    private func components(_ mountPoint: String) -> [String] {
        Array(mountPoint.split(separator: "/").map(String.init).dropFirst(base.split(separator: "/").count))
    }

    private func mount(_ storage: Grpc_Storage, field: String) throws {
        let (rooted, baseFD) = try beneathBase()
        defer { Linux.close(baseFD) }
        let options = MountOptions(storage.options)
        let isFile = storage.driver == "bind" && Linux.exists(storage.source) && !Linux.isDirectory(storage.source)
        let target = try rooted.create(components(storage.mountPoint), directory: !isFile)
        defer { Linux.close(target) }
        let path = procFDPath(target)
        // Errors name the request field and the mount point, not the /proc/self/fd path.
        func mount(_ source: String, _ type: String?, _ flags: MountFlags, _ data: String?, at path: String) throws {
            try sys("mount", "\(field) \(type ?? "bind") on \(storage.mountPoint)") {
                Glibc.mount(source, path, type, flags.rawValue, data)
            }
        }
        switch storage.driver {
        case "local":
            // An emptyDir: only a directory, with the mode the runtime asked for (mkdir's is masked).
            let mode = options.data.first { $0.hasPrefix("mode=") }.flatMap { mode_t($0.dropFirst(5), radix: 8) } ?? 0o777
            try sys("chmod", storage.mountPoint) { chmod(path, mode) }
            return
        case "bind":
            let recursive: MountFlags = options.flags.contains(.recursive) ? .recursive : []
            try mount(storage.source, nil, MountFlags.bind.union(recursive), nil, at: path)
            // Bind mounts ignore the other flags at creation: a remount of the new mount applies them.
            let extra = options.flags.subtracting([.bind, .recursive, .remount])
            if !extra.isEmpty {
                let mounted = try rooted.open(components(storage.mountPoint))
                defer { Linux.close(mounted) }
                try mount("", nil, extra.union([.bind, .remount]), nil, at: procFDPath(mounted))
            }
        default:
            let type = storage.driver == "9p" ? "9p" : "tmpfs"
            let source = storage.driver == "9p" ? storage.source : "tmpfs"
            try mount(source, type, options.flags.subtracting(.remount), options.dataString, at: path)
        }
        if !options.propagation.isEmpty {
            let mounted = try rooted.open(components(storage.mountPoint))
            defer { Linux.close(mounted) }
            try mount("", nil, options.propagation, nil, at: procFDPath(mounted))
        }
    }

    private func unmount(_ storage: Grpc_Storage) throws {
        let (rooted, baseFD) = try beneathBase()
        defer { Linux.close(baseFD) }
        let parts = components(storage.mountPoint)
        if storage.driver != "local" {
            let mounted = try rooted.open(parts)
            defer { Linux.close(mounted) }
            try sys("umount", storage.mountPoint) { umount2(procFDPath(mounted), Int32(MNT_DETACH)) }
        }
        // Only an empty directory (or the empty file a file bind needed) goes; data stays.
        let parent = try rooted.open(Array(parts.dropLast()), flags: Linux.openPath | O_DIRECTORY)
        defer { Linux.close(parent) }
        if unlinkat(parent, parts.last!, AT_REMOVEDIR) != 0 && errno == ENOTDIR && storage.driver == "bind" {
            unlinkat(parent, parts.last!, 0)
        }
    }
}
