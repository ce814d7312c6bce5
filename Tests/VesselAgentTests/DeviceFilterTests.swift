import Foundation
import Testing
import VesselDevSupport
import VesselLinux
import VesselProtocol
import VesselTestSupport

@testable import VesselAgent

/// The container's device filter (the spec's rules, the deny-all before and the defaults after)
/// attached to a cgroup of this host's (empty but real) cgroup2 mount.
@Suite(.timeLimit(.minutes(3)), .serialized)
struct DeviceFilterTests {
    static let denyAll = rule(allow: false, "a", -1, -1, "rwm")
    static let cgroup2 = Linux.cgroup2Mount()

    /// Runs `script` in a fresh cgroup2 directory with the filter for `rules` attached.
    func run(_ rules: [Grpc_LinuxDeviceCgroup], _ script: String) throws -> String {
        let dir = try #require(Self.cgroup2) + "/vessel-devtest-\(getpid())-\(Int.random(in: 0...99999))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        defer { rmdir(dir) }
        let program = try DeviceFilter.attach(rules, cgroup: dir)
        defer { DeviceFilter.detach(program, cgroup: dir) }
        do {
            return try runCommand(["/bin/sh", "-c", "echo $$ > \(dir)/cgroup.procs; \(script)"], timeout: 30).output
        } catch let timedOut as CommandTimedOut {
            Issue.record("the probe still ran after 30 s: killed")
            return timedOut.result.output
        }
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
