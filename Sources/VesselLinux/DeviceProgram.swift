#if canImport(Glibc)
    import Glibc
#endif

/// One cgroup device rule, as OCI and cgroup v1 spell it: allow or deny `type major:minor access`.
public struct DeviceRule: Equatable, Sendable {
    public enum Kind: Sendable {
        case all, char, block

        /// OCI's and v1's type letter: "c", "b", else (empty, "a", absent) every device.
        public init(type: String?) { self = type == "c" ? .char : type == "b" ? .block : .all }
    }
    public var allow: Bool
    public var kind: Kind
    /// nil: any.
    public var major: Int64?
    public var minor: Int64?
    /// Letters of "rwm"; empty means all three.
    public var access: String

    public init(allow: Bool, kind: Kind, major: Int64? = nil, minor: Int64? = nil, access: String = "rwm") {
        self.allow = allow
        self.kind = kind
        self.major = major
        self.minor = minor
        self.access = access
    }

    /// Denies every device: the first rule of every program, so what no later rule allows is refused.
    public static let denyAll = DeviceRule(allow: false, kind: .all)
}

/// cgroup v2 has no devices.allow file: device rules are an eBPF program of type CGROUP_DEVICE
/// attached to the cgroup. The program checks the rules last-to-first (a later rule overrides an
/// earlier one, as in v1) and allows what no rule matches, v1's default. Programs are attached
/// with BPF_F_ALLOW_MULTI: a process must pass its cgroup's and every ancestor's.
public enum DeviceProgram {
    public struct Instruction: Equatable, Sendable {
        public var code: UInt8, dst: UInt8 = 0, src: UInt8 = 0, off: Int16 = 0, imm: Int32 = 0

        public var raw: UInt64 {
            UInt64(code) | UInt64(src << 4 | dst) << 8 | UInt64(UInt16(bitPattern: off)) << 16 | UInt64(UInt32(bitPattern: imm)) << 32
        }

        public static func loadWord(_ dst: UInt8, offset: Int16) -> Instruction { Instruction(code: 0x61, dst: dst, src: 1, off: offset) }
        public static func and(_ dst: UInt8, _ imm: Int32) -> Instruction { Instruction(code: 0x54, dst: dst, imm: imm) }
        public static func shiftRight(_ dst: UInt8, _ imm: Int32) -> Instruction { Instruction(code: 0x74, dst: dst, imm: imm) }
        public static func move(_ dst: UInt8, register src: UInt8) -> Instruction { Instruction(code: 0xbf, dst: dst, src: src) }
        public static func move(_ dst: UInt8, _ imm: Int32) -> Instruction { Instruction(code: 0xb7, dst: dst, imm: imm) }
        public static func jumpIfNotEqual(_ dst: UInt8, _ imm: Int32, skip: Int16) -> Instruction {
            Instruction(code: 0x55, dst: dst, off: skip, imm: imm)
        }
        public static func jumpIfNotEqual(_ dst: UInt8, register src: UInt8, skip: Int16) -> Instruction {
            Instruction(code: 0x5d, dst: dst, src: src, off: skip)
        }
        public static let exit = Instruction(code: 0x95)
    }

    static func accessBits(_ access: String) -> Int32 {
        // BPF_DEVCG_ACC_MKNOD 1, READ 2, WRITE 4. "RWM" is as good as "rwm" (some callers write it so).
        access.isEmpty ? 7 : access.lowercased().reduce(0) { $0 | ($1 == "m" ? 1 : $1 == "r" ? 2 : $1 == "w" ? 4 : 0) }
    }

    /// r2 = device type, r3 = requested access, r4 = major, r5 = minor; one block per rule.
    public static func program(_ rules: [DeviceRule]) -> [Instruction] {
        var program: [Instruction] = [
            .loadWord(2, offset: 0), .and(2, 0xffff),
            .loadWord(3, offset: 0), .shiftRight(3, 16),
            .loadWord(4, offset: 4), .loadWord(5, offset: 8),
        ]
        for rule in rules.reversed() {
            // Each test jumps past the rest of this block when it does not match: offsets are
            // filled in once the block's length is known.
            var tests: [Instruction] = []
            if rule.kind != .all { tests.append(.jumpIfNotEqual(2, rule.kind == .block ? 1 : 2, skip: 0)) }
            let access = accessBits(rule.access)
            if access != 7 {
                tests += [.move(1, register: 3), .and(1, access), .jumpIfNotEqual(1, register: 3, skip: 0)]
            }
            if rule.kind != .all, let major = rule.major, major >= 0 {
                tests.append(.jumpIfNotEqual(4, Int32(truncatingIfNeeded: major), skip: 0))
            }
            if rule.kind != .all, let minor = rule.minor, minor >= 0 {
                tests.append(.jumpIfNotEqual(5, Int32(truncatingIfNeeded: minor), skip: 0))
            }
            let block = tests + [.move(0, rule.allow ? 1 : 0), .exit]
            program += block.enumerated().map { index, instruction in
                var fixed = instruction
                if instruction.code == 0x55 || instruction.code == 0x5d { fixed.off = Int16(block.count - index - 1) }
                return fixed
            }
            // A rule that matches everything decides for all earlier ones; the verifier refuses
            // the unreachable code that would follow it.
            if tests.isEmpty { return program }
        }
        return program + [.move(0, 1), .exit]
    }

    /// Loads the program for `rules` and attaches it to the cgroup v2 directory. Returns the
    /// program fd, which a caller that keeps it can `detach` later.
    public static func attach(_ rules: [DeviceRule], cgroup: String) throws(LinuxError) -> Int32 {
        let fd = try Linux.loadDeviceProgram(program(rules).map(\.raw))
        do {
            try withDirectory(cgroup) { dir throws(LinuxError) in
                try Linux.setDeviceProgram(fd, cgroup: dir, attached: true, detail: cgroup)
            }
        } catch {
            Linux.close(fd)
            throw error
        }
        return fd
    }

    public static func detach(_ programFD: Int32, cgroup: String) {
        try? withDirectory(cgroup) { dir throws(LinuxError) in
            try Linux.setDeviceProgram(programFD, cgroup: dir, attached: false, detail: cgroup)
        }
        Linux.close(programFD)
    }

    /// `rules` become the cgroup's only program of its own, for a caller that keeps no fds (the
    /// host's sandbox cgroups): the new one is attached before the old ones go, so the cgroup is
    /// never without rules.
    public static func replace(with rules: [DeviceRule], cgroup: String) throws(LinuxError) {
        let old = try withDirectory(cgroup) { dir throws(LinuxError) in try Linux.attachedDevicePrograms(cgroup: dir) }
        Linux.close(try attach(rules, cgroup: cgroup))
        try withDirectory(cgroup) { dir throws(LinuxError) in
            for id in old {
                let program = try Linux.deviceProgram(id: id)
                defer { Linux.close(program) }
                try Linux.setDeviceProgram(program, cgroup: dir, attached: false, detail: cgroup)
            }
        }
    }

    /// The rules of the programs attached to `cgroup` itself are not readable back; their count is.
    public static func attachedCount(cgroup: String) throws(LinuxError) -> Int {
        try withDirectory(cgroup) { dir throws(LinuxError) in try Linux.attachedDevicePrograms(cgroup: dir).count }
    }

    private static func withDirectory<T>(_ path: String, _ body: (Int32) throws(LinuxError) -> T) throws(LinuxError) -> T {
        let dir = try Linux.open(path, O_DIRECTORY | O_RDONLY)
        defer { Linux.close(dir) }
        return try body(dir)
    }
}
