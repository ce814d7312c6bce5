import Foundation
import NIOPosix
import Testing
import VesselAgentClient
import VesselDevSupport
import VesselLinux
import VesselProtocol
import VesselTestSupport
import VesselVM
import VesselVsock

/// Containers inside the guest, the way the host runtime drives them: the bundle's rootfs comes over
/// virtio-9p as a CreateSandbox storage, everything else over hybrid vsock. One boot per test.
@Suite(
    .timeLimit(.minutes(10)), .serialized,
    .enabled(if: !kernel.isEmpty && !initrd.isEmpty, "VESSEL_KERNEL/VESSEL_INITRD not set (make test sets them)"))
struct GuestContainerTests {
    static let sharedMount = "/run/vessel/shared"

    @Test func busyboxFromA9pShareRunsExecsAndPowersOff() async throws {
        let share = try temporaryDirectory("vessel-share")
        try BusyboxRootfs.make(at: share + "/c1/rootfs")
        defer { try? FileManager.default.removeItem(atPath: share) }
        try await withVsockGuest(initrd: initrd, shares: [SharedDirectory(tag: "vessel", path: share)]) { vm, backend in
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let fd = try HybridDialer.connect(socketPath: backend.hybridSocketPath, port: 1024)
            let client = AgentClient(try await TTRPCClient.connect(connectedSocket: fd, group: group), timeout: .seconds(60))
            try await client.call(
                AgentAPI.createSandbox,
                Grpc_CreateSandboxRequest.with {
                    $0.sandboxID = "vm"
                    $0.storages = [
                        .with {
                            $0.driver = "9p"
                            $0.source = "vessel"
                            $0.fstype = "9p"
                            // As the runtime's GuestBundle.storage sends them, plus a flag word.
                            $0.options = ["trans=virtio", "version=9p2000.L", "msize=524288", "cache=mmap", "nodev"]
                            $0.mountPoint = Self.sharedMount
                        }
                    ]
                })

            var spec = SpecTemplate.busybox(
                root: Self.sharedMount + "/c1/rootfs", args: ["sh", "-c", "echo hello-from-guest; read line; exit 42"],
                hostname: "c1")
            spec.root.readonly = true
            spec.linux.maskedPaths = ["/proc/cmdline"]
            spec.linux.readonlyPaths = ["/proc/sys"]
            try await client.createContainer("c1", spec: spec)
            try await client.startContainer("c1")
            var greeting = ""
            while !greeting.contains("\n") {
                let chunk = try await client.read("c1")
                if chunk.isEmpty { break }
                greeting += String(decoding: chunk, as: UTF8.self)
            }
            #expect(greeting == "hello-from-guest\n", "console:\n\(vm.consoleTail())")

            // The container's root is the share, entered without pivot_root (the guest's / is the
            // initramfs): none of the guest's mounts and none of the agent's files may show.
            let script = """
                cat /proc/self/mountinfo; echo ---; ls /init 2>&1; touch /x 2>&1; \
                (echo 1 > /proc/sys/kernel/shmmax) 2>&1; echo cmdline=$(cat /proc/cmdline); hostname
                """
            try await client.exec("c1", "e1", process: LocalAgent.process(["sh", "-c", script]))
            let output = String(decoding: try await client.readAll("c1", "e1"), as: UTF8.self)
            #expect(try await client.wait("c1", "e1") == 0, "\(output)")
            let mountinfo = output.components(separatedBy: "---")[0]
            let points = Set(MountTable.mountPoints(mountinfo))
            #expect(
                points == ["/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/tmp", "/proc/cmdline", "/proc/sys"],
                "\(mountinfo)")
            #expect(
                mountinfo.split(separator: "\n").first { MountTable.mountPoint($0) == "/" }?.contains(" - 9p vessel ")
                    == true,
                "the root is the 9p share: \(mountinfo)")
            #expect(output.contains("ls: /init: No such file or directory"), "\(output)")
            #expect(output.contains("touch: /x: Read-only file system"), "\(output)")
            #expect(output.contains("cmdline=\n"), "masked: \(output)")
            #expect(output.hasSuffix("c1\n"), "\(output)")

            try await client.writeStdin("c1", "", Array("go\n".utf8))
            #expect(try await client.wait("c1") == 42)
            try await client.removeContainer("c1")
            try await client.call(AgentAPI.destroySandbox, Grpc_DestroySandboxRequest())
            await client.close()
            try? await group.shutdownGracefully()
            #expect(try vm.waitForExit(timeout: 60) == 0, "\(vm.consoleTail())")
            #expect(!vm.output.contains("storage "), "no unmount failure logged: \(vm.consoleTail())")
        }
    }

    /// `agent.log_vport`: the guest connects to the host's `<hybrid socket>_PORT`. Lines logged
    /// before anyone listens are buffered; when the host closes, the agent connects again.
    @Test func agentLogLinesReachTheHostLogPort() async throws {
        let port = 1025
        try await withVsockGuest(initrd: initrd, parameters: ["agent.log_vport=\(port)"]) { vm, backend in
            let listener = try UnixListener(path: "\(backend.hybridSocketPath)_\(port)")
            defer { listener.close() }
            let first = try listener.accept(timeout: 60)
            let early = readUntil(first, "vessel-agent ready in", timeout: 60)
            #expect(early.contains("vessel-agent ready in"), "\(early)\nconsole:\n\(vm.consoleTail())")
            Linux.close(first)

            let second = try listener.accept(timeout: 60)
            defer { Linux.close(second) }
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let fd = try HybridDialer.connect(socketPath: backend.hybridSocketPath, port: 1024)
            let client = AgentClient(try await TTRPCClient.connect(connectedSocket: fd, group: group), timeout: .seconds(60))
            try await client.call(AgentAPI.destroySandbox, Grpc_DestroySandboxRequest())
            await client.close()
            try? await group.shutdownGracefully()
            let late = readUntil(second, "vessel-agent stopping", timeout: 60)
            #expect(late.contains("vessel-agent stopping"), "\(late)")
            #expect(try vm.waitForExit(timeout: 60) == 0, "\(vm.consoleTail())")
            #expect(vm.output.contains("vessel-agent ready in"), "the console keeps its lines")
        }
    }
}
