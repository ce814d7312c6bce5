import Foundation
import NIOPosix
import Testing
import VesselAgentClient
import VesselDevSupport
import VesselProtocol
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
        let share = FileManager.default.temporaryDirectory.appendingPathComponent("vessel-share-\(UUID().uuidString.prefix(8))").path
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
            let points = Set(mountinfo.split(separator: "\n").compactMap { $0.split(separator: " ").dropFirst(4).first.map(String.init) })
            #expect(
                points == ["/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/tmp", "/proc/cmdline", "/proc/sys"],
                "\(mountinfo)")
            #expect(
                mountinfo.split(separator: "\n").first { $0.split(separator: " ").dropFirst(4).first == "/" }?.contains(" - 9p vessel ")
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
            let early = try first.read(until: "vessel-agent ready in", timeout: 60)
            #expect(early.contains("vessel-agent ready in"), "\(early)\nconsole:\n\(vm.consoleTail())")
            first.close()

            let second = try listener.accept(timeout: 60)
            defer { second.close() }
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let fd = try HybridDialer.connect(socketPath: backend.hybridSocketPath, port: 1024)
            let client = AgentClient(try await TTRPCClient.connect(connectedSocket: fd, group: group), timeout: .seconds(60))
            try await client.call(AgentAPI.destroySandbox, Grpc_DestroySandboxRequest())
            await client.close()
            try? await group.shutdownGracefully()
            let late = try second.read(until: "vessel-agent stopping", timeout: 60)
            #expect(late.contains("vessel-agent stopping"), "\(late)")
            #expect(try vm.waitForExit(timeout: 60) == 0, "\(vm.consoleTail())")
            #expect(vm.output.contains("vessel-agent ready in"), "the console keeps its lines")
        }
    }
}

/// A Unix stream listener for the guest's connections to host ports (the hybrid backend connects to it).
struct UnixListener {
    let fd: Int32

    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (index, byte) in path.utf8.prefix(buffer.count - 1).enumerated() { buffer[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard fd >= 0, bound == 0, listen(fd, 4) == 0 else { throw VMError("listen on \(path): errno \(errno)") }
    }

    func accept(timeout: TimeInterval) throws -> Connection {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, Int32(timeout * 1000)) == 1 else { throw VMError("nobody connected within \(Int(timeout)) s") }
        let connection = Glibc.accept(fd, nil, nil)
        guard connection >= 0 else { throw VMError("accept: errno \(errno)") }
        return Connection(fd: connection)
    }

    func close() { _ = Glibc.close(fd) }

    struct Connection {
        let fd: Int32

        /// What arrived until `needle` showed up, the peer closed, or the time ran out.
        func read(until needle: String, timeout: TimeInterval) throws -> String {
            var text = ""
            let deadline = Date().addingTimeInterval(timeout)
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !text.contains(needle) && Date() < deadline {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 200) >= 0 else { break }
                guard p.revents != 0 else { continue }
                let n = Glibc.read(fd, &buffer, buffer.count)
                if n <= 0 { break }
                text += String(decoding: buffer[0..<n], as: UTF8.self)
            }
            return text
        }

        func close() { _ = Glibc.close(fd) }
    }
}
