import Foundation
import Testing
import VesselDevSupport
import VesselProtocol

/// What the OCI spec asks for shows up inside the container.
@Suite(.timeLimit(.minutes(3)), .serialized)
struct ContainerSpecTests {
    @Test func userCwdEnvAndGroups() async throws {
        try await withAgent { agent in
            var spec = agent.spec(["sh", "-c", "id -u; id -g; id -G; pwd; echo $GREETING"])
            spec.process.user = .with {
                $0.uid = 65534
                $0.gid = 65534
                $0.additionalGids = [10, 20]
            }
            spec.process.cwd = "/tmp"
            spec.process.env.append("GREETING=hello there")
            try await agent.client.createContainer("user", spec: spec)
            try await agent.client.startContainer("user")
            #expect(try await agent.output("user") == "65534\n65534\n65534 10 20\n/tmp\nhello there\n")
            #expect(try await agent.client.wait("user") == 0)
        }
    }

    /// CVE-2025-31133's shape: the image's /dev/null is a symlink to a file the container must not
    /// write; masking a path must not bind that file over it.
    @Test func masksUseOnlyTheRealNullDevice() async throws {
        try await withAgent { agent in
            var spec = agent.spec(["true"])
            spec.mounts.removeAll { $0.destination == "/dev" || $0.destination.hasPrefix("/dev/") }
            let dev = agent.rootfs + "/dev"
            try? FileManager.default.removeItem(atPath: dev)
            try FileManager.default.createDirectory(atPath: dev, withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: dev + "/null", withDestinationPath: "/etc/masked-target")
            try "keep\n".write(toFile: agent.rootfs + "/etc/masked-target", atomically: true, encoding: .utf8)
            try "secret\n".write(toFile: agent.rootfs + "/etc/secret", atomically: true, encoding: .utf8)
            spec.linux.maskedPaths = ["/etc/secret"]
            await expectError(.invalidArgument, containing: "not the null device") {
                try await agent.client.createContainer("mask", spec: spec)
            }
            #expect(try String(contentsOfFile: agent.rootfs + "/etc/masked-target", encoding: .utf8) == "keep\n")
        }
    }

    /// A user namespace: the container's root is uid 100000 (gid 200000) outside, so the files of
    /// the real root are not its own (it can read the image, not write it), it keeps only its
    /// spec's capabilities, and an exec enters the same namespace.
    @Test func aUserNamespaceMapsTheContainersRoot() async throws {
        try await withAgent { agent in
            let script =
                "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; cat /etc/hostname >/dev/null && echo reads; "
                + "touch /etc/new 2>/dev/null || echo denied; mkdir -p /tmp/own && echo tmpfs; cat /proc/sys/net/ipv4/ip_unprivileged_port_start; "
                + "exec sleep 100"
            var spec = agent.spec(["sh", "-c", script])
            spec.linux.namespaces.append(.with { $0.type = "user" })
            spec.linux.uidmappings = idMapping(host: 100_000, size: 65536)
            spec.linux.gidmappings = idMapping(host: 200_000, size: 65536)
            try "vessel\n".write(toFile: agent.rootfs + "/etc/hostname", atomically: true, encoding: .utf8)
            try await agent.client.createContainer("userns", spec: spec)
            try await agent.client.startContainer("userns")
            let out = try await agent.read("userns", until: "tmpfs\n0\n")
            let lines = out.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ") }
            // Low ports are open to the namespace's root, which has no CAP_NET_BIND_SERVICE there.
            #expect(lines == ["0 100000 65536", "0 200000 65536", "0", "0", "reads", "denied", "tmpfs", "0"], "\(out)")
            #expect(!FileManager.default.fileExists(atPath: agent.rootfs + "/etc/new"))
            try await agent.exec("userns", "e1", ["sh", "-c", "cat /proc/self/uid_map; id -u"])
            let exec = try await agent.output("userns", "e1")
            #expect(
                exec.split(separator: "\n").map { $0.split(separator: " ").joined(separator: " ") } == ["0 100000 65536", "0"], "\(exec)")
            #expect(try await agent.client.wait("userns", "e1") == 0)
            try await agent.client.signal("userns", "", signal: SIGKILL)
            _ = try await agent.client.wait("userns")
        }
    }

    /// What kubelet and docker always set still works inside a user namespace: a terminal (its
    /// master comes before the namespace), an OOM score and a raised rlimit (set while still the
    /// guest's root), and an exec with the same process settings.
    @Test func aUserNamespaceKeepsTerminalOOMScoreAndRlimits() async throws {
        try await withAgent { agent in
            var spec = agent.spec(
                ["sh", "-c", "echo tty=$(tty) oom=$(cat /proc/self/oom_score_adj) nofile=$(ulimit -Hn); exec sleep 100"],
                terminal: true)
            spec.linux.namespaces.append(.with { $0.type = "user" })
            spec.linux.uidmappings = idMapping(host: 100_000, size: 65536)
            spec.linux.gidmappings = idMapping(host: 100_000, size: 65536)
            spec.process.oomscoreAdj = 500  // raising needs no CAP_SYS_RESOURCE, which host-mode tests may lack
            spec.process.rlimits = [
                .with {
                    $0.type = "RLIMIT_NOFILE"
                    $0.hard = 8192
                    $0.soft = 4096
                }
            ]
            try await agent.client.createContainer("usertty", spec: spec)
            try await agent.client.startContainer("usertty")
            let out = try await agent.read("usertty", until: "nofile=")
            #expect(out.contains("tty=/dev/pts/") && out.contains("oom=500"), "\(out)")
            var process = spec.process
            process.args = ["sh", "-c", "echo oom=$(cat /proc/self/oom_score_adj) nofile=$(ulimit -Hn)"]
            process.terminal = false
            try await agent.client.exec("usertty", "e1", process: process)
            let exec = try await agent.output("usertty", "e1")
            #expect(exec == "oom=500 nofile=8192\n", "\(exec)")
            try await agent.client.signal("usertty", "", signal: SIGKILL)
            _ = try await agent.client.wait("usertty")
        }
    }

    /// Maps without a user namespace, or one without maps, are refused before anything runs.
    @Test func userNamespacesNeedBothMaps() async throws {
        try await withAgent { agent in
            var spec = agent.spec(["true"])
            spec.linux.uidmappings = idMapping(host: 100_000, size: 1)
            await expectError(.invalidArgument, containing: "uidMappings need a user namespace") {
                try await agent.client.createContainer("maps", spec: spec)
            }
            spec.linux.namespaces.append(.with { $0.type = "user" })
            await expectError(.invalidArgument, containing: "gidMappings: a user namespace needs them") {
                try await agent.client.createContainer("maps", spec: spec)
            }
            spec.linux.gidmappings = [
                .with {
                    $0.containerID = 0
                    $0.hostID = 100_000
                    $0.size = 10
                },
                .with {
                    $0.containerID = 5
                    $0.hostID = 300_000
                    $0.size = 10
                },
            ]
            await expectError(.invalidArgument, containing: "gidMappings[1] overlaps OCI.linux.gidMappings[0]") {
                try await agent.client.createContainer("maps", spec: spec)
            }
            spec.linux.gidmappings.removeLast()
            spec.process.user.additionalGids = [20]
            await expectError(.invalidArgument, containing: "gid 20 is not in OCI.linux.gidMappings") {
                try await agent.client.createContainer("maps", spec: spec)
            }
        }
    }

    @Test func readonlyRootAndBindMounts() async throws {
        try await withAgent { agent in
            let data = agent.directory.appendingPathComponent("data").path
            try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
            try "from the host\n".write(toFile: data + "/file", atomically: true, encoding: .utf8)
            var spec = agent.spec([
                "sh", "-c",
                "cat /data/file; touch /rootfile 2>/dev/null || echo root ro; touch /data/new 2>/dev/null || echo data ro; touch /tmp/ok && echo tmp rw",
            ])
            spec.root.readonly = true
            spec.mounts.append(SpecTemplate.mount("/data", "bind", data, ["rbind", "ro"]))
            try await agent.client.createContainer("ro", spec: spec)
            try await agent.client.startContainer("ro")
            #expect(try await agent.output("ro") == "from the host\nroot ro\ndata ro\ntmp rw\n")
            #expect(try await agent.client.wait("ro") == 0)
            #expect(!FileManager.default.fileExists(atPath: data + "/new"))
            #expect(!FileManager.default.fileExists(atPath: agent.rootfs + "/rootfile"))
        }
    }

    @Test func bindMountThroughASymlinkStaysInsideTheRootfs() async throws {
        try await withAgent { agent in
            // /escape -> /../../.. would point outside if followed on the host; in-root it is "/".
            try FileManager.default.createSymbolicLink(atPath: agent.rootfs + "/escape", withDestinationPath: "../../../../..")
            let data = agent.directory.appendingPathComponent("payload").path
            try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
            var spec = agent.spec(["sh", "-c", "ls /x/target-marker >/dev/null 2>&1 && echo inside"])
            try FileManager.default.createDirectory(atPath: data + "/target-marker", withIntermediateDirectories: true)
            spec.mounts.append(SpecTemplate.mount("/escape/x", "bind", data, ["rbind"]))
            try await agent.client.createContainer("sym", spec: spec)
            // The mount landed at <rootfs>/x, never at a host path above the rootfs.
            #expect(FileManager.default.fileExists(atPath: agent.rootfs + "/x"))
            #expect(!FileManager.default.fileExists(atPath: "/x"))
            // And the container sees the payload there: the mount was made, not just its mount point.
            try await agent.client.startContainer("sym")
            #expect(try await agent.output("sym") == "inside\n")
            #expect(try await agent.client.wait("sym") == 0)
            try await agent.client.removeContainer("sym")
            #expect(agent.leftoverMounts().isEmpty)
        }
    }

    @Test func networkNamespaceWhenAsked() async throws {
        try await withAgent { agent in
            var spec = agent.spec(["sh", "-c", "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '"])
            spec.linux.namespaces.append(.with { $0.type = "network" })
            try await agent.client.createContainer("net", spec: spec)
            try await agent.client.startContainer("net")
            #expect(try await agent.output("net") == "lo\n")
        }
    }

    @Test func largeOutputIsNotLostOrReordered() async throws {
        try await withAgent { agent in
            // 4 MiB through a 64 KiB pipe: the reader must keep pulling while the writer blocks.
            try await agent.run("big", ["sh", "-c", "dd if=/dev/zero bs=65536 count=64 2>/dev/null | tr '\\0' 'x'"])
            let output = try await agent.output("big")
            #expect(output.utf8.count == 4 << 20)
            #expect(output.utf8.allSatisfy { $0 == UInt8(ascii: "x") })
            #expect(try await agent.client.wait("big") == 0)
        }
    }
}

/// One id range: the container's 0 up to `size`, onto the guest's ids from `host`.
private func idMapping(host: UInt32, size: UInt32) -> [Grpc_LinuxIDMapping] {
    [
        .with {
            $0.containerID = 0
            $0.hostID = host
            $0.size = size
        }
    ]
}
