import VesselLinux
import VesselProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// cgroup v2 has no devices.allow file: device rules are an eBPF program of type
/// CGROUP_DEVICE attached to the container's cgroup. The program checks the rules last-to-first
/// (a later rule overrides an earlier one, as in v1) and allows what no rule matches, v1's default.
enum DeviceFilter {
    /// Devices every container may use, appended after the spec's rules as runc does; not c 5:1:
    /// in a VM /dev/console is the guest's serial console, which ends in a file on the host (a
    /// terminal's /dev/console is its pty, 136:N). A spec that allows it explicitly still gets it.
    static let defaultAllowed: [Grpc_LinuxDeviceCgroup] = [
        (1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2), (136, -1), (10, 200),
    ].map { (major: Int64, minor: Int64) in
        .with {
            $0.allow = true
            $0.type = "c"
            $0.major = major
            $0.minor = minor
            $0.access = "rwm"
        }
    }

    struct Instruction: Equatable {
        var code: UInt8, dst: UInt8 = 0, src: UInt8 = 0, off: Int16 = 0, imm: Int32 = 0

        var raw: UInt64 {
            UInt64(code) | UInt64(src << 4 | dst) << 8 | UInt64(UInt16(bitPattern: off)) << 16 | UInt64(UInt32(bitPattern: imm)) << 32
        }

        static func loadWord(_ dst: UInt8, offset: Int16) -> Instruction { Instruction(code: 0x61, dst: dst, src: 1, off: offset) }
        static func and(_ dst: UInt8, _ imm: Int32) -> Instruction { Instruction(code: 0x54, dst: dst, imm: imm) }
        static func shiftRight(_ dst: UInt8, _ imm: Int32) -> Instruction { Instruction(code: 0x74, dst: dst, imm: imm) }
        static func move(_ dst: UInt8, register src: UInt8) -> Instruction { Instruction(code: 0xbf, dst: dst, src: src) }
        static func move(_ dst: UInt8, _ imm: Int32) -> Instruction { Instruction(code: 0xb7, dst: dst, imm: imm) }
        static func jumpIfNotEqual(_ dst: UInt8, _ imm: Int32, skip: Int16) -> Instruction {
            Instruction(code: 0x55, dst: dst, off: skip, imm: imm)
        }
        static func jumpIfNotEqual(_ dst: UInt8, register src: UInt8, skip: Int16) -> Instruction {
            Instruction(code: 0x5d, dst: dst, src: src, off: skip)
        }
        static let exit = Instruction(code: 0x95)
    }

    static func accessBits(_ access: String) -> Int32 {
        // BPF_DEVCG_ACC_MKNOD 1, READ 2, WRITE 4
        // "RWM" is as good as "rwm" (some callers write it so); anything else was refused by Validation.
        access.isEmpty ? 7 : access.lowercased().reduce(0) { $0 | ($1 == "m" ? 1 : $1 == "r" ? 2 : $1 == "w" ? 4 : 0) }
    }

    /// r2 = device type, r3 = requested access, r4 = major, r5 = minor; one block per rule.
    static func program(_ rules: [Grpc_LinuxDeviceCgroup]) -> [Instruction] {
        var program: [Instruction] = [
            .loadWord(2, offset: 0), .and(2, 0xffff),
            .loadWord(3, offset: 0), .shiftRight(3, 16),
            .loadWord(4, offset: 4), .loadWord(5, offset: 8),
        ]
        for rule in rules.reversed() {
            // Each test jumps past the rest of this block when it does not match: offsets are
            // filled in once the block's length is known.
            var tests: [Instruction] = []
            let all = rule.type.isEmpty || rule.type == "a"
            if !all { tests.append(.jumpIfNotEqual(2, rule.type == "b" ? 1 : 2, skip: 0)) }
            let access = accessBits(rule.access)
            if access != 7 {
                tests += [.move(1, register: 3), .and(1, access), .jumpIfNotEqual(1, register: 3, skip: 0)]
            }
            if !all && rule.major >= 0 { tests.append(.jumpIfNotEqual(4, Int32(truncatingIfNeeded: rule.major), skip: 0)) }
            if !all && rule.minor >= 0 { tests.append(.jumpIfNotEqual(5, Int32(truncatingIfNeeded: rule.minor), skip: 0)) }
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

    /// The first rule: what neither the spec nor the defaults allow is refused (a spec without
    /// rules must not mean every device, in a guest whose devices are the VM's).
    static let denyAll: Grpc_LinuxDeviceCgroup = .with {
        $0.allow = false
        $0.access = "rwm"
    }

    /// Loads the program for `rules` (after `denyAll`, before the defaults) and attaches it to the
    /// cgroup directory. Returns the program fd, which the caller keeps to detach it on replacement.
    static func attach(_ rules: [Grpc_LinuxDeviceCgroup], cgroup: String) throws -> Int32 {
        let fd = try Linux.loadDeviceProgram(program([denyAll] + rules + defaultAllowed).map(\.raw))
        let dir = try Linux.open(cgroup, O_DIRECTORY | O_RDONLY)
        defer { Linux.close(dir) }
        do {
            try Linux.setDeviceProgram(fd, cgroup: dir, attached: true, detail: cgroup)
        } catch {
            Linux.close(fd)
            throw error
        }
        return fd
    }

    static func detach(_ programFD: Int32, cgroup: String) {
        if let dir = try? Linux.open(cgroup, O_DIRECTORY | O_RDONLY) {
            try? Linux.setDeviceProgram(programFD, cgroup: dir, attached: false, detail: cgroup)
            Linux.close(dir)
        }
        Linux.close(programFD)
    }
}
