/// mount(2) flags, and the parser for OCI/fstab option strings.
public struct MountFlags: OptionSet, Sendable {
    public let rawValue: UInt
    public init(rawValue: UInt) { self.rawValue = rawValue }

    public static let readOnly = MountFlags(rawValue: 1)
    public static let noSUID = MountFlags(rawValue: 2)
    public static let noDev = MountFlags(rawValue: 4)
    public static let noExec = MountFlags(rawValue: 8)
    public static let synchronous = MountFlags(rawValue: 16)
    public static let remount = MountFlags(rawValue: 32)
    public static let mandLock = MountFlags(rawValue: 64)
    public static let dirSync = MountFlags(rawValue: 128)
    public static let noAtime = MountFlags(rawValue: 1024)
    public static let noDirAtime = MountFlags(rawValue: 2048)
    public static let bind = MountFlags(rawValue: 4096)
    public static let move = MountFlags(rawValue: 8192)
    public static let recursive = MountFlags(rawValue: 16384)
    public static let unbindable = MountFlags(rawValue: 1 << 17)
    public static let `private` = MountFlags(rawValue: 1 << 18)
    public static let slave = MountFlags(rawValue: 1 << 19)
    public static let shared = MountFlags(rawValue: 1 << 20)
    public static let relAtime = MountFlags(rawValue: 1 << 21)
    public static let strictAtime = MountFlags(rawValue: 1 << 24)

    public static let propagation: MountFlags = [.unbindable, .private, .slave, .shared]
}

/// mount_setattr(2) attributes: unlike a bind remount they can cover a whole tree at once.
public struct MountAttributes: OptionSet, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let readOnly = MountAttributes(rawValue: 0x1)
    public static let noSUID = MountAttributes(rawValue: 0x2)
    public static let noDev = MountAttributes(rawValue: 0x4)
    public static let noExec = MountAttributes(rawValue: 0x8)
}

/// An OCI mount's options split the way the kernel wants them.
public struct MountOptions: Sendable, Equatable {
    public var flags: MountFlags = []
    public var cleared: MountFlags = []
    public var propagation: MountFlags = []
    public var data: [String] = []

    public init(_ options: [String]) {
        for option in options {
            if let (flag, clear) = Self.table[option] {
                if clear {
                    flags.remove(flag)
                    cleared.formUnion(flag)
                } else {
                    flags.formUnion(flag)
                }
            } else if let p = Self.propagationTable[option] {
                propagation = p
            } else {
                data.append(option)
            }
        }
    }

    public var isBind: Bool { flags.contains(.bind) }
    public var dataString: String? { data.isEmpty ? nil : data.joined(separator: ",") }

    private static let table: [String: (MountFlags, Bool)] = [
        "ro": (.readOnly, false), "rw": (.readOnly, true),
        "nosuid": (.noSUID, false), "suid": (.noSUID, true),
        "nodev": (.noDev, false), "dev": (.noDev, true),
        "noexec": (.noExec, false), "exec": (.noExec, true),
        "sync": (.synchronous, false), "async": (.synchronous, true),
        "dirsync": (.dirSync, false), "remount": (.remount, false),
        "mand": (.mandLock, false), "nomand": (.mandLock, true),
        "noatime": (.noAtime, false), "atime": (.noAtime, true),
        "nodiratime": (.noDirAtime, false), "diratime": (.noDirAtime, true),
        "relatime": (.relAtime, false), "norelatime": (.relAtime, true),
        "strictatime": (.strictAtime, false), "nostrictatime": (.strictAtime, true),
        "bind": (.bind, false), "rbind": ([.bind, .recursive], false),
        "defaults": ([], false),
    ]

    private static let propagationTable: [String: MountFlags] = [
        "private": .private, "rprivate": [.private, .recursive],
        "shared": .shared, "rshared": [.shared, .recursive],
        "slave": .slave, "rslave": [.slave, .recursive],
        "unbindable": .unbindable, "runbindable": [.unbindable, .recursive],
    ]
}
