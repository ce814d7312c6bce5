import Foundation
import Testing
import VesselDevSupport
import VesselProtocol

/// What the OCI spec asks for shows up inside the container.
@Suite(.serialized)
struct ContainerSpecTests {
    @Test func userCwdEnvAndGroups() async throws {
        try await withAgent { agent in
            var spec = agent.spec(["sh", "-c", "id -u; id -g; id -G; pwd; echo $GREETING"])
            spec.process.user = .with { $0.uid = 65534; $0.gid = 65534; $0.additionalGids = [10, 20] }
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

    @Test func readonlyRootAndBindMounts() async throws {
        try await withAgent { agent in
            let data = agent.directory.appendingPathComponent("data").path
            try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
            try "from the host\n".write(toFile: data + "/file", atomically: true, encoding: .utf8)
            var spec = agent.spec(["sh", "-c", "cat /data/file; touch /rootfile 2>/dev/null || echo root ro; touch /data/new 2>/dev/null || echo data ro; touch /tmp/ok && echo tmp rw"])
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
            var spec = agent.spec(["sh", "-c", "ls /target-marker >/dev/null 2>&1 && echo inside"])
            try FileManager.default.createDirectory(atPath: data + "/target-marker", withIntermediateDirectories: true)
            spec.mounts.append(SpecTemplate.mount("/escape/x", "bind", data, ["rbind"]))
            try await agent.client.createContainer("sym", spec: spec)
            // The mount landed at <rootfs>/x, never at a host path above the rootfs.
            #expect(FileManager.default.fileExists(atPath: agent.rootfs + "/x"))
            #expect(!FileManager.default.fileExists(atPath: "/x"))
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
