import Foundation
import Testing
import VesselLinux

/// cgroup v2 device programs: the generated eBPF, and the real thing on this host's cgroup2 mount.
@Suite(.timeLimit(.minutes(1)), .serialized)
struct DeviceProgramTests {
    static let cgroup2 = Linux.cgroup2Mount()
    static let readKmsg = DeviceRule(allow: true, kind: .char, major: 1, minor: 11, access: "r")
    static let null = DeviceRule(allow: true, kind: .char, major: 1, minor: 3)

    @Test func programShape() {
        let allowNullRead = DeviceRule(allow: true, kind: .char, major: 1, minor: 3, access: "r")
        let program = DeviceProgram.program([.denyAll, allowNullRead])
        // prologue 6; the last rule first: type, access (3), major, minor, r0, exit = 8; deny-all: r0, exit,
        // which matches everything, so no default follows.
        #expect(program.count == 6 + 8 + 2)
        #expect(program[6] == .jumpIfNotEqual(2, 2, skip: 7))
        #expect(program[9] == .jumpIfNotEqual(1, register: 3, skip: 4))
        #expect(program[12] == .move(0, 1))
        #expect(program[14] == .move(0, 0))
        #expect(program.last == .exit)
        #expect(DeviceProgram.Instruction.exit.raw == 0x95)
        #expect(DeviceProgram.Instruction.move(0, 1).raw == 0x0000_0001_0000_00b7)
    }

    /// What a shell started straight into `cgroup` (CLONE_INTO_CGROUP, as QEMU is) may open.
    func probe(_ cgroup: String) throws -> String {
        let output = try Linux.pipe()
        let dir = try Linux.open(cgroup, O_DIRECTORY | O_RDONLY)
        defer {
            Linux.close(dir)
            Linux.close(output.read)
        }
        let script = """
            (exec 3</dev/null) 2>/dev/null && echo null-read; \
            (exec 3</dev/kmsg) 2>/dev/null && echo kmsg-read; \
            (exec 3>/dev/kmsg) 2>/dev/null && echo kmsg-write; true
            """
        let child = try spawn(
            exeFD: -1, path: "/bin/sh", arguments: ["sh", "-c", script], environment: [], fds: [(output.write, 1)], cgroup: dir)
        Linux.close(output.write)
        var text = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 256)
        while case let n = read(output.read, &buffer, buffer.count), n > 0 { text += buffer.prefix(n) }
        var status: Int32 = 0
        waitpid(child.pid, &status, 0)
        return String(decoding: text, as: UTF8.self)
    }

    func withCgroup<T>(_ body: (String) throws -> T) throws -> T {
        let dir = try #require(Self.cgroup2) + "/vessel-devprog-\(getpid())-\(Int.random(in: 0...99999))"
        try Linux.mkdirAll(dir)
        defer {
            rmdir(dir + "/child")
            rmdir(dir)
        }
        return try body(dir)
    }

    @Test(.enabled(if: Self.cgroup2 != nil, "no read-write cgroup2 mount on this host"))
    func theKernelEnforcesTheRules() throws {
        try withCgroup { dir in
            let attached = try DeviceProgram.attach([.denyAll], cgroup: dir)
            #expect(try probe(dir) == "")
            DeviceProgram.detach(attached, cgroup: dir)
            #expect(try probe(dir) == "null-read\nkmsg-read\nkmsg-write\n", "detached: no rules")
            try DeviceProgram.replace(with: [.denyAll, Self.readKmsg, Self.null], cgroup: dir)
            #expect(try probe(dir) == "null-read\nkmsg-read\n")
            // A later deny overrides an earlier allow.
            try DeviceProgram.replace(with: [Self.readKmsg, DeviceRule(allow: false, kind: .char, major: 1, minor: 11)], cgroup: dir)
            #expect(try probe(dir) == "null-read\n")
            #expect(try DeviceProgram.attachedCount(cgroup: dir) == 1, "replace leaves only the new program")
        }
    }

    /// A child's program narrows its parent's, never widens it (BPF_F_ALLOW_MULTI: both must allow):
    /// the host's QEMU lives in such a child of its sandbox's cgroup.
    @Test(.enabled(if: Self.cgroup2 != nil, "no read-write cgroup2 mount on this host"))
    func aChildProgramNarrowsItsParents() throws {
        try withCgroup { dir in
            try Linux.mkdirAll(dir + "/child")
            try DeviceProgram.replace(with: [.denyAll, Self.readKmsg, Self.null], cgroup: dir)
            let writeKmsg = DeviceRule(allow: true, kind: .char, major: 1, minor: 11, access: "w")
            try DeviceProgram.replace(with: [.denyAll, Self.null, writeKmsg], cgroup: dir + "/child")
            #expect(try probe(dir + "/child") == "null-read\n", "reading kmsg is the parent's only, writing it the child's only")
            #expect(try probe(dir) == "null-read\nkmsg-read\n")
        }
    }
}
