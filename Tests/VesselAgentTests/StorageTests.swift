import Foundation
import Testing
import VesselDevSupport
import VesselProtocol
import VesselTestSupport

/// Kata `Storage`s in host mode: mount points live below the agent's run directory (in the guest,
/// below /run). 9p needs a VM (GuestContainerTests); here the bind, local and ephemeral drivers.
@Suite(.timeLimit(.minutes(3)), .serialized)
struct StorageTests {
    static func storage(_ driver: String, _ source: String, _ mountPoint: String, _ options: [String] = []) -> Grpc_Storage {
        .with {
            $0.driver = driver
            $0.source = source
            $0.mountPoint = mountPoint
            $0.options = options
        }
    }

    static func mountPoints() -> [String] { MountTable.lines().compactMap { MountTable.mountPoint($0) } }

    @Test func badStoragesNameTheFieldAndMountNothing() async throws {
        try await withAgent { agent in
            func sandbox(_ storage: Grpc_Storage) async throws {
                try await agent.client.call(
                    AgentAPI.createSandbox,
                    Grpc_CreateSandboxRequest.with {
                        $0.sandboxID = "s"
                        $0.storages = [storage]
                    })
            }
            let run = agent.runDir
            await expectError(.invalidArgument, containing: "storages[0].driver \"x\" is not supported") {
                try await sandbox(Self.storage("x", "tag", run + "/m"))
            }
            await expectError(.invalidArgument, containing: "storages[0].mount_point \"relative/m\" must be an absolute path") {
                try await sandbox(Self.storage("9p", "tag", "relative/m"))
            }
            await expectError(.invalidArgument, containing: "must not contain '.' or '..'") {
                try await sandbox(Self.storage("9p", "tag", run + "/a/../../etc"))
            }
            await expectError(.invalidArgument, containing: "storages[0].mount_point \"/etc/m\" must be below \(run)") {
                try await sandbox(Self.storage("9p", "tag", "/etc/m"))
            }
            await expectError(.invalidArgument, containing: "must be below") {
                try await sandbox(Self.storage("local", "", run))
            }
            await expectError(.invalidArgument, containing: "storages[0].source (the 9p mount tag) is empty") {
                try await sandbox(Self.storage("9p", "", run + "/m"))
            }
            await expectError(.invalidArgument, containing: "storages[0].fstype \"ext4\" does not match driver 9p") {
                var storage = Self.storage("9p", "tag", run + "/m")
                storage.fstype = "ext4"
                try await sandbox(storage)
            }
            await expectError(.invalidArgument, containing: "storages[0].source \"rootfs\" must be an absolute path") {
                try await sandbox(Self.storage("bind", "rootfs", run + "/m"))
            }
            await expectError(.notFound, containing: "storages[0].source /no/such/dir") {
                try await sandbox(Self.storage("bind", "/no/such/dir", run + "/m"))
            }
            await expectError(.invalidArgument, containing: "storages[0].options \"mode=rwx\" is not an octal mode") {
                try await sandbox(Self.storage("local", "", run + "/m", ["mode=rwx"]))
            }
            // CreateContainer checks its storages in the same place, before anything starts.
            await expectError(.invalidArgument, containing: "storages[1].driver \"blk\" is not supported") {
                try await agent.client.call(
                    AgentAPI.createContainer,
                    Grpc_CreateContainerRequest.with {
                        $0.containerID = "c"
                        $0.oci = agent.spec(["true"])
                        $0.storages = [Self.storage("local", "", run + "/ok"), Self.storage("blk", "/dev/vda", run + "/m")]
                    })
            }
            #expect(!FileManager.default.fileExists(atPath: run + "/m"))
            #expect(!FileManager.default.fileExists(atPath: run + "/ok"))
            // None of that created the sandbox.
            try await sandbox(Self.storage("local", "", run + "/m"))
        }
    }

    @Test func sandboxAndContainerStoragesAreCountedAndUnmounted() async throws {
        try await withAgent { agent in
            let shared = agent.runDir + "/shared"
            let volume = agent.directory.appendingPathComponent("volume").path
            try FileManager.default.createDirectory(atPath: volume, withIntermediateDirectories: true)
            try "from the host\n".write(toFile: volume + "/file", atomically: true, encoding: .utf8)
            try await agent.client.call(
                AgentAPI.createSandbox,
                Grpc_CreateSandboxRequest.with {
                    $0.sandboxID = "s"
                    $0.storages = [Self.storage("bind", agent.rootfs, shared + "/rootfs", ["rbind"])]
                })
            #expect(Self.mountPoints().contains(shared + "/rootfs"))

            // Two containers share a read-only volume; one has a tmpfs and an emptyDir of its own.
            let volumeStorage = Self.storage("bind", volume, agent.runDir + "/volumes/v", ["ro", "nosuid"])
            func create(_ id: String, _ script: String, _ extra: [Grpc_Storage]) async throws {
                var spec = agent.spec(["sh", "-c", script])
                spec.root.path = shared + "/rootfs"
                spec.mounts.append(SpecTemplate.mount("/data", "bind", agent.runDir + "/volumes/v", ["rbind"]))
                try await agent.client.call(
                    AgentAPI.createContainer,
                    Grpc_CreateContainerRequest.with {
                        $0.containerID = id
                        $0.oci = spec
                        $0.storages = [volumeStorage] + extra
                    })
                try await agent.client.startContainer(id)
            }
            try await create(
                "a", "cat /data/file; touch /data/x 2>&1; sleep 1000",
                [
                    Self.storage("ephemeral", "", agent.runDir + "/tmp-a", ["size=1m"]),
                    Self.storage("local", "", agent.runDir + "/empty-a", ["mode=0750"]),
                ])
            try await create("b", "cat /data/file", [])
            #expect(try await agent.client.wait("b") == 0)
            #expect(try await agent.output("b") == "from the host\n")
            let outputA = try await agent.read("a", until: "file system")
            #expect(outputA.contains("from the host\n") && outputA.contains("Read-only file system"), "\(outputA)")
            let emptyMode = try FileManager.default.attributesOfItem(atPath: agent.runDir + "/empty-a")[.posixPermissions] as? Int
            #expect(emptyMode == 0o750)
            #expect(Self.mountPoints().contains(agent.runDir + "/tmp-a"))

            // A different storage on a mount point in use is refused.
            await expectError(
                .invalidArgument, containing: "storages[0].mount_point \(agent.runDir)/volumes/v is already mounted from another source"
            ) {
                try await agent.client.call(
                    AgentAPI.createContainer,
                    Grpc_CreateContainerRequest.with {
                        $0.containerID = "c"
                        $0.oci = agent.spec(["true"])
                        $0.storages = [Self.storage("bind", agent.rootfs, agent.runDir + "/volumes/v")]
                    })
            }

            try await agent.client.removeContainer("b")
            #expect(Self.mountPoints().contains(agent.runDir + "/volumes/v"), "a still uses it")
            try await agent.client.removeContainer("a")
            let mounts = Self.mountPoints()
            #expect(!mounts.contains(agent.runDir + "/volumes/v"))
            #expect(!mounts.contains(agent.runDir + "/tmp-a"))
            #expect(!FileManager.default.fileExists(atPath: agent.runDir + "/volumes/v"))
            #expect(FileManager.default.fileExists(atPath: volume + "/file"), "unmounting leaves the source alone")

            try await agent.client.call(AgentAPI.destroySandbox, Grpc_DestroySandboxRequest())
            #expect(!Self.mountPoints().contains(shared + "/rootfs"))
            #expect(agent.leftoverMounts().isEmpty, "\(agent.leftoverMounts())")
        }
    }
}
