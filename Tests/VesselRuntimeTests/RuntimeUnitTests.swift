import Foundation
import Testing
import VesselDevSupport
@testable import VesselRuntime

func temporaryDirectory(_ name: String = "vessel-rt") throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(UUID().uuidString.prefix(8))").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

func expectError(_ fragment: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected an error containing \"\(fragment)\"", sourceLocation: sourceLocation)
    } catch {
        #expect("\(error)".contains(fragment), "\(error)", sourceLocation: sourceLocation)
    }
}

struct ConfigTests {
    @Test func defaultsAndOverrides() throws {
        let config = try RuntimeConfig.parse("""
            [hypervisor]
            memory_mib = 512
            accelerator = "tcg"
            kernel_params = ["agent.log=debug"]
            [agent]
            debug_console = true
            """)
        #expect(config.hypervisor.memoryMiB == 512)
        #expect(config.hypervisor.accelerator == "tcg")
        #expect(config.hypervisor.vcpus == 1)
        #expect(config.hypervisor.kernelParams == ["agent.log=debug"])
        #expect(config.agent.debugConsole)
        #expect(try RuntimeConfig.parse("") == RuntimeConfig())
        // What `vessel env` prints reads back as the same configuration.
        #expect(try RuntimeConfig.parse(config.toml()) == config)
    }

    @Test func badConfigurationsNameTheKey() {
        expectError("unknown key") { _ = try RuntimeConfig.parse("[hypervisor]\nmemory = 5\n") }
        expectError("hypervisor.accelerator \"hvf\"") { _ = try RuntimeConfig.parse("[hypervisor]\naccelerator = \"hvf\"\n") }
        expectError("hypervisor.machine_type") { _ = try RuntimeConfig.parse("[hypervisor]\nmachine_type = \"pc\"\n") }
        expectError("memory_mib") { _ = try RuntimeConfig.parse("[hypervisor]\nmemory_mib = \"lots\"\n") }
        expectError("configuration") { _ = try RuntimeConfig.parse("[hypervisor\n") }
        expectError("/nonexistent/vessel.toml: cannot read") { _ = try RuntimeConfig.load(explicit: "/nonexistent/vessel.toml") }
    }

    @Test func missingGuestFilesNameTheMakeTarget() {
        var config = RuntimeConfig()
        config.hypervisor.kernel = "/nonexistent/bzImage"
        expectError("hypervisor.kernel /nonexistent/bzImage does not exist (make kernel") { try config.checkGuestFiles() }
    }
}

struct BundleTests {
    func bundle(_ extra: [String: Any] = [:], args: [String] = ["true"]) throws -> String {
        let dir = try temporaryDirectory("vessel-bundle")
        try OCIBundle.make(at: dir, args: args, extra: extra)
        return dir
    }

    @Test func guestSpecPointsIntoTheShare() throws {
        let dir = try bundle()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let volume = dir + "/volume"
        try FileManager.default.createDirectory(atPath: volume, withIntermediateDirectories: true)
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/config.json"))) as! [String: Any]
        var mounts = config["mounts"] as! [[String: Any]]
        mounts.append(["destination": "/data", "type": "bind", "source": volume, "options": ["rbind", "ro"]])
        mounts.append(["destination": "/dev/shm", "type": "bind", "source": volume, "options": ["rbind"]])
        config["mounts"] = mounts
        config["linux"] = ["namespaces": [["type": "network", "path": "/var/run/netns/x"], ["type": "pid"]]]
        config["hooks"] = ["prestart": [["path": "/usr/bin/true"]]]
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: dir + "/config.json"))

        let guest = try GuestBundle(bundle: dir)
        #expect(guest.guestSpec.root.path == "/run/vessel/shared/rootfs")
        #expect(guest.rootfs == dir + "/rootfs")
        let data = guest.guestSpec.mounts.first { $0.destination == "/data" }
        #expect(data?.source.hasPrefix("/run/vessel/shared/m") == true)
        #expect(guest.hostMounts.contains { $0.source == volume && $0.readOnly })
        #expect(guest.guestSpec.mounts.first { $0.destination == "/dev/shm" }?.type == "tmpfs")
        #expect(guest.guestSpec.linux.namespaces.allSatisfy { $0.path.isEmpty })
        #expect(guest.guestSpec.hooks.prestart.isEmpty, "OCI hooks run on the host, not in the guest")
    }

    @Test func badBundlesGetOneLineErrors() throws {
        let dir = try bundle()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/config.json"
        expectError("no such directory") { _ = try GuestBundle(bundle: dir + "/missing") }
        try Data("{\"ociVersion\": \"1.0\",\n  \"process\": nope}".utf8).write(to: URL(fileURLWithPath: file))
        expectError("invalid JSON at line 2, column 1") { _ = try GuestBundle(bundle: dir) }
        try Data(#"{"ociVersion":"1","process":{"user":{"uid":0,"gid":0},"cwd":"/","args":["a"],"rlimits":[{"type":"RLIMIT_NOFILE","hard":-1,"soft":1}]},"root":{"path":"rootfs"}}"#.utf8)
            .write(to: URL(fileURLWithPath: file))
        expectError("process.rlimits[0].hard: -1 is out of range") { _ = try GuestBundle(bundle: dir) }
        try Data(#"{"ociVersion":"1","process":{"user":{"uid":0,"gid":0},"cwd":"/","args":[]},"root":{"path":"rootfs"}}"#.utf8)
            .write(to: URL(fileURLWithPath: file))
        expectError("process.args must not be empty") { _ = try GuestBundle(bundle: dir) }
        try Data(#"{"ociVersion":"1","process":{"user":{"uid":0,"gid":"x"},"cwd":"/","args":["a"]},"root":{"path":"rootfs"}}"#.utf8)
            .write(to: URL(fileURLWithPath: file))
        expectError("process.user.gid: expected UInt32") { _ = try GuestBundle(bundle: dir) }
        try Data(#"{"ociVersion":"1","process":{"user":{"uid":0,"gid":0},"cwd":"/","args":["a"]},"root":{"path":"nope"}}"#.utf8)
            .write(to: URL(fileURLWithPath: file))
        expectError("root.path \(dir)/nope: no such directory") { _ = try GuestBundle(bundle: dir) }
        try FileManager.default.removeItem(atPath: file)
        expectError("config.json: cannot read") { _ = try GuestBundle(bundle: dir) }
    }

    @Test func missingBindSourceIsNamed() throws {
        let dir = try bundle(["mounts": [["destination": "/x", "type": "bind", "source": "/nonexistent/src", "options": ["bind"]]]])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        expectError("mounts[0].source /nonexistent/src: no such file or directory") { _ = try GuestBundle(bundle: dir) }
    }
}

struct StateTests {
    @Test func idsAreValidated() {
        for bad in ["", ".", "..", "a/b", "a b", "x\n"] {
            expectError("invalid container id") { try StateStore.validate(id: bad) }
        }
        #expect((try? StateStore.validate(id: "abc_1.2+3-4")) != nil)
    }

    @Test func duplicateIdsAndStaleShims() throws {
        let root = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = StateStore(root: root)
        var state = ContainerState(id: "c1", bundle: "/b", rootfs: "/b/rootfs", status: .created, created: rfc3339Now(), owner: "root")
        // A pid that is certainly not alive: the container counts as stopped.
        state.pid = Int32.max - 1
        _ = try store.create(state)
        expectError("container with id exists: c1") { _ = try store.create(state) }
        #expect(try store.load("c1").status == .stopped)
        // Our own process with its real start time counts as a live shim.
        try store.update("c1") { (s: inout ContainerState) throws(RuntimeError) in
            s.status = .created; s.pid = getpid(); s.pidStartTime = ProcessIdentity.startTime(of: getpid()) ?? 0
        }
        #expect(try store.load("c1").status == .created)
        // The same pid with another start time is a recycled pid, not our shim.
        try store.update("c1") { (s: inout ContainerState) throws(RuntimeError) in s.status = .created; s.pidStartTime += 1 }
        #expect(try store.load("c1").status == .stopped)
        #expect(store.list().map(\.id) == ["c1"])
        expectError("container \"nope\" does not exist") { _ = try store.load("nope") }
        store.remove("c1")
        #expect(!FileManager.default.fileExists(atPath: root + "/c1"))
    }

    @Test func socketPathsFitSunPathForDockerSizedIds() {
        let paths = ContainerPaths(root: "/var/run/docker/runtime-vessel/moby", id: String(repeating: "a", count: 64))
        #expect(paths.hybridSocket.utf8.count + "_65535".count < 108)
        #expect(ContainerPaths(root: "/r", id: "a").socketDirectory != ContainerPaths(root: "/r", id: "b").socketDirectory)
    }
}

struct SharedMountTests {
    @Test func bindMountsAreMadeReadOnlyWhereAskedAndReleased() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/src", withIntermediateDirectories: true)
        try "x".write(toFile: dir + "/src/file", atomically: true, encoding: .utf8)
        try "f".write(toFile: dir + "/single", atomically: true, encoding: .utf8)
        let made = try SharedMounts.make([.init(source: dir + "/src", name: "rootfs", readOnly: false),
                                          .init(source: dir + "/single", name: "m1", readOnly: true)], in: dir + "/shared")
        #expect(made.count == 2)
        #expect(try String(contentsOfFile: dir + "/shared/rootfs/file", encoding: .utf8) == "x")
        #expect(FileManager.default.createFile(atPath: dir + "/shared/rootfs/new", contents: Data()))
        #expect(open(dir + "/shared/m1", O_WRONLY) < 0 && errno == EROFS)
        SharedMounts.release(made)
        let mountinfo = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        #expect(!mountinfo.contains(dir + "/shared"))
        expectError("No such file or directory") {
            _ = try SharedMounts.make([.init(source: dir + "/missing", name: "m0", readOnly: false)], in: dir + "/shared2")
        }
        #expect(!(try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)).contains(dir + "/shared2"))
    }
}

struct SignalTests {
    @Test func signalNamesAndNumbers() throws {
        #expect(try Signals.parse("9") == 9)
        #expect(try Signals.parse("KILL") == 9)
        #expect(try Signals.parse("sigterm") == 15)
        #expect(try Signals.parse("SIGRTMIN+2") == 36)
        expectError("unknown signal \"SIGNOPE\"") { _ = try Signals.parse("SIGNOPE") }
        expectError("unknown signal \"0\"") { _ = try Signals.parse("0") }
        #expect(try Stats.bytes("512m", flag: "memory") == 512 << 20)
        expectError("--memory \"lots\"") { _ = try Stats.bytes("lots", flag: "memory") }
    }
}
