import Foundation
import Testing
import VesselDevSupport
import VesselProtocol
import VesselTestSupport

/// Issue 3's checks, read from inside the container: capabilities, no_new_privs, seccomp, masked
/// and read-only paths, rlimits, sysctls, oom score, devices.
@Suite(.timeLimit(.minutes(3)), .serialized)
struct IsolationTests {
    static let dockerCapabilities = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
    ]

    static func hardened(_ agent: LocalAgent, _ script: String) -> Grpc_Spec {
        var spec = agent.spec(["sh", "-c", script])
        spec.process.capabilities = .with {
            $0.bounding = dockerCapabilities
            $0.effective = dockerCapabilities
            $0.permitted = dockerCapabilities
        }
        spec.process.noNewPrivileges = true
        spec.process.oomscoreAdj = 500
        spec.process.rlimits = [
            .with {
                $0.type = "RLIMIT_NOFILE"
                $0.soft = 1024
                $0.hard = 2048
            }
        ]
        spec.linux.maskedPaths = ["/proc/kcore", "/proc/timer_list", "/sys/firmware", "/proc/does-not-exist"]
        spec.linux.readonlyPaths = ["/proc/sys", "/proc/sysrq-trigger"]
        spec.linux.sysctl = ["kernel.shmmni": "1234"]
        spec.linux.devices = [
            .with {
                $0.path = "/dev/mynull"
                $0.type = "c"
                $0.major = 1
                $0.minor = 3
                $0.fileMode = 0o600
            }
        ]
        spec.linux.seccomp = .with {
            $0.defaultAction = "SCMP_ACT_ALLOW"
            $0.architectures = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
            $0.syscalls = [
                .with {
                    $0.names = ["mkdir", "mkdirat"]
                    $0.action = "SCMP_ACT_ERRNO"
                    $0.errnoRet = .errnoret(122)
                },
                .with {
                    $0.names = ["no_such_syscall_vessel"]
                    $0.action = "SCMP_ACT_ERRNO"
                },
                // Only personality(0xffffffff) (a query) is refused: an argument comparison.
                .with {
                    $0.names = ["personality"]
                    $0.action = "SCMP_ACT_ERRNO"
                    $0.errnoRet = .errnoret(13)
                    $0.args = [
                        .with {
                            $0.index = 0
                            $0.value = 0x1234
                            $0.op = "SCMP_CMP_EQ"
                        }
                    ]
                },
            ]
        }
        return spec
    }

    static func statusField(_ output: String, _ name: String) -> String {
        output.split(separator: "\n").first { $0.hasPrefix(name + ":") }.map { $0.split(separator: "\t").last.map(String.init) ?? "" }
            ?? "missing"
    }

    @Test func hardenedContainerFromTheInside() async throws {
        try await withAgent { agent in
            let script = """
                cat /proc/self/status; \
                mkdir /tmp/denied 2>&1; \
                echo timer_list=$(wc -c < /proc/timer_list); echo firmware=$(ls /sys/firmware | wc -l); \
                (echo 1 > /proc/sys/kernel/shmmax) 2>&1; \
                echo shmmni=$(cat /proc/sys/kernel/shmmni); \
                grep 'Max open files' /proc/self/limits; \
                echo oom=$(cat /proc/self/oom_score_adj); \
                ls -l /dev/mynull; echo x > /dev/mynull && echo wrote
                """
            try await agent.client.createContainer("hard", spec: Self.hardened(agent, script))
            try await agent.client.startContainer("hard")
            let output = try await agent.output("hard")
            #expect(Self.statusField(output, "CapEff") == "00000000a80425fb", "\(output)")
            #expect(Self.statusField(output, "CapBnd") == "00000000a80425fb")
            #expect(Self.statusField(output, "CapPrm") == "00000000a80425fb")
            #expect(Self.statusField(output, "CapAmb") == "0000000000000000")
            #expect(Self.statusField(output, "NoNewPrivs") == "1")
            #expect(Self.statusField(output, "Seccomp") == "2")
            #expect(output.contains("Disk quota exceeded"), "seccomp errnoRet 122 (EDQUOT) expected:\n\(output)")
            #expect(output.contains("timer_list=0\n"), "\(output)")
            #expect(output.contains("firmware=0\n"))
            #expect(output.contains("Read-only file system"))
            #expect(output.contains("shmmni=1234\n"))
            #expect(output.contains("Max open files            1024                 2048"), "\(output)")
            #expect(output.contains("oom=500\n"))
            #expect(output.contains("crw-------"), "\(output)")
            #expect(output.contains("wrote\n"))
            #expect(try await agent.client.wait("hard") == 0)

            // exec'd processes get the container's seccomp profile and their own capabilities.
            var process = LocalAgent.process(["sh", "-c", "grep -E 'CapEff|Seccomp:' /proc/self/status; mkdir /tmp/x 2>&1; id -u"])
            process.user = .with {
                $0.uid = 1000
                $0.gid = 1000
            }
            // A non-root process keeps capabilities across execve only through the ambient set.
            process.capabilities = .with {
                $0.bounding = ["CAP_NET_BIND_SERVICE"]
                $0.effective = ["CAP_NET_BIND_SERVICE"]
                $0.permitted = ["CAP_NET_BIND_SERVICE"]
                $0.inheritable = ["CAP_NET_BIND_SERVICE"]
                $0.ambient = ["CAP_NET_BIND_SERVICE"]
            }
            try await agent.client.createContainer("long", spec: Self.hardened(agent, "sleep 1000"))
            try await agent.client.startContainer("long")
            try await agent.client.exec("long", "e", process: process)
            let execOutput = try await agent.output("long", "e")
            #expect(execOutput.contains("CapEff:\t0000000000000400"), "\(execOutput)")
            #expect(execOutput.contains("Seccomp:\t2"))
            #expect(execOutput.contains("Disk quota exceeded"))
            #expect(execOutput.hasSuffix("1000\n"))
            try await agent.client.removeContainer("long")
        }
    }

    /// `--no-pivot` (forced in the guest, whose "/" is the initramfs): MS_MOVE + chroot instead of
    /// pivot_root. The container must still see only its own mounts, and read-only root, masked and
    /// read-only paths, /proc and /dev must work as with pivot_root.
    @Test func noPivotContainerSeesOnlyItsOwnMounts() async throws {
        try await withAgent(arguments: ["--no-pivot"]) { agent in
            let script = """
                cat /proc/self/mountinfo; echo ---; \
                touch /rootfile 2>&1; echo timer_list=$(wc -c < /proc/timer_list); \
                (echo 1 > /proc/sys/kernel/shmmax) 2>&1; echo shmmni=$(cat /proc/sys/kernel/shmmni); \
                echo pid=$$; ls /dev/null /dev/pts/ptmx; echo x > /dev/mynull && echo wrote; \
                ls / | tr '\\n' ' '
                """
            var spec = Self.hardened(agent, script)
            spec.root.readonly = true
            try await agent.client.createContainer("nopivot", spec: spec)
            try await agent.client.startContainer("nopivot")
            let output = try await agent.output("nopivot")
            #expect(try await agent.client.wait("nopivot") == 0, "\(output)")
            let mountinfo = output.components(separatedBy: "---")[0]
            let points = Set(MountTable.mountPoints(mountinfo))
            // The spec's mounts and the masks of paths this kernel has: nothing of the host.
            let own: Set<String> = ["/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/tmp", "/proc/sys"]
            let masks: Set<String> = ["/proc/kcore", "/proc/timer_list", "/sys/firmware", "/proc/sysrq-trigger"]
            #expect(points.isSuperset(of: own) && points.isSubset(of: own.union(masks)), "\(mountinfo)")
            #expect(output.contains("touch: /rootfile: Read-only file system"), "\(output)")
            #expect(output.contains("timer_list=0\n"))
            #expect(output.contains("Read-only file system\nshmmni=1234\n"), "\(output)")
            #expect(output.contains("pid=1\n"))
            #expect(output.contains("/dev/null\n/dev/pts/ptmx\nwrote\n"), "\(output)")
            #expect(output.contains("bin dev etc proc root sys tmp"), "\(output)")

            // An exec joins the moved root, not the host's.
            try await agent.client.createContainer("long", spec: Self.hardened(agent, "sleep 1717"))
            try await agent.client.startContainer("long")
            try await agent.exec("long", "e", ["sh", "-c", "ls /; wc -l < /proc/self/mountinfo"])
            let execOutput = try await agent.output("long", "e")
            #expect(execOutput.hasPrefix("bin\ndev\netc\nproc\nroot\nsys\ntmp\n"), "\(execOutput)")
            try await agent.client.removeContainer("long")
            try await agent.client.removeContainer("nopivot")
            #expect(agent.leftoverMounts().isEmpty, "\(agent.leftoverMounts())")
        }
    }

    @Test func badSpecsNameTheFieldAndLeaveNothingBehind() async throws {
        try await withAgent { agent in
            func create(_ id: String, _ change: (inout Grpc_Spec) -> Void) async throws {
                var spec = agent.spec(["sleep", "31337"])
                change(&spec)
                try await agent.client.createContainer(id, spec: spec)
            }
            await expectError(.invalidArgument, containing: "capabilities.bounding: unknown capability \"CAP_FLY\"") {
                try await create("cap") { $0.process.capabilities = .with { $0.bounding = ["CAP_CHOWN", "CAP_FLY"] } }
            }
            await expectError(.invalidArgument, containing: "seccomp.defaultAction \"SCMP_ACT_EXPLODE\"") {
                try await create("sec") { $0.linux.seccomp = .with { $0.defaultAction = "SCMP_ACT_EXPLODE" } }
            }
            await expectError(.invalidArgument, containing: "seccomp.syscalls[0].action") {
                try await create("sec2") {
                    $0.linux.seccomp = .with {
                        $0.defaultAction = "SCMP_ACT_ALLOW"
                        $0.syscalls = [
                            .with {
                                $0.names = ["read"]
                                $0.action = "bogus"
                            }
                        ]
                    }
                }
            }
            await expectError(.invalidArgument, containing: "rlimits[0]: soft limit 10 exceeds hard limit 5") {
                try await create("rl") {
                    $0.process.rlimits = [
                        .with {
                            $0.type = "RLIMIT_NOFILE"
                            $0.soft = 10
                            $0.hard = 5
                        }
                    ]
                }
            }
            await expectError(.invalidArgument, containing: "rlimits[0].type \"RLIMIT_WISHES\"") {
                try await create("rl2") {
                    $0.process.rlimits = [
                        .with {
                            $0.type = "RLIMIT_WISHES"
                            $0.soft = 1
                            $0.hard = 1
                        }
                    ]
                }
            }
            await expectError(.invalidArgument, containing: "sysctl[kernel.panic]: not a namespaced sysctl") {
                try await create("sys") { $0.linux.sysctl = ["kernel.panic": "1"] }
            }
            await expectError(.invalidArgument, containing: "sysctl[net.ipv4.ip_forward]: needs a private network namespace") {
                try await create("sys2") { $0.linux.sysctl = ["net.ipv4.ip_forward": "1"] }
            }
            await expectError(.invalidArgument, containing: "devices[0].type") {
                try await create("dev") {
                    $0.linux.devices = [
                        .with {
                            $0.path = "/dev/x"
                            $0.type = "z"
                        }
                    ]
                }
            }
            #expect(HostProcesses.pids(withArgument: "31337").isEmpty)
            #expect(agent.leftoverMounts().isEmpty)
            try await agent.run("alive", ["true"])
            #expect(try await agent.client.wait("alive") == 0)
        }
    }
}
