import Foundation
import Testing
import VesselCore
import VesselDevSupport
import VesselLinux
import VesselTestSupport
import VesselVM

/// `vessel` driving real QEMU guests (TCG here): the built kernel and initrd, a busybox bundle.
@Suite(
    .timeLimit(.minutes(10)), .serialized,
    .enabled(if: VesselCLI.guestAvailable, "VESSEL_KERNEL/VESSEL_INITRD not set (make test sets them)"))
struct VMRuntimeTests {
    @Test func runRelaysStdioAndPropagatesTheExitCode() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["sh", "-c", "read line; echo got:$line; echo hello from $(hostname); echo to-stderr >&2; exit 42"])
        let result = try cli.run(["run", "--bundle", bundle, "r1"], stdin: "abc\n")
        #expect(result.status == 42, "\(result.stderr)")
        #expect(result.stdout.contains("got:abc"), "stdout: \(result.stdout)\nstderr: \(result.stderr)")
        #expect(result.stdout.contains("hello from vessel"))
        #expect(result.stderr.contains("to-stderr"))
        try cli.expectNothingLeft("r1")
    }

    @Test func createStartExecKillDelete() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        // Podman and docker ask for a v1 "cgroup" mount; on the guest's cgroup2 it must become cgroup2.
        let cgroupMount: [String: Any] = [
            "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        ]
        let bundle = try cli.bundle(["sh", "-c", "echo started; exec sleep 1000"], extraMounts: [cgroupMount])
        let pidFile = cli.directory + "/pid"
        var result = try cli.run(["create", "--bundle", bundle, "--pid-file", pidFile, "c1"])
        #expect(result.status == 0, "\(result.stderr)")
        let state = try cli.state("c1")
        #expect(state["status"] as? String == "created")
        let pid = Int32(try String(contentsOfFile: pidFile, encoding: .utf8)) ?? 0
        #expect(state["pid"] as? Int == Int(pid) && pid > 0)

        result = try cli.run(["create", "--bundle", bundle, "c1"])
        #expect(result.status == 1 && result.stderr.contains("container with id exists: c1"), "\(result.stderr)")
        #expect(try cli.run(["start", "c1"]).status == 0)
        #expect(try cli.state("c1")["status"] as? String == "running")
        result = try cli.run(["start", "c1"])
        #expect(result.status == 1 && result.stderr.contains("cannot start an already running container"), "\(result.stderr)")

        result = try cli.run(["exec", "c1", "sh", "-c", "echo exec-$((6*7)) in $(hostname); exit 3"])
        #expect(result.status == 3, "\(result.stderr)")
        #expect(result.stdout.contains("exec-42 in vessel"), "\(result.stdout)")
        result = try cli.run(["exec", "c1", "sh", "-c", "grep ' /sys/fs/cgroup ' /proc/mounts; cat /sys/fs/cgroup/cgroup.controllers"])
        #expect(result.stdout.contains("cgroup2") && result.stdout.contains("pids"), "\(result.stdout) \(result.stderr)")
        result = try cli.run(["ps", "--format", "json", "c1"])
        #expect(result.stdout.contains("\(pid)"))
        // The pid callers get is in the container's host cgroup, as runc's container process is.
        let monitorCgroups = (try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8)) ?? ""
        #expect(monitorCgroups.contains("/vessel/c1"), "\(monitorCgroups)")
        // runc's exec flags act (or are refused), never silently ignored.
        result = try cli.run([
            "exec", "--cap", "CAP_SYS_ADMIN", "--no-new-privs", "-u", "1000:1001", "c1",
            "sh", "-c", "grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status; id -u; id -g",
        ])
        let lines = result.stdout.split(separator: "\n").map { $0.split(separator: "\t").last.map(String.init) ?? "" }
        #expect(
            lines.count == 4 && (UInt64(lines[0], radix: 16) ?? 0) & (1 << 21) != 0 && lines[1] == "1"
                && lines[2] == "1000" && lines[3] == "1001", "\(result.stdout) \(result.stderr)")
        result = try cli.run(["exec", "-u", "1000:abc", "c1", "true"])
        #expect(result.status == 1 && result.stderr.contains("expected UID[:GID] as numbers"), "\(result.stderr)")
        result = try cli.run(["exec", "--cgroup", "x", "c1", "true"])
        #expect(result.status == 1 && result.stderr.contains("--cgroup"), "\(result.stderr)")

        #expect(try cli.run(["pause", "c1"]).status == 0)
        #expect(try cli.state("c1")["status"] as? String == "paused")
        #expect(try cli.run(["resume", "c1"]).status == 0)
        #expect(try cli.state("c1")["status"] as? String == "running")
        // CPU limits hold QEMU on the host too; host CPU numbers stay out of the 1-vCPU guest.
        result = try cli.run(["update", "--cpu-quota", "50000", "--cpu-period", "100000", "--cpuset-cpus", "0-1", "c1"])
        #expect(result.status == 0, "\(result.stderr)")
        let hostLimits = try cli.sandbox("c1").hostCgroups.flatMap { dir in
            ["cpu.cfs_quota_us", "cpu.max"].compactMap { try? String(contentsOfFile: dir + "/" + $0, encoding: .utf8) }
        }
        #expect(hostLimits.contains { $0.hasPrefix("50000") }, "\(hostLimits)")

        result = try cli.run(["delete", "c1"])
        #expect(result.status == 1 && result.stderr.contains("cannot delete container c1 that is not stopped: running"), "\(result.stderr)")
        #expect(try cli.run(["kill", "c1", "KILL"]).status == 0)
        // The shim exits with the container; the state then says stopped.
        #expect(ProcessIdentity.waitGone(pid: pid, timeout: 60))
        #expect(try cli.state("c1")["status"] as? String == "stopped")
        result = try cli.run(["kill", "c1"])
        #expect(result.status == 1 && result.stderr.contains("container not running"))
        #expect(try cli.run(["delete", "c1"]).status == 0)
        try cli.expectNothingLeft("c1")
    }

    @Test func terminalThroughTheConsoleSocket() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(
            ["sh", "-c", "test -t 0 && echo stdin-is-a-terminal; tty; stty size; read answer; echo answer=$answer"],
            terminal: true)
        let socketPath = cli.directory + "/console.sock"
        let listener = try UnixListener(path: socketPath, backlog: 1)
        defer { listener.close() }
        let received = Background { () -> Int32 in
            guard let connection = try? listener.accept(timeout: 30) else { return -1 }
            defer { close(connection) }
            return (try? Linux.receiveFD(connection, nameLength: 255)) ?? -1
        }
        let pidFile = cli.directory + "/pid"
        var result = try cli.run(["create", "--bundle", bundle, "--console-socket", socketPath, "--pid-file", pidFile, "t1"])
        #expect(result.status == 0, "\(result.stderr)")
        let arrived = try received.value(timeout: 30)
        #expect(arrived != nil, "no pty master within 30 s")
        let master = arrived ?? -1
        #expect(master >= 0)
        guard master >= 0 else { return }
        defer { close(master) }
        try Linux.setWindowSize(master, rows: 33, columns: 101)
        result = try cli.run(["start", "t1"])
        #expect(result.status == 0, "\(result.stderr)")
        var seen = readUntil(master, "33 101", timeout: 60)
        try #require(seen.contains("33 101"), "no \"33 101\" within 60 s; got: \(seen)")
        _ = "yes\n".withCString { write(master, $0, 4) }
        seen += readUntil(master, "answer=yes", timeout: 60)
        #expect(seen.contains("stdin-is-a-terminal"), "\(seen)")
        // As under runc: the terminal is a pty of the container's own devpts.
        #expect(seen.contains("/dev/pts/"), "\(seen)")
        #expect(seen.contains("answer=yes"), "\(seen)")
        let pid = Int32(try String(contentsOfFile: pidFile, encoding: .utf8)) ?? 0
        #expect(ProcessIdentity.waitGone(pid: pid, timeout: 60))
        #expect(try cli.run(["delete", "t1"]).status == 0)
        try cli.expectNothingLeft("t1")
    }

    /// OCI hooks run on the host with the state on stdin; a failing prestart hook fails `create`
    /// and takes the already booted sandbox with it.
    @Test func hostHooksGetTheStateAndAFailingHookLeavesNothing() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let seen = cli.directory + "/hook-state.json", prestart = cli.directory + "/prestart.json"
        let network = cli.directory + "/prestart-netns"
        let dir = cli.directory + "/hooks"
        // The pid's network namespace as the hook sees it (docker's libnetwork hook configures that one).
        let record =
            "cat > \(prestart); pid=$(sed -n 's/.*\"pid\":\\([0-9]*\\).*/\\1/p' \(prestart)); readlink /proc/$pid/ns/net > \(network)"
        try OCIBundle.make(
            at: dir, args: ["true"],
            extra: [
                "hooks": [
                    "createRuntime": [["path": "/bin/sh", "args": ["sh", "-c", "cat > \(seen)"]]],
                    "prestart": [
                        ["path": "/bin/sh", "args": ["sh", "-c", record]],
                        ["path": "/bin/sh", "args": ["sh", "-c", "echo refusing; exit 3"]],
                    ],
                ],
                "linux": ["namespaces": ["pid", "mount", "uts", "ipc", "network"].map { ["type": $0] }],
            ])
        let result = try cli.run(["create", "--bundle", dir, "h1"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("prestart hook /bin/sh exited with status 3: refusing"), "\(result.stderr)")
        let state = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: seen))) as? [String: Any]
        #expect(state?["id"] as? String == "h1")
        #expect(state?["status"] as? String == "creating")
        #expect((state?["pid"] as? Int ?? 0) > 0)
        #expect(state?["bundle"] as? String == dir)
        // Prestart (a legacy hook) sees the container created, with the same pid: the monitor, in
        // the container's own host network namespace.
        let later = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: prestart))) as? [String: Any]
        #expect(later?["status"] as? String == "created" && later?["pid"] as? Int == state?["pid"] as? Int, "\(later ?? [:])")
        let hostNetwork = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/net")
        let seenNetwork = (try? String(contentsOfFile: network, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(seenNetwork?.hasPrefix("net:[") == true && seenNetwork != hostNetwork, "\(seenNetwork ?? "none") vs \(hostNetwork)")
        try cli.expectNothingLeft("h1")
    }

    /// A user namespace in the guest, through the whole path: the host's spec checks, the agent's
    /// maps, the container's root as uid 100000 of the guest.
    @Test func aUserNamespaceInTheGuest() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let dir = cli.directory + "/userns"
        try OCIBundle.make(
            at: dir, args: ["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u"],
            extra: [
                "linux": [
                    "namespaces": ["pid", "mount", "uts", "ipc", "user"].map { ["type": $0] },
                    "uidMappings": [["containerID": 0, "hostID": 100_000, "size": 65536]],
                    "gidMappings": [["containerID": 0, "hostID": 200_000, "size": 65536]],
                ]
            ])
        let result = try cli.run(["run", "--bundle", dir, "u1"])
        #expect(result.status == 0, "\(result.stderr)")
        let lines = result.stdout.split(separator: "\n").map { $0.split(separator: " ").joined(separator: " ") }
        #expect(lines == ["0 100000 65536", "0 200000 65536", "0"], "\(result.stdout)")
        try cli.expectNothingLeft("u1")
    }

    @Test func killedQEMUMeansAStoppedContainerAndDeleteCleansUp() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["sleep", "1000"])
        let pidFile = cli.directory + "/pid"
        #expect(try cli.run(["run", "--detach", "--bundle", bundle, "--pid-file", pidFile, "k1"]).status == 0)
        #expect(try cli.state("k1")["status"] as? String == "running")
        let qemu = try cli.sandbox("k1").qemuPid
        #expect(qemu > 0)
        kill(qemu, SIGKILL)
        let shim = Int32(try String(contentsOfFile: pidFile, encoding: .utf8)) ?? 0
        #expect(ProcessIdentity.waitGone(pid: shim, timeout: 60))
        let state = try cli.state("k1")
        #expect(state["status"] as? String == "stopped")
        #expect((state["failure"] as? String)?.contains("QEMU exited") == true, "\(state)")
        #expect(try cli.run(["delete", "k1"]).status == 0)
        try cli.expectNothingLeft("k1")
    }
}

extension VMRuntimeTests {
    /// As with runc, the pid callers wait on is the container: killing the monitor (even with
    /// SIGKILL) kills the container's process; the sandbox stays until delete, which cleans up.
    @Test func killedMonitorMeansAStoppedContainer() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["sleep", "1000"])
        let pidFile = cli.directory + "/pid"
        #expect(try cli.run(["run", "--detach", "--bundle", bundle, "--pid-file", pidFile, "s1"]).status == 0)
        let monitor = Int32(try String(contentsOfFile: pidFile, encoding: .utf8)) ?? 0
        #expect(monitor > 0)
        kill(monitor, SIGKILL)
        var status = ""
        try waitUntil(timeout: 60, every: 0.1) {
            status = try cli.state("s1")["status"] as? String ?? ""
            return status == "stopped"
        }
        #expect(status == "stopped")
        let result = try cli.run(["exec", "s1", "true"])
        #expect(result.status == 1 && result.stderr.contains("cannot exec in a stopped container"), "\(result.stderr)")
        #expect(try cli.run(["delete", "s1"]).status == 0)
        try cli.expectNothingLeft("s1")
    }

    /// The owner holds QEMU (parent-death signal) and the backend (a thread): killing it takes
    /// the sandbox down; the container reads as stopped and delete cleans up what it left.
    @Test func killedOwnerTakesTheSandboxDown() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["sleep", "1000"])
        #expect(try cli.run(["run", "--detach", "--bundle", bundle, "o1"]).status == 0)
        let sandbox = try cli.sandbox("o1")
        #expect(sandbox.qemuPid > 0 && sandbox.ownerPid > 0)
        kill(sandbox.ownerPid, SIGKILL)
        #expect(ProcessIdentity.waitGone(pid: sandbox.qemuPid, timeout: 30), "QEMU outlived its owner")
        #expect(try cli.state("o1")["status"] as? String == "stopped")
        let result = try cli.run(["exec", "o1", "true"])
        #expect(result.status == 1 && result.stderr.contains("cannot exec in a stopped container"), "\(result.stderr)")
        #expect(try cli.run(["delete", "o1"]).status == 0)
        try cli.expectNothingLeft("o1")
    }

    /// Every process of a container is in its cgroup (an exec'd one too: limits, device filter,
    /// freezer and stats cover it), and a cgroup namespace is rooted at that cgroup.
    @Test func execsRunInTheContainersCgroupAndSeeOnlyIt() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let cgroupMount: [String: Any] = [
            "destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup", "options": ["nosuid", "noexec", "nodev"],
        ]
        let bundle = try cli.bundle(["sleep", "1000"], extraMounts: [cgroupMount])
        try editSpec(bundle) { spec in
            var linux = spec["linux"] as! [String: Any]
            linux["namespaces"] = ["pid", "mount", "uts", "ipc", "cgroup"].map { ["type": $0] }
            linux["resources"] = ["pids": ["limit": 50]]
            spec["linux"] = linux
        }
        #expect(try cli.run(["run", "--detach", "--bundle", bundle, "cg1"]).status == 0)
        let script =
            "cat /proc/self/cgroup /proc/1/cgroup; grep -qx 1 /sys/fs/cgroup/cgroup.procs && echo init-here; "
            + "grep -qx $$ /sys/fs/cgroup/cgroup.procs && echo exec-here; cat /sys/fs/cgroup/pids.max; ls /sys/fs/cgroup | grep -c vessel"
        let result = try cli.run(["exec", "cg1", "sh", "-c", script])
        #expect(result.status == 0 || result.status == 1, "\(result.stderr)")
        let lines = result.stdout.split(separator: "\n").map(String.init)
        #expect(lines.prefix(2) == ["0::/", "0::/"], "\(result.stdout)")
        #expect(lines.contains("init-here") && lines.contains("exec-here"), "\(result.stdout)")
        #expect(lines.contains("50") && lines.last == "0", "\(result.stdout)")
        #expect(try cli.run(["delete", "--force", "cg1"]).status == 0)
        try cli.expectNothingLeft("cg1")
    }

    /// The guest's PID 1 leaves the initramfs for a tmpfs root at boot (switch_root), so
    /// containers are entered with pivot_root, as under runc, not MS_MOVE + chroot with the
    /// initramfs (the agent's files) left underneath; a privileged container that unmounts its
    /// root still finds no agent.
    @Test func containersArePivotedNotChrooted() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["sh", "-c", "umount -l / 2>&1; cd /; ls /init 2>/dev/null || echo no-agent-here; sleep 1000"])
        try editSpec(bundle) { setCapabilities(&$0, ["CAP_SYS_ADMIN", "CAP_SYS_CHROOT", "CAP_KILL"]) }
        let seen = try runDetached(cli, bundle, "root1", until: "no-agent-here")
        #expect(seen.contains("no-agent-here"), "\(seen)")
        let console = (try? String(contentsOfFile: SandboxPaths(root: cli.root, id: "root1").consoleLog, encoding: .utf8)) ?? ""
        #expect(console.contains("containers enter their root with pivot_root"), "\(console.suffix(2000))")
        #expect(!console.contains("MS_MOVE and chroot"))
        #expect(try cli.run(["delete", "--force", "root1"]).status == 0)
        try cli.expectNothingLeft("root1")
    }

    /// What the guest drives on the host: QEMU under seccomp with no_new_privs and only the
    /// capabilities 9p needs; the share nosuid, nodev and noexec on the host, all the way down.
    @Test func qemuIsConfinedAndTheShareIsInertOnTheHost() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["sh", "-c", "chmod 4755 /bin/busybox && echo made; sleep 1000"])
        try editSpec(bundle) { setCapabilities(&$0, ["CAP_FOWNER", "CAP_FSETID", "CAP_KILL"]) }
        let seen = try runDetached(cli, bundle, "inert", until: "made")
        #expect(seen.contains("made"), "\(seen)")
        let qemu = try cli.sandbox("inert").qemuPid
        let status = try String(contentsOfFile: "/proc/\(qemu)/status", encoding: .utf8)
        let field = { (name: String) in
            status.split(separator: "\n").first { $0.hasPrefix(name + ":") }?.split(separator: "\t").last.map(String.init) ?? ""
        }
        #expect(field("Seccomp") == "2", "QEMU runs without its seccomp sandbox")
        #expect(field("NoNewPrivs") == "1")
        #expect(UInt64(field("CapBnd"), radix: 16) == VMConfig.keptCapabilities, "CapBnd \(field("CapBnd"))")
        let shared = SandboxPaths(root: cli.root, id: "inert").shared
        for path in [shared, shared + "/inert/rootfs"] {
            let options = MountTable.options(at: path) ?? []
            #expect(options.isSuperset(of: ["nosuid", "nodev", "noexec"]), "\(path): \(options)")
        }
        // The guest made a setuid-root binary; through the share the host cannot even execute it.
        var st = stat()
        #expect(stat(shared + "/inert/rootfs/bin/busybox", &st) == 0 && st.st_mode & S_ISUID != 0)
        #expect(access(shared + "/inert/rootfs/bin/busybox", X_OK) != 0 && errno == EACCES)
        #expect(try cli.run(["delete", "--force", "inert"]).status == 0)
        try cli.expectNothingLeft("inert")
    }

    /// A process without `capabilities` gets none, as under runc.
    @Test func noCapabilitiesMeansNone() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["sh", "-c", "grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status"])
        try editSpec(bundle) { spec in
            var process = spec["process"] as! [String: Any]
            process["capabilities"] = nil
            spec["process"] = process
        }
        let result = try cli.run(["run", "--bundle", bundle, "cap1"])
        #expect(result.status == 0, "\(result.stderr)")
        let sets = result.stdout.split(separator: "\n").map { $0.split(separator: "\t").last.map(String.init) ?? "" }
        #expect(sets.count == 3 && sets.allSatisfy { $0 == "0000000000000000" }, "\(result.stdout)")
        try cli.expectNothingLeft("cap1")
    }

    /// The console reaches a host file, so it is bounded (1 MiB, plus one rotated file), and
    /// /dev/console (c 5:1) is not among the devices every container may open: only a spec that
    /// allows it, as docker's does, gets it.
    @Test func aContainerCannotFillTheHostWithTheConsole() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let flood = "mknod /dev/c c 5 1 && head -c 3000000 /dev/zero | tr '\\0' x > /dev/c && echo flooded"
        let allowed = try cli.bundle(["sh", "-c", flood])
        try editSpec(allowed) { spec in
            setCapabilities(&spec, ["CAP_MKNOD", "CAP_KILL"])
            var linux = spec["linux"] as! [String: Any]
            linux["resources"] = ["devices": [["allow": true, "type": "c", "major": 5, "minor": 1, "access": "RWM"]]]
            spec["linux"] = linux
        }
        let paths = SandboxPaths(root: cli.root, id: "con1")
        let create = try cli.run(["create", "--bundle", allowed, "con1"])
        #expect(create.status == 0, "\(create.stderr)")
        #expect(try cli.run(["start", "con1"]).status == 0)
        try waitUntil(timeout: 180, every: 0.2) { try cli.state("con1")["status"] as? String != "running" }
        let sizes = [paths.consoleLog, paths.consoleLog + ".1"].map {
            (try? FileManager.default.attributesOfItem(atPath: $0)[.size] as? Int) ?? 0
        }
        #expect(sizes[1] > 0, "the console never rotated: \(sizes)")
        #expect(sizes.allSatisfy { $0 <= 1 << 20 }, "console files: \(sizes)")
        let tail = (try? String(contentsOfFile: paths.consoleLog, encoding: .utf8)) ?? ""
        #expect(tail.hasSuffix("x") || tail.contains("xxxx"), "the newest output is kept")
        #expect(try cli.run(["delete", "con1"]).status == 0)
        try cli.expectNothingLeft("con1")

        let denied = try cli.bundle(["sh", "-c", "mknod /dev/c c 5 1 && echo x > /dev/c && echo opened"])
        try editSpec(denied) { setCapabilities(&$0, ["CAP_MKNOD", "CAP_KILL"]) }
        let result = try cli.run(["run", "--bundle", denied, "con2"])
        #expect(result.status != 0 && !result.stdout.contains("opened"), "\(result.status) \(result.stdout) \(result.stderr)")
        try cli.expectNothingLeft("con2")
    }

    /// `delete` while the container is being created: refused without --force; with it, it
    /// waits for the create to end and then removes everything (nothing of the sandbox runs on).
    @Test func deleteDuringCreateWaitsForItThenRemovesAll() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let (create, _) = try createUntilQEMUStarts(cli, "dc1")
        let refused = try cli.run(["delete", "dc1"])
        #expect(
            refused.status == 1 && refused.stderr.contains("cannot delete container dc1 while it is being created"), "\(refused.stderr)")
        let forced = try cli.run(["delete", "--force", "dc1"])
        #expect(forced.status == 0, "\(forced.stderr)")
        let created = try create.value()
        #expect(created.status == 0, "\(created.stderr)")
        try cli.expectNothingLeft("dc1")
    }

    /// An owner that dies while its VM boots (it once crashed there) leaves its mounts, host
    /// cgroups and directory behind; the failing `create` must remove them.
    @Test func anOwnerThatDiesWhileBootingLeavesNothing() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let (create, booting) = try createUntilQEMUStarts(cli, "b1")
        kill(booting.ownerPid, SIGKILL)
        let result = try create.value()
        #expect(result.status == 1, "\(result.stderr)")
        #expect(result.stderr.contains("the owner of sandbox b1 exited during Create"), "\(result.stderr)")
        #expect(ProcessIdentity.waitGone(pid: booting.qemuPid, timeout: 30), "QEMU outlived its owner")
        try cli.expectNothingLeft("b1")
    }
}

extension VMRuntimeTests {
    /// Pods through the OCI CLI, as Kata 1.x did for CRI-O: a container whose spec names a
    /// sandbox in CRI-O's annotations joins that sandbox's VM.
    @Test func crioAnnotatedContainersJoinTheSandboxVM() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let sandbox = cli.directory + "/pause"
        try OCIBundle.make(at: sandbox, args: ["sleep", "100000"], extra: ["annotations": [PodRole.crioType: "sandbox"]])
        let member = cli.directory + "/app"
        try OCIBundle.make(
            at: member, args: ["sh", "-c", "echo app-ran; exec sleep 100000"],
            extra: ["annotations": [PodRole.crioType: "container", PodRole.crioSandbox: "pod1"]])
        #expect(try cli.run(["run", "--detach", "--bundle", sandbox, "pod1"]).status == 0)
        var result = try cli.run(["run", "--detach", "--bundle", member, "app1"])
        #expect(result.status == 0, "\(result.stderr)")
        let pod = try cli.sandbox("pod1")
        #expect(!FileManager.default.fileExists(atPath: SandboxPaths(root: cli.root, id: "app1").directory), "no sandbox of its own")
        let qemus = HostProcesses.all().filter { $0.commandLine.contains(SandboxPaths(root: cli.root, id: "pod1").directory + "/vhost") }
        #expect(qemus.map(\.pid) == [pod.qemuPid], "one QEMU for the pod: \(qemus.map(\.pid))")
        result = try cli.run(["exec", "app1", "sh", "-c", "readlink /proc/self/ns/uts"])
        let inApp = result.stdout
        result = try cli.run(["exec", "pod1", "sh", "-c", "readlink /proc/self/ns/uts"])
        #expect(!inApp.isEmpty && inApp == result.stdout, "the pod's UTS namespace: \(inApp) \(result.stdout)")
        // A member of a sandbox that is not there is refused, and leaves nothing.
        let stray = cli.directory + "/stray"
        try OCIBundle.make(at: stray, args: ["true"], extra: ["annotations": [PodRole.crioType: "container", PodRole.crioSandbox: "nope"]])
        result = try cli.run(["create", "--bundle", stray, "stray1"])
        #expect(result.status == 1 && result.stderr.contains("sandbox nope of container stray1 is not running"), "\(result.stderr)")
        try cli.expectNothingLeft("stray1")

        #expect(try cli.run(["delete", "--force", "app1"]).status == 0)
        #expect(try cli.state("pod1")["status"] as? String == "running", "the pod outlives its member")
        #expect(try cli.run(["delete", "--force", "pod1"]).status == 0)
        try cli.expectNothingLeft("app1")
        try cli.expectNothingLeft("pod1")
    }
}

/// A blocking call on a thread of its own, its result awaited without the cooperative pool.
final class Background<T>: @unchecked Sendable {
    // @unchecked: `result` is written by the thread before it signals `done`, read after.
    private var result: Result<T, Error>?
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable () throws -> T) {
        Thread.detachNewThread { [self] in
            result = Result { try body() }
            done.signal()
        }
    }

    func value() throws -> T {
        done.wait()
        done.signal()  // open for the next caller: the result can be asked for again
        return try result!.get()
    }

    /// nil when the call has not ended within `timeout` seconds.
    func value(timeout: Double) throws -> T? {
        guard done.wait(timeout: .now() + timeout) == .success else { return nil }
        done.signal()
        return try result!.get()
    }
}

/// Edits a bundle's config.json in place.
func editSpec(_ bundle: String, _ edit: (inout [String: Any]) -> Void) throws {
    let file = URL(fileURLWithPath: bundle + "/config.json")
    var spec = try JSONSerialization.jsonObject(with: Data(contentsOf: file)) as! [String: Any]
    edit(&spec)
    try JSONSerialization.data(withJSONObject: spec, options: [.prettyPrinted, .sortedKeys]).write(to: file)
}

func setCapabilities(_ spec: inout [String: Any], _ capabilities: [String]) {
    var process = spec["process"] as! [String: Any]
    process["capabilities"] = ["bounding": capabilities, "effective": capabilities, "permitted": capabilities]
    spec["process"] = process
}

/// `create ID` of a sleeping container, running on a thread of its own (blocking calls on the
/// cooperative pool, 2 threads here, starve the other suites and this polling) until its QEMU
/// has started: the create, and the sandbox record that names QEMU.
/// `vessel run --detach`, then its stdout until `marker` shows up (30 s at most).
func runDetached(_ cli: VesselCLI, _ bundle: String, _ id: String, until marker: String) throws -> String {
    let output = cli.directory + "/\(id).out"
    let status = try cli.run(["run", "--detach", "--bundle", bundle, id], stdoutFile: output).status
    guard status == 0 else { return "run --detach \(id) exited \(status)" }
    var seen = ""
    waitUntil(timeout: 30, every: 0.2) {
        seen = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        return seen.contains(marker)
    }
    return seen
}

func createUntilQEMUStarts(_ cli: VesselCLI, _ id: String) throws -> (Background<VesselCLI.Result>, SandboxRecord) {
    let bundle = try cli.bundle(["sleep", "1000"])
    let create = Background { try cli.run(["create", "--bundle", bundle, id]) }
    var found: SandboxRecord?
    waitUntil(timeout: 60, every: 0.02) {
        found = (try? cli.sandbox(id)).flatMap { $0.qemuPid > 0 ? $0 : nil }
        return found != nil
    }
    if let found { return (create, found) }
    _ = try? create.value()
    throw TestSupportError("QEMU of \(id) never started")
}
