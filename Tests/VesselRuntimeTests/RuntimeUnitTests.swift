import Foundation
import Testing
import VesselDevSupport
import VesselLinux
import VesselTestSupport

@testable import VesselContainerd
@testable import VesselCore
@testable import VesselOCI

func expectError(_ fragment: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected an error containing \"\(fragment)\"", sourceLocation: sourceLocation)
    } catch {
        #expect("\(error)".contains(fragment), "\(error)", sourceLocation: sourceLocation)
    }
}

@Suite(.timeLimit(.minutes(2)))
struct ConfigTests {
    @Test func defaultsAndOverrides() throws {
        let config = try RuntimeConfig.parse(
            """
            [hypervisor]
            memory_mib = 512
            accelerator = "tcg"
            kernel_params = ["agent.log=debug"]
            [agent]
            debug_console = true
            health_check_timeout = 0
            """)
        #expect(config.hypervisor.memoryMiB == 512)
        #expect(config.hypervisor.accelerator == "tcg")
        #expect(config.hypervisor.vcpus == 1)
        #expect(config.hypervisor.kernelParams == ["agent.log=debug"])
        #expect(config.agent.debugConsole)
        #expect(config.agent.healthCheckTimeout == 0 && RuntimeConfig().agent.healthCheckTimeout == 30)
        #expect(try RuntimeConfig.parse("") == RuntimeConfig())
        // What `vessel env` prints reads back as the same configuration.
        #expect(try RuntimeConfig.parse(config.toml()) == config)
    }

    @Test func badConfigurationsNameTheKey() {
        expectError("unknown key") { _ = try RuntimeConfig.parse("[hypervisor]\nmemory = 5\n") }
        expectError("hypervisor.accelerator \"hvf\"") { _ = try RuntimeConfig.parse("[hypervisor]\naccelerator = \"hvf\"\n") }
        expectError("hypervisor.machine_type") { _ = try RuntimeConfig.parse("[hypervisor]\nmachine_type = \"pc\"\n") }
        expectError("memory_mib") { _ = try RuntimeConfig.parse("[hypervisor]\nmemory_mib = \"lots\"\n") }
        expectError("agent.health_check_timeout -1 is negative") { _ = try RuntimeConfig.parse("[agent]\nhealth_check_timeout = -1\n") }
        expectError("agent.request_timeout 0 is below 1") { _ = try RuntimeConfig.parse("[agent]\nrequest_timeout = 0\n") }
        expectError("configuration") { _ = try RuntimeConfig.parse("[hypervisor\n") }
        expectError("/nonexistent/vessel.toml: cannot read") { _ = try RuntimeConfig.load(explicit: "/nonexistent/vessel.toml") }
    }

    @Test func missingGuestFilesNameTheMakeTarget() {
        var config = RuntimeConfig()
        config.hypervisor.kernel = "/nonexistent/bzImage"
        expectError("hypervisor.kernel /nonexistent/bzImage does not exist (make kernel") { try config.checkGuestFiles() }
    }
}

@Suite(.timeLimit(.minutes(2)))
struct BundleTests {
    func bundle(_ extra: [String: Any] = [:], args: [String] = ["true"]) throws -> String {
        let dir = try temporaryDirectory("vessel-bundle")
        try OCIBundle.make(at: dir, args: args, extra: extra)
        return dir
    }

    /// The runtime spec: a path of another namespace type is an error, not joined or dropped.
    @Test func namespacePathsMustBeOfTheirType() throws {
        let cases: [(type: String, path: String, error: String?)] = [
            ("cgroup", "/proc/self/ns/ipc", "linux.namespaces[0].path /proc/self/ns/ipc is a ipc namespace, not cgroup"),
            ("mount", "/proc/self/ns/net", "is a network namespace, not mount"),
            ("network", "/proc/self/ns/pid", "is a pid namespace, not network"),
            ("uts", "/etc/hostname", "linux.namespaces[0].path /etc/hostname: not a namespace file (nsfs)"),
            ("ipc", "/dev/null", "/dev/null: not a namespace file"),
            (
                "ipc", "/run/vessel-no-such-namespace",
                "linux.namespaces[0].path /run/vessel-no-such-namespace: statfs: No such file or directory"
            ),
            ("ipc", "/proc/self/ns/ipc", nil),
            ("mount", "/proc/self/ns/mnt", nil),
        ]
        for (type, path, expected) in cases {
            let dir = try bundle(["linux": ["namespaces": [["type": type, "path": path]]]])
            defer { try? FileManager.default.removeItem(atPath: dir) }
            do {
                _ = try GuestBundle(bundle: dir, container: "c1")
                #expect(expected == nil, "\(type) at \(path) was taken")
            } catch {
                #expect(expected.map { error.message.contains($0) } == true, "\(type) at \(path): \(error.message)")
                #expect(error.kind == .invalidArgument && !error.message.contains("\n"))
            }
        }
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
        config["linux"] = ["namespaces": [["type": "network", "path": "/proc/self/ns/net"], ["type": "pid"]]]
        config["hooks"] = ["prestart": [["path": "/usr/bin/true"]]]
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: dir + "/config.json"))

        let guest = try GuestBundle(bundle: dir, container: "c1")
        #expect(guest.guestSpec.root.path == "/run/vessel/shared/c1/rootfs")
        #expect(guest.rootfs == dir + "/rootfs")
        let data = guest.guestSpec.mounts.first { $0.destination == "/data" }
        #expect(data?.source.hasPrefix("/run/vessel/shared/c1/m") == true)
        // As under runc, the bind's root in the guest's mountinfo ends in the source's own name.
        #expect(data?.source.hasSuffix("/volume") == true, "\(data?.source ?? "")")
        #expect(guest.hostMounts.contains { $0.source == volume && $0.readOnly && $0.name.hasPrefix("c1/") })
        // The pod's one /dev/shm tmpfs in the guest, not a 9p file.
        let shm = guest.guestSpec.mounts.last { $0.destination == "/dev/shm" }
        #expect(shm?.type == "bind" && shm?.source == GuestBundle.sandboxShm)
        #expect(guest.guestSpec.linux.namespaces.allSatisfy { $0.path.isEmpty })
        #expect(guest.guestSpec.hooks.prestart.isEmpty, "OCI hooks run on the host, not in the guest")
    }

    @Test func badBundlesGetOneLineErrors() throws {
        let dir = try bundle()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/config.json"
        expectError("no such directory") { _ = try GuestBundle(bundle: dir + "/missing", container: "c") }
        try Data("{\"ociVersion\": \"1.0\",\n  \"process\": nope}".utf8).write(to: URL(fileURLWithPath: file))
        expectError("invalid JSON at line 2, column 1") { _ = try GuestBundle(bundle: dir, container: "c") }
        try Data(
            #"{"ociVersion":"1","process":{"user":{"uid":0,"gid":0},"cwd":"/","args":["a"],"rlimits":[{"type":"RLIMIT_NOFILE","hard":-1,"soft":1}]},"root":{"path":"rootfs"}}"#
                .utf8
        )
        .write(to: URL(fileURLWithPath: file))
        expectError("process.rlimits[0].hard: -1 is out of range") { _ = try GuestBundle(bundle: dir, container: "c") }
        try Data(#"{"ociVersion":"1","process":{"user":{"uid":0,"gid":0},"cwd":"/","args":[]},"root":{"path":"rootfs"}}"#.utf8)
            .write(to: URL(fileURLWithPath: file))
        expectError("process.args must not be empty") { _ = try GuestBundle(bundle: dir, container: "c") }
        try Data(#"{"ociVersion":"1","process":{"user":{"uid":0,"gid":"x"},"cwd":"/","args":["a"]},"root":{"path":"rootfs"}}"#.utf8)
            .write(to: URL(fileURLWithPath: file))
        expectError("process.user.gid: expected UInt32") { _ = try GuestBundle(bundle: dir, container: "c") }
        try Data(#"{"ociVersion":"1","process":{"user":{"uid":0,"gid":0},"cwd":"/","args":["a"]},"root":{"path":"nope"}}"#.utf8)
            .write(to: URL(fileURLWithPath: file))
        expectError("root.path \(dir)/nope: no such directory") { _ = try GuestBundle(bundle: dir, container: "c") }
        try FileManager.default.removeItem(atPath: file)
        expectError("config.json: cannot read") { _ = try GuestBundle(bundle: dir, container: "c") }
    }

    @Test func missingBindSourceIsNamed() throws {
        let dir = try bundle(["mounts": [["destination": "/x", "type": "bind", "source": "/nonexistent/src", "options": ["bind"]]]])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        expectError("mounts[0].source /nonexistent/src: no such file or directory") { _ = try GuestBundle(bundle: dir, container: "c") }
    }
}

@Suite(.timeLimit(.minutes(2)))
struct StateTests {
    @Test func idsAreValidated() {
        for bad in ["", ".", "..", "a/b", "a b", "x\n"] {
            expectError("invalid container id") { try StateStore.validate(id: bad) }
        }
        #expect((try? StateStore.validate(id: "abc_1.2+3-4")) != nil)
    }

    @Test func duplicateIdsAndDeadOwners() throws {
        let root = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = StateStore(root: root)
        try store.claim("c1")
        expectError("container with id exists: c1") { try store.claim("c1") }
        var record = ContainerRecord(id: "c1", sandbox: "c1", bundle: "/b", rootfs: "/b/rootfs")
        try record.lifecycle.apply(.created)
        // An owner pid that is certainly not alive: the container counts as stopped.
        record.ownerPid = Int32.max - 1
        try store.write(record)
        #expect(try store.load("c1").status == .stopped)
        // Our own process with its real start time counts as a live owner.
        record.ownerPid = getpid()
        record.ownerStartTime = ProcessIdentity.startTime(of: getpid()) ?? 0
        try store.write(record)
        #expect(try store.load("c1").status == .created)
        // The same pid with another start time is a recycled pid, not our owner.
        record.ownerStartTime += 1
        try store.write(record)
        #expect(try store.load("c1").status == .stopped)
        #expect(store.list().map(\.id) == ["c1"])
        expectError("container \"nope\" does not exist") { _ = try store.load("nope") }
        store.remove("c1")
        #expect(!FileManager.default.fileExists(atPath: root + "/c1"))
    }

    /// The only rules for status changes, with runc's wording for the ones that do not apply.
    @Test func lifecycleTransitions() throws {
        var life = Lifecycle()
        expectError("cannot start a container that is still being created") { try life.apply(.started) }
        try life.apply(.created)
        expectError("container not running") { try life.apply(.paused) }
        try life.apply(.started)
        expectError("cannot start an already running container") { try life.apply(.started) }
        try life.apply(.paused)
        expectError("container not running") { try life.apply(.paused) }
        try life.apply(.resumed)
        expectError("container not paused") { try life.apply(.resumed) }
        try life.apply(.exited(status: 3, at: Date()))
        #expect(life.status == .stopped && life.exitStatus == 3)
        // A second exit (a dying sandbox after the process) keeps the first status.
        try life.apply(.exited(status: 255, at: Date()))
        #expect(life.exitStatus == 3)
        expectError("cannot start a container that has stopped") { try life.apply(.started) }
    }

    @Test func socketPathsFitSunPathForDockerSizedIds() {
        let paths = SandboxPaths(root: "/var/run/docker/runtime-vessel/moby", id: String(repeating: "a", count: 64))
        #expect(paths.hybridSocket.utf8.count + "_65535".count < 108)
        #expect(SandboxPaths(root: "/r", id: "a").directory != SandboxPaths(root: "/r", id: "b").directory)
    }

    @Test func podRolesFromCRIAndCRIOAnnotations() {
        #expect(PodRole(annotations: [:]) == .sandbox)
        #expect(PodRole(annotations: [PodRole.criType: "sandbox", PodRole.criSandbox: "s"]) == .sandbox)
        #expect(PodRole(annotations: [PodRole.criType: "container", PodRole.criSandbox: "s"]) == .member(sandbox: "s"))
        #expect(PodRole(annotations: [PodRole.crioType: "container", PodRole.crioSandbox: "p"]) == .member(sandbox: "p"))
        #expect(PodRole(annotations: [PodRole.criType: "container"]) == .sandbox, "no sandbox id: a sandbox of its own")
        #expect(PodRole.member(sandbox: "s").sandboxID(container: "c") == "s")
    }
}

@Suite(.timeLimit(.minutes(2)))
struct ContainerdShimTests {
    @Test func sha256KnownAnswers() {
        #expect(SHA256.hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hex(String(repeating: "a", count: 1000)).hasPrefix("41edece42d63e8d9bf515a9ba6932e1c"))
    }

    /// containerd's runc and Kata shims put a group's socket at the same place: hash of address/ns/id.
    @Test func socketAddressAsContainerdComputesIt() {
        let address = ContainerdShim.socketAddress(containerdAddress: "/run/containerd/containerd.sock", namespace: "k8s.io", group: "abc")
        #expect(address == "unix:///run/containerd/s/a99a1752d3a0fadfb1f869026f16760475df03a572e20f4ccea9e6c1e5470b72")
        #expect(ContainerdShim.cleanPath("/run//x/./y/../z/") == "/run/x/z")
    }

    @Test func goStyleFlags() throws {
        let flags = try ContainerdShim.parse(["-namespace", "k8s.io", "--id=c1", "-address", "/run/c.sock", "-debug", "start"])
        #expect(flags.namespace == "k8s.io" && flags.id == "c1" && flags.address == "/run/c.sock" && flags.debug && flags.action == "start")
        expectError("flag provided but not defined: -bogus") { _ = try ContainerdShim.parse(["-bogus", "1"]) }
    }
}

@Suite(.timeLimit(.minutes(2)))
struct SharedMountTests {
    @Test func bindMountsAreMadeReadOnlyWhereAskedAndReleased() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/src", withIntermediateDirectories: true)
        try "x".write(toFile: dir + "/src/file", atomically: true, encoding: .utf8)
        try "f".write(toFile: dir + "/single", atomically: true, encoding: .utf8)
        let made = try SharedMounts.make(
            [
                .init(source: dir + "/src", name: "rootfs", readOnly: false),
                .init(source: dir + "/single", name: "m1", readOnly: true),
            ], in: dir + "/shared")
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

@Suite(.timeLimit(.minutes(2)))
struct InertShareTests {
    /// A source with a tmpfs mounted below it, as a docker volume holding another mount.
    func withSubmountedSource(_ body: (_ dir: String, _ source: String) throws -> Void) throws {
        let dir = try temporaryDirectory()
        let source = dir + "/src"
        try FileManager.default.createDirectory(atPath: source + "/sub", withIntermediateDirectories: true)
        try Linux.mount("tmpfs", source + "/sub", "tmpfs", 0, "size=1m")
        defer {
            _ = umount2(source + "/sub", Int32(MNT_DETACH))
            try? FileManager.default.removeItem(atPath: dir)
        }
        try "s".write(toFile: source + "/sub/file", atomically: false, encoding: .utf8)
        try body(dir, source)
    }

    @Test func sharesAreNosuidNodevNoexecAndReadOnlyAllTheWayDown() throws {
        try withSubmountedSource { dir, source in
            let made = try SharedMounts.make(
                [
                    .init(source: source, name: "ro", readOnly: true),
                    .init(source: source, name: "rw", readOnly: false),
                ], in: dir + "/shared")
            defer { SharedMounts.release(made) }
            for (name, readOnly) in [("ro", true), ("rw", false)] {
                for path in [dir + "/shared/" + name, dir + "/shared/" + name + "/sub"] {
                    let options = try #require(MountTable.options(at: path), "\(path) is not a mount point")
                    #expect(options.isSuperset(of: ["nosuid", "nodev", "noexec"]), "\(path): \(options)")
                    #expect(options.contains(readOnly ? "ro" : "rw"), "\(path): \(options)")
                }
            }
            #expect(open(dir + "/shared/ro/sub/file", O_WRONLY) < 0 && errno == EROFS, "the submount of a read-only share is writable")
        }
    }

    @Test func bindIsNotRecursiveButRbindIs() throws {
        try withSubmountedSource { dir, source in
            let bundle = try BundleTests().bundle([
                "mounts": [
                    ["destination": "/a", "type": "bind", "source": source, "options": ["bind"]],
                    ["destination": "/b", "type": "bind", "source": source, "options": ["rbind"]],
                ]
            ])
            defer { try? FileManager.default.removeItem(atPath: bundle) }
            let guest = try GuestBundle(bundle: bundle, container: "c")
            let made = try SharedMounts.make(guest.hostMounts, in: dir + "/shared")
            defer { SharedMounts.release(made) }
            #expect(!FileManager.default.fileExists(atPath: dir + "/shared/c/m0/src/sub/file"), "bind carried the submount along")
            #expect(FileManager.default.fileExists(atPath: dir + "/shared/c/m1/src/sub/file"), "rbind left the submount out")
        }
    }

    @Test func aReadOnlyRootGetsItsMountPointsInsideItBeforeItTurnsReadOnly() throws {
        let bundle = try BundleTests().bundle([
            "root": ["path": "rootfs", "readonly": true],
            "mounts": [
                ["destination": "/proc", "type": "proc", "source": "proc"],
                ["destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind", "ro"]],
            ],
        ])
        defer { try? FileManager.default.removeItem(atPath: bundle) }
        let rootfs = bundle + "/rootfs"
        // The image points /etc outside itself: the mount point must still land inside the rootfs.
        let outside = bundle + "/outside-" + UUID().uuidString.prefix(6)
        try? FileManager.default.removeItem(atPath: rootfs + "/etc")
        try FileManager.default.createSymbolicLink(atPath: rootfs + "/etc", withDestinationPath: outside)
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: rootfs + outside, withIntermediateDirectories: true)
        try? FileManager.default.removeItem(atPath: rootfs + "/proc")
        let guest = try GuestBundle(bundle: bundle, container: "c")
        #expect(guest.hostMounts[0].readOnly)
        let made = try SharedMounts.make(guest.hostMounts, in: bundle + "/shared")
        defer { SharedMounts.release(made) }
        #expect(Linux.isDirectory(rootfs + "/proc"))
        #expect(FileManager.default.fileExists(atPath: rootfs + outside + "/hosts"), "the mount point was not made inside the rootfs")
        #expect(!FileManager.default.fileExists(atPath: outside + "/hosts"), "a mount point was made outside the rootfs")
        #expect(MountTable.options(at: bundle + "/shared/c/rootfs")?.contains("ro") == true)
    }

    @Test func theShareRootIsASmallInertTmpfs() throws {
        let dir = try temporaryDirectory()
        defer {
            _ = umount2(dir + "/shared", Int32(MNT_DETACH))
            try? FileManager.default.removeItem(atPath: dir)
        }
        try SharedMounts.makeRoot(dir + "/shared")
        let options = try #require(MountTable.options(at: dir + "/shared"))
        #expect(options.isSuperset(of: ["nosuid", "nodev", "noexec"]), "\(options)")
    }
}

@Suite(.timeLimit(.minutes(2)))
struct HostSpecCheckTests {
    @Test func badSpecsFailOnTheHostNamingTheField() throws {
        for (extra, fragment) in [
            (
                ["process": ["user": ["uid": 0, "gid": 0], "cwd": "/", "args": ["sh"], "capabilities": ["bounding": ["CAP_NOPE"]]]],
                "unknown capability \"CAP_NOPE\""
            ),
            (["linux": ["namespaces": [["type": "user"]]]], "OCI.linux.uidMappings: a user namespace needs them"),
            (["linux": ["namespaces": [["type": "bogus"]]]], "is not a namespace type"),
            (["linux": ["seccomp": ["defaultAction": "SCMP_ACT_NOPE"]]], "is not a seccomp action"),
            (["linux": ["sysctl": ["vm.swappiness": "1"]]], "not a namespaced sysctl"),
            (["mounts": [["destination": "/x", "type": "bind", "options": ["rbind"]]]], "a bind mount needs a source"),
        ] as [([String: Any], String)] {
            let bundle = try BundleTests().bundle(extra)
            defer { try? FileManager.default.removeItem(atPath: bundle) }
            expectError(fragment) { _ = try GuestBundle(bundle: bundle, container: "c") }
        }
    }

    /// The guest's kernel could ignore its cgroups: the host holds QEMU to the container's CPU.
    @Test func cpuLimitsReachTheHostCgroupInEveryHierarchy() throws {
        let name = "vessel-cpu-test-\(getpid())"
        let made = HostCgroup.hierarchies().map { $0 + "/" + name }.filter { mkdir($0, 0o755) == 0 }
        defer { for dir in made { rmdir(dir) } }
        var cpu = OCISpec.CPU()
        cpu.quota = 50_000
        cpu.period = 100_000
        cpu.shares = 512
        var resources = OCISpec.Resources()
        resources.cpu = cpu
        var warnings: [String] = []
        HostCgroup.limit(resources, in: made) { warnings.append($0) }
        #expect(warnings.isEmpty, "\(warnings)")
        var checked = 0
        for dir in made {
            if let quota = try? Linux.readFile(dir + "/cpu.cfs_quota_us") {
                #expect(quota.trimmingCharacters(in: .whitespacesAndNewlines) == "50000")
                checked += 1
            }
            if let max = try? Linux.readFile(dir + "/cpu.max") {
                #expect(max.trimmingCharacters(in: .whitespacesAndNewlines) == "50000 100000")
                checked += 1
            }
        }
        #expect(checked > 0, "no hierarchy with a cpu controller among \(made)")
    }

    /// pids and devices too: a pids limit bounds the sandbox's host tasks (never below what QEMU
    /// needs), and the host's devices are closed to the sandbox but for the spec's and QEMU's own.
    @Test func pidsAndDeviceLimitsReachTheHostCgroup() throws {
        let name = "vessel-limits-test-\(getpid())"
        let made = HostCgroup.hierarchies().map { $0 + "/" + name }.filter { mkdir($0, 0o755) == 0 }
        defer { HostCgroup.remove(made) }
        // A host disk the spec allows (as `--device` would): the monitor's cgroup lists it, QEMU's never.
        let disk = try FileManager.default.contentsOfDirectory(atPath: "/dev").map { "/dev/" + $0 }.compactMap { path -> (String, stat)? in
            var st = stat()
            return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFBLK ? (path, st) : nil
        }.first
        let (major, minor) =
            disk.map { (Int64(($0.1.st_rdev >> 8) & 0xfff), Int64(($0.1.st_rdev & 0xff) | (($0.1.st_rdev >> 12) & 0xfff00))) } ?? (8, 20)
        var resources = OCISpec.Resources()
        resources.pids = OCISpec.Pids(limit: 1000)
        resources.devices = [
            OCISpec.DeviceCgroup(allow: false, type: nil, major: nil, minor: nil, access: "rwm"),
            OCISpec.DeviceCgroup(allow: true, type: "c", major: 10, minor: 229, access: "rwm"),
            OCISpec.DeviceCgroup(allow: true, type: "b", major: major, minor: minor, access: "r"),
            // A privileged container's: every device of its guest, none more of the host's.
            OCISpec.DeviceCgroup(allow: true, type: "a", major: nil, minor: nil, access: "rwm"),
        ]
        var warnings: [String] = []
        HostCgroup.limit(resources, in: made) { warnings.append($0) }
        #expect(warnings.isEmpty, "\(warnings)")
        guard let pids = made.first(where: { Linux.exists($0 + "/pids.max") }) else {
            Issue.record("no hierarchy with a pids controller among \(made)")
            return
        }
        #expect(try Linux.readFile(pids + "/pids.max").trimmingCharacters(in: .whitespacesAndNewlines) == "1000")
        let kept = resources.devices
        resources.devices = nil
        resources.pids = OCISpec.Pids(limit: 10)
        HostCgroup.limit(resources, in: made) { warnings.append($0) }
        #expect(try Linux.readFile(pids + "/pids.max").trimmingCharacters(in: .whitespacesAndNewlines) == "\(HostCgroup.sandboxTasks)")
        guard let devices = made.first(where: { Linux.exists($0 + "/devices.list") }) else { return }  // v2: the guest's only
        let list = try Linux.readFile(devices + "/devices.list").split(separator: "\n").map(String.init)
        #expect(Array(list.prefix(2)) == ["c 10:229 rwm", "b \(major):\(minor) r"], "the spec's rules first, in order: \(list)")
        #expect(list.dropFirst(2) == ArraySlice(HostCgroup.sandboxDevices.map(HostCgroup.v1Entry)), "\(list)")
        // QEMU's child: only what QEMU opens, also after the spec's rules are written again.
        let vmm = try #require(try HostCgroup.vmmCgroups(in: made).devices)
        resources.devices = kept
        HostCgroup.limit(resources, in: made) { warnings.append($0) }
        #expect(
            try Linux.readFile(vmm + "/devices.list").split(separator: "\n").map(String.init)
                == HostCgroup.sandboxDevices.map(HostCgroup.v1Entry))
        #expect(warnings.isEmpty, "\(warnings)")
        guard let disk else { return }
        let open = { (cgroup: String) in
            try command(
                ["/bin/sh", "-c", "echo $$ > \(cgroup)/cgroup.procs && (exec 3</dev/null) && (exec 3<\(disk.0)) 2>/dev/null"], timeout: 30
            ).status
        }
        #expect(try open(devices) == 0, "the monitor's cgroup allows the spec's \(disk.0)")
        #expect(try open(vmm) != 0, "QEMU's cgroup must not open \(disk.0)")
        // `update` with fewer rules replaces them, also with QEMU's child there (v1 refuses a
        // deny-all then): the disk is gone from the sandbox's cgroup.
        resources.devices = [OCISpec.DeviceCgroup(allow: true, type: "c", major: 10, minor: 229, access: "rwm")]
        HostCgroup.limit(resources, in: made) { warnings.append($0) }
        #expect(warnings.isEmpty, "\(warnings)")
        let updated = try Linux.readFile(devices + "/devices.list").split(separator: "\n").map(String.init)
        #expect(updated == ["c 10:229 rwm"] + HostCgroup.sandboxDevices.map(HostCgroup.v1Entry), "\(updated)")
        #expect(try open(devices) != 0, "the update took \(disk.0) away")
        #expect(
            try Linux.readFile(vmm + "/devices.list").split(separator: "\n").map(String.init)
                == HostCgroup.sandboxDevices.map(HostCgroup.v1Entry))
    }

    /// The same on cgroup v2 (this host's cgroup2 mount alone, as on a v2-only host), where rules
    /// are a device program: the sandbox gets the spec's, never a privileged container's "all";
    /// QEMU's child only its own; `update` replaces the program instead of adding one.
    @Test(.enabled(if: HostCgroup.hierarchies().contains(where: HostCgroup.isUnified), "no cgroup2 hierarchy"))
    func deviceRulesReachTheHostsCgroupV2() throws {
        let root = try #require(HostCgroup.hierarchies().first(where: HostCgroup.isUnified))
        let made = [root + "/vessel-devices2-test-\(getpid())"]
        try Linux.mkdirAll(made[0])
        defer { HostCgroup.remove(made) }
        let readKmsg = OCISpec.DeviceCgroup(allow: true, type: "c", major: 1, minor: 11, access: "r")
        var resources = OCISpec.Resources()
        resources.devices = [
            OCISpec.DeviceCgroup(allow: false, type: nil, major: nil, minor: nil, access: "rwm"), readKmsg,
            OCISpec.DeviceCgroup(allow: true, type: "a", major: nil, minor: nil, access: "rwm"),
        ]
        var warnings: [String] = []
        HostCgroup.limit(resources, in: made) { warnings.append($0) }
        let vmm = try #require(try HostCgroup.vmmCgroups(in: made).unified)
        #expect(warnings.isEmpty, "\(warnings)")
        let opens = { (cgroup: String, device: String, mode: String) in
            try command(["/bin/sh", "-c", "echo $$ > \(cgroup)/cgroup.procs && (exec 3\(mode)\(device)) 2>/dev/null"], timeout: 30)
                .status == 0
        }
        #expect(try opens(made[0], "/dev/null", ">") && opens(vmm, "/dev/null", ">"), "both allow what QEMU opens")
        #expect(try opens(made[0], "/dev/kmsg", "<"), "the sandbox's cgroup allows the spec's device")
        #expect(try !opens(made[0], "/dev/kmsg", ">"), "for reading only")
        #expect(try !opens(vmm, "/dev/kmsg", "<"), "QEMU's cgroup must not open the spec's device")
        if Linux.exists("/dev/loop-control") {
            #expect(try !opens(made[0], "/dev/loop-control", "<"), "a privileged container's \"all\" is its guest's devices")
        }
        resources.devices = [OCISpec.DeviceCgroup(allow: true, type: "c", major: 10, minor: 229, access: "rwm")]
        HostCgroup.limit(resources, in: made) { warnings.append($0) }
        #expect(warnings.isEmpty, "\(warnings)")
        #expect(try !opens(made[0], "/dev/kmsg", "<"), "the update took the device away")
        #expect(try DeviceProgram.attachedCount(cgroup: made[0]) == 1, "an update replaces the program")
        #expect(try DeviceProgram.attachedCount(cgroup: vmm) == 1)
    }

    /// Hooks meant for the container's namespaces cannot run in the guest: named, not silently dropped.
    @Test func hooksForTheContainersNamespacesAreNamed() throws {
        let hook: [String: Any] = ["path": "/bin/true"]
        let bundle = try BundleTests().bundle(["hooks": ["createContainer": [hook], "prestart": [hook], "startContainer": [hook]]])
        defer { try? FileManager.default.removeItem(atPath: bundle) }
        #expect(try GuestBundle(bundle: bundle, container: "c").hooksNotRun == ["hooks.createContainer", "hooks.startContainer"])
        #expect(!Features.json.contains("createContainer"), "vessel features lists only the hooks it runs")
    }

    @Test func theGuestNeverGetsHostCPUNumbers() throws {
        let bundle = try BundleTests().bundle(["linux": ["resources": ["cpu": ["cpus": "0-63", "mems": "1", "quota": 1000]]]])
        defer { try? FileManager.default.removeItem(atPath: bundle) }
        let cpu = try GuestBundle(bundle: bundle, container: "c").guestSpec.linux.resources.cpu
        #expect(cpu.cpus.isEmpty && cpu.mems.isEmpty && cpu.quota == 1000)
    }

    @Test func cgroupPathsStayBelowTheHierarchyRoot() {
        #expect(HostCgroup.relativePath(cgroupsPath: "../../etc:x:y", id: "c") == "etc/x-y.scope")
        #expect(HostCgroup.relativePath(cgroupsPath: "system.slice:docker:abc", id: "c") == "system.slice/docker-abc.scope")
        #expect(HostCgroup.relativePath(cgroupsPath: "/../..", id: "c") == "vessel/c")
        #expect(HostCgroup.relativePath(cgroupsPath: "..:..:..", id: "c").split(separator: "/").allSatisfy { $0 != ".." })
    }

    @Test func execUserMustBeNumbers() throws {
        expectError("expected UID[:GID] as numbers") { _ = try CLI.user("1000:abc") }
        expectError("expected UID[:GID] as numbers") { _ = try CLI.user("abc") }
        expectError("expected UID[:GID] as numbers") { _ = try CLI.user("1:2:3") }
        #expect(try CLI.user("1000:5")! == (1000, 5))
        #expect(try CLI.user("7")! == (7, 0))
    }
}

@Suite(.timeLimit(.minutes(2)))
struct HostHookTests {
    /// poststart and poststop: a failing hook is a warning, the next one still runs (runtime spec).
    @Test func laterHooksRunAfterAFailingOne() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let hooks = [
            OCISpec.Hook(path: "/bin/sh", args: ["sh", "-c", "exit 4"]),
            OCISpec.Hook(path: "/bin/sh", args: ["sh", "-c", "cat > \(dir)/second"]),
        ]
        var warnings: [String] = []
        HostHooks.runAll(hooks, state: ["id": "h"], name: "poststop") { warnings.append($0.message) }
        #expect(warnings.count == 1 && warnings[0].contains("exited with status 4"), "\(warnings)")
        #expect((try? String(contentsOfFile: dir + "/second", encoding: .utf8))?.contains("\"id\":\"h\"") == true)
        expectError("exited with status 4") { try HostHooks.run(hooks, state: [:], name: "prestart") }
    }
}

@Suite(.timeLimit(.minutes(2)))
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
