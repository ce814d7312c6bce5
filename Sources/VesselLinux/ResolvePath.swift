import CVessel

#if canImport(Glibc)
    import Glibc
#endif

/// Path resolution that cannot leave a root directory: openat2(RESOLVE_IN_ROOT) interprets every
/// symlink and ".." as if `root` were "/", which defeats the symlink-exchange class of attacks
/// (CVE-2019-16884 and friends) as long as callers use the returned fd, not the path string.
public struct RootedPath {
    static let resolveInRoot: UInt64 = 0x10
    static let resolveBeneath: UInt64 = 0x08
    static let resolveNoMagiclinks: UInt64 = 0x02

    public let rootFD: Int32
    private let resolve: UInt64

    /// `confined`: escapes are errors (EXDEV, RESOLVE_BENEATH) instead of being clamped at the root.
    public init(rootFD: Int32, confined: Bool = false) {
        self.rootFD = rootFD
        self.resolve = (confined ? Self.resolveBeneath : Self.resolveInRoot) | Self.resolveNoMagiclinks
    }

    /// Opens `directory` as the root; the caller closes `rootFD`.
    public static func open(directory: String, confined: Bool = false) throws(LinuxError) -> RootedPath {
        RootedPath(rootFD: try Linux.open(directory, VESSEL_O_PATH | O_DIRECTORY), confined: confined)
    }

    /// Components of a path relative to the root; ".." anywhere is refused because a lexical
    /// escape is always a mistake or an attack, never a layout we must honour.
    public static func components(_ path: String, field: String) throws(LinuxError) -> [String] {
        let parts = path.split(separator: "/").map(String.init).filter { $0 != "." && !$0.isEmpty }
        if parts.contains("..") {
            throw LinuxError(stage: field, errno: EXDEV, detail: "\(path) contains '..'")
        }
        return parts
    }

    public func open(_ components: [String], flags: Int32 = VESSEL_O_PATH) throws(LinuxError) -> Int32 {
        let rel = components.isEmpty ? "." : components.joined(separator: "/")
        return try cvessel("openat2", rel) {
            vessel_openat2(rootFD, rel, UInt64(flags | O_CLOEXEC), 0, resolve)
        }
    }

    /// Opens (VESSEL_O_PATH) the path, creating missing directories, and the last component as a
    /// directory or an empty file. The caller owns the fd.
    public func create(_ components: [String], directory: Bool, mode: mode_t = 0o755) throws(LinuxError) -> Int32 {
        for depth in 0..<components.count {
            let prefix = Array(components[0...depth])
            let fd = vessel_openat2(rootFD, prefix.joined(separator: "/"), UInt64(VESSEL_O_PATH | O_CLOEXEC), 0, resolve)
            if fd >= 0 {
                Linux.close(fd)
                continue
            }
            if fd != -ENOENT { throw LinuxError(stage: "openat2", errno: -fd, detail: prefix.joined(separator: "/")) }
            let parent = try open(Array(components[0..<depth]), flags: VESSEL_O_PATH | O_DIRECTORY)
            defer { Linux.close(parent) }
            let name = components[depth]
            if depth == components.count - 1 && !directory {
                let f = openat(parent, name, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0o644)
                if f < 0 && errno != EEXIST { throw LinuxError(stage: "create", detail: name) }
                Linux.close(f)
            } else if mkdirat(parent, name, mode) != 0 && errno != EEXIST {
                throw LinuxError(stage: "mkdir", detail: prefix.joined(separator: "/"))
            }
        }
        return try open(components)
    }
}

/// "/proc/self/fd/N": the way to hand an already-resolved fd to mount(2) and friends.
public func procFDPath(_ fd: Int32) -> String {
    "/proc/self/fd/\(fd)"
}
