#if canImport(Glibc)
    import Glibc
#endif

extension Linux {
    /// Removes a directory tree that may have mounts in it (bind mounts of a container's rootfs or
    /// volumes: the caller's data). Mounts at or below `path` are detached first, deepest first, and
    /// the walk never crosses into another file system, so what a mount covered is never deleted
    /// even if its detach failed. Returns false when something could not be removed.
    @discardableResult
    public static func removeTree(_ path: String) -> Bool {
        let prefix = path.hasSuffix("/") ? path : path + "/"
        let mounts = ((try? MountInfo.read()) ?? []).map(\.mountPoint).filter { $0 == path || $0.hasPrefix(prefix) }
        for mountPoint in mounts.sorted(by: { $0.count > $1.count }) { _ = umount2(mountPoint, Int32(MNT_DETACH)) }
        var root = stat()
        guard lstat(path, &root) == 0 else { return Glibc.errno == ENOENT }
        guard (root.st_mode & S_IFMT) == S_IFDIR else { return unlink(path) == 0 }
        return removeContents(path, device: root.st_dev) && rmdir(path) == 0
    }

    private static func removeContents(_ directory: String, device: dev_t) -> Bool {
        guard let dir = opendir(directory) else { return false }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(dir)
        var complete = true
        for name in names {
            let child = directory + "/" + name
            var st = stat()
            guard lstat(child, &st) == 0 else { continue }
            if (st.st_mode & S_IFMT) == S_IFDIR {
                // Another file system here is a mount that did not go: leave it (and what it covers).
                if st.st_dev != device || !removeContents(child, device: device) || rmdir(child) != 0 { complete = false }
            } else if unlink(child) != 0 {
                complete = false
            }
        }
        return complete
    }
}
