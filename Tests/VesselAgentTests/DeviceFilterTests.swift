import Foundation
import Testing
import VesselDevSupport
import VesselProtocol

@testable import VesselAgent

/// The cgroup v2 device filter: generated eBPF, and the real thing attached to a cgroup of this
/// host's (empty but real) cgroup2 mount.
@Suite(.timeLimit(.minutes(3)), .serialized)
struct DeviceFilterTests {
    static let denyAll = rule(allow: false, "a", -1, -1, "rwm")
    /// Where this host mounts cgroup2: /sys/fs/cgroup/unified on a hybrid host, /sys/fs/cgroup on a v2-only one.
    static let cgroup2: String? = {
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        for line in mounts.split(separator: "\n") {
            let fields = line.split(separator: " ").map(String.init)
            if fields.count > 3 && fields[2] == "cgroup2" && fields[3].split(separator: ",").contains("rw") { return fields[1] }
        }
        return nil
    }()

    @Test func programShape() {
        let allowNullRead = rule(allow: true, "c", 1, 3, "r")
        let program = DeviceFilter.program([Self.denyAll, allowNullRead])
        // prologue 6; the last rule first: type, access (3), major, minor, r0, exit = 8; deny-all: r0, exit,
        // which matches everything, so no default follows.
        #expect(program.count == 6 + 8 + 2)
        #expect(program[6] == .jumpIfNotEqual(2, 2, skip: 7))
        #expect(program[9] == .jumpIfNotEqual(1, register: 3, skip: 4))
        #expect(program[12] == .move(0, 1))
        #expect(program[14] == .move(0, 0))
        #expect(program.last == .exit)
        #expect(DeviceFilter.Instruction.exit.raw == 0x95)
        #expect(DeviceFilter.Instruction.move(0, 1).raw == 0x0000_0001_0000_00b7)
    }

    /// Runs `script` in a fresh cgroup2 directory with the filter for `rules` attached.
    func run(_ rules: [Grpc_LinuxDeviceCgroup], _ script: String) throws -> String {
        let dir = try #require(Self.cgroup2) + "/vessel-devtest-\(getpid())-\(Int.random(in: 0...99999))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        defer { rmdir(dir) }
        let program = try DeviceFilter.attach(rules, cgroup: dir)
        defer { DeviceFilter.detach(program, cgroup: dir) }
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("vessel-devtest-\(UUID().uuidString.prefix(8))").path
        FileManager.default.createFile(atPath: output, contents: nil)
        defer { unlink(output) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "echo $$ > \(dir)/cgroup.procs; \(script)"]
        process.standardOutput = FileHandle(forWritingAtPath: output)
        try process.run()
        #expect(process.exited(within: 30), "the probe still ran after 30 s: killed")
        return (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
    }

    @Test(.enabled(if: Self.cgroup2 != nil, "no read-write cgroup2 mount on this host"))
    func theKernelEnforcesTheRules() throws {
        let probe = """
            (exec 3</dev/null) 2>/dev/null && echo null-read; \
            (exec 3</dev/kmsg) 2>/dev/null && echo kmsg-read; \
            (exec 3>/dev/kmsg) 2>/dev/null && echo kmsg-write; true
            """
        #expect(try run([Self.denyAll], probe) == "null-read\n")
        let readKmsg = rule(allow: true, "c", 1, 11, "r")
        #expect(try run([Self.denyAll, readKmsg], probe) == "null-read\nkmsg-read\n")
        // A later deny overrides an earlier allow.
        let denyKmsg = rule(allow: false, "c", 1, 11, "rwm")
        #expect(try run([readKmsg, denyKmsg], probe) == "null-read\n")
    }
}

/// One device rule: allow or deny `type major:minor` for `access`.
private func rule(allow: Bool, _ type: String, _ major: Int64, _ minor: Int64, _ access: String) -> Grpc_LinuxDeviceCgroup {
    .with {
        $0.allow = allow
        $0.type = type
        $0.major = major
        $0.minor = minor
        $0.access = access
    }
}
