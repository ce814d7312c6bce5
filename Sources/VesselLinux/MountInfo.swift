#if canImport(Glibc)
    import Glibc
#endif

/// One line of /proc/PID/mountinfo: only the fields the agent decides on.
public struct MountInfo: Sendable, Equatable {
    public var id: Int
    public var parentID: Int
    /// Relative to the reading process's root, with the kernel's octal escapes (\040...) undone.
    public var mountPoint: String
    public var fsType: String
    public var source: String

    public init(id: Int, parentID: Int, mountPoint: String, fsType: String, source: String) {
        self.id = id
        self.parentID = parentID
        self.mountPoint = mountPoint
        self.fsType = fsType
        self.source = source
    }

    /// Lines that do not parse are skipped: the format only ever grows optional fields.
    public static func parse(_ text: String) -> [MountInfo] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count >= 7, let id = Int(fields[0]), let parent = Int(fields[1]),
                let dash = fields.firstIndex(of: "-"), dash >= 6, dash + 2 < fields.count
            else { return nil }
            return MountInfo(
                id: id, parentID: parent, mountPoint: unescape(fields[4]), fsType: unescape(fields[dash + 1]),
                source: unescape(fields[dash + 2]))
        }
    }

    public static func read(pid: String = "self") throws(LinuxError) -> [MountInfo] {
        parse(try Linux.readFile("/proc/\(pid)/mountinfo"))
    }

    /// The kernel writes space, tab, newline and backslash as \ooo.
    static func unescape(_ field: Substring) -> String {
        var bytes: [UInt8] = []
        var utf8 = Array(field.utf8)[...]
        while let c = utf8.popFirst() {
            if c == 0x5c, utf8.count >= 3, utf8.prefix(3).allSatisfy({ $0 >= 0x30 && $0 <= 0x37 }) {
                let digits = utf8.prefix(3).map { Int($0 - 0x30) }
                bytes.append(UInt8(truncatingIfNeeded: digits[0] << 6 | digits[1] << 3 | digits[2]))
                utf8 = utf8.dropFirst(3)
            } else {
                bytes.append(c)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// True when "/" is the root of this mount namespace's tree (its own parent): the kernel's
    /// initial rootfs, which is never a pivot_root(2) candidate. Every namespace root is that
    /// rootfs (or its copy), hidden under "/" unless nothing was ever mounted over it.
    public static func rootIsNamespaceRoot(_ mounts: [MountInfo]) -> Bool {
        mounts.contains { $0.mountPoint == "/" && $0.id == $0.parentID }
    }
}

extension Linux {
    /// Where this host mounts cgroup2 read-write: /sys/fs/cgroup/unified on a hybrid host,
    /// /sys/fs/cgroup on a v2-only one; nil on a v1-only host.
    public static func cgroup2Mount() -> String? {
        let mounts = (try? readFile("/proc/self/mounts")) ?? ""
        for line in mounts.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count > 3 && fields[2] == "cgroup2" && fields[3].split(separator: ",").contains("rw") { return String(fields[1]) }
        }
        return nil
    }
}
