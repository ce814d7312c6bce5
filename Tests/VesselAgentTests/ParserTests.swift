import Testing
import VesselLinux
import VesselProtocol
import VesselSpec

@testable import VesselAgent

/// Pure conversions: mount options, cgroup values, capability and sysctl rules.
@Suite(.timeLimit(.minutes(3)))
struct ParserTests {
    @Test func mountOptionsSplitIntoFlagsPropagationAndData() {
        let o = MountOptions(["nosuid", "noexec", "ro", "rbind", "rslave", "mode=755", "size=64k", "rw", "relatime"])
        #expect(o.flags == [.noSUID, .noExec, .bind, .recursive, .relAtime])
        #expect(o.cleared == [.readOnly])
        #expect(o.propagation == [.slave, .recursive])
        #expect(o.dataString == "mode=755,size=64k")
        #expect(MountOptions(["defaults"]).flags.isEmpty && MountOptions(["defaults"]).dataString == nil)
    }

    @Test func cgroupV2Conversion() {
        let r = Grpc_LinuxResources.with {
            $0.memory = .with {
                $0.limit = 256 << 20
                $0.reservation = 128 << 20
                $0.swap = 512 << 20
                $0.swappiness = 10
            }
            $0.cpu = .with {
                $0.shares = 1024
                $0.quota = 50_000
                $0.period = 100_000
                $0.cpus = "0-1"
                $0.mems = "0"
            }
            $0.pids = .with { $0.limit = -1 }
            $0.blockIo = .with {
                $0.weight = 500
                $0.throttleReadBpsDevice = [
                    .with {
                        $0.major = 8
                        $0.minor = 0
                        $0.rate = 1_048_576
                    }
                ]
            }
            $0.hugepageLimits = [
                .with {
                    $0.pagesize = "2MB"
                    $0.limit = 1
                }
            ]
        }
        let (writes, skipped) = CgroupResources.v2(r)
        #expect(
            writes.map(\.description) == [
                "memory.max=268435456", "memory.low=134217728", "memory.swap.max=268435456",
                "cpu.weight=39", "cpu.max=50000 100000", "cpuset.cpus=0-1", "cpuset.mems=0",
                "pids.max=max", "io.weight=default 4950", "io.max=8:0 rbps=1048576",
            ])
        #expect(skipped.count == 2)
        #expect(
            CgroupResources.v2(
                .with {
                    $0.memory = .with {
                        $0.limit = -1
                        $0.swap = -1
                    }
                }
            ).writes.map(\.description)
                == ["memory.max=max", "memory.swap.max=max"])
        #expect(CgroupResources.v2(.with { $0.cpu = .with { $0.quota = -1 } }).writes.map(\.description) == ["cpu.max=max 100000"])
        #expect(CgroupResources.weight(shares: 2) == 1 && CgroupResources.weight(shares: 262_144) == 10000)
    }

    @Test func capabilityNamesAndMasks() throws {
        #expect(try Capabilities.mask(["CAP_CHOWN", "net_bind_service", "CAP_CHECKPOINT_RESTORE"], field: "f") == 1 | 1 << 10 | 1 << 40)
        #expect(throws: SpecError.self) { try Capabilities.mask(["CAP_NOPE"], field: "f") }
    }

    @Test func sysctlNeedsTheMatchingNamespace() throws {
        try Sysctl.validate(["kernel.shmmax": "1", "fs.mqueue.msg_max": "10"], namespaces: [.ipc])
        try Sysctl.validate(["net.ipv4.ip_forward": "1"], namespaces: [.network])
        #expect(throws: SpecError.self) { try Sysctl.validate(["net.ipv4.ip_forward": "1"], namespaces: [.ipc]) }
        #expect(throws: SpecError.self) { try Sysctl.validate(["vm.swappiness": "1"], namespaces: Set(Namespace.allCases)) }
        #expect(throws: SpecError.self) { try Sysctl.validate(["net/../../x": "1"], namespaces: Set(Namespace.allCases)) }
    }

    @Test func hookStateIsJSON() {
        let state = OCIState.object(ociVersion: "1.0.2", id: "a\"b", status: "created", pid: 7, bundle: "/b", annotations: ["k": "v\n"])
        #expect(
            state.encoded() == #"{"annotations":{"k":"v\n"},"bundle":"/b","id":"a\"b","ociVersion":"1.0.2","pid":7,"status":"created"}"#)
        let list: JSON = [state, ["empty": [:], "none": []]]
        #expect(list.encoded(pretty: true).hasPrefix("[\n  {\n    \"annotations\": {\n      \"k\": \"v\\n\"\n    },\n"))
        #expect(JSON.object(["empty": [:], "none": []]).encoded(pretty: true) == "{\n  \"empty\": {},\n  \"none\": []\n}")
        #expect(JSON.quote("\u{1}é") == "\"\\u0001é\"")
    }

    @Test func serverAddresses() throws {
        #expect(try AgentOptions.parseServerAddress("unix:///run/a.sock") == .unix("/run/a.sock"))
        #expect(try AgentOptions.parseServerAddress("vsock://-1:1024") == .vsock(port: 1024))
        #expect(throws: AgentError.self) { try AgentOptions.parseServerAddress("tcp://1.2.3.4:5") }
    }

    @Test func agentOptionsForNoPivotAndTheLogPort() throws {
        let host = try AgentOptions.parse(["--server-addr", "unix:///tmp/a.sock", "--no-pivot", "--log-level", "debug"])
        #expect(host.noPivot && host.logLevel == "debug" && host.serverAddress == .unix("/tmp/a.sock"))
        #expect(try AgentOptions.parse([]).noPivot == false)
        let (guest, unknown) = GuestInit.options(cmdline: "console=ttyS0 agent.log_vport=1025 agent.no_pivot agent.bogus=1\n")
        #expect(guest.logPort == 1025 && guest.noPivot && !guest.hostMode)
        #expect(unknown == ["agent.bogus=1"])
    }

    @Test func mountinfoLinesAndTheInitramfsRoot() {
        // A guest booted from an initramfs: "/" is its own parent; escapes are undone.
        let guest = MountInfo.parse(
            """
            1 1 0:2 / / rw - rootfs rootfs rw
            17 1 0:16 / /proc rw,nosuid,nodev,noexec - proc proc rw
            23 1 0:21 / /run rw,nosuid,nodev shared:5 master:1 - tmpfs tmpfs rw,mode=755
            30 23 0:27 / /run/vessel/my\\040share rw,relatime - 9p vessel rw,trans=virtio
            garbage line
            """)
        #expect(guest.map(\.mountPoint) == ["/", "/proc", "/run", "/run/vessel/my share"])
        #expect(guest[2].fsType == "tmpfs" && guest[3].fsType == "9p" && guest[3].source == "vessel")
        #expect(MountInfo.rootIsNamespaceRoot(guest))
        // An ordinary root was mounted over the (hidden) rootfs: its parent is not listed.
        let host = MountInfo.parse("25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n26 25 0:5 / /dev rw - devtmpfs udev rw")
        #expect(!MountInfo.rootIsNamespaceRoot(host))
        #expect(!GuestInit.rootIsInitramfs(), "the test host's / is not an initramfs")
    }

    @Test func logForwarderKeepsTheNewestLinesAndCountsTheRest() {
        let forwarder = LogForwarder()
        for index in 0..<(LogForwarder.capacity + 6) { forwarder.append("line \(index)") }
        let (lines, dropped) = forwarder.backlog
        #expect(lines.count == LogForwarder.capacity && dropped == 6)
        #expect(lines.first == "line 6" && lines.last == "line \(LogForwarder.capacity + 5)")
        forwarder.disable()
        forwarder.append("after")
        #expect(forwarder.backlog.lines.isEmpty)
    }
}
