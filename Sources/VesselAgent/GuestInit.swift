import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// The agent as PID 1 of the guest: the mounts every later step relies on, the `agent.*` kernel
/// options, and power-off (PID 1 must never simply exit: the kernel would panic).
enum GuestInit {
    struct MountPoint {
        var source: String, target: String, type: String, flags: MountFlags, data: String?
    }

    static let mounts: [MountPoint] = [
        // /proc was mounted by the C constructor already (the Swift runtime needs it before main).
        MountPoint(source: "sysfs", target: "/sys", type: "sysfs", flags: [.noSUID, .noDev, .noExec], data: nil),
        MountPoint(source: "devtmpfs", target: "/dev", type: "devtmpfs", flags: [.noSUID], data: "mode=0755"),
        MountPoint(
            source: "devpts", target: "/dev/pts", type: "devpts", flags: [.noSUID, .noExec],
            data: "newinstance,ptmxmode=0666,mode=0620,gid=5"),
        MountPoint(source: "shm", target: "/dev/shm", type: "tmpfs", flags: [.noSUID, .noDev], data: "mode=1777"),
        MountPoint(source: "tmpfs", target: "/run", type: "tmpfs", flags: [.noSUID, .noDev], data: "mode=0755"),
        MountPoint(source: "tmpfs", target: "/tmp", type: "tmpfs", flags: [.noSUID, .noDev], data: "mode=1777"),
        MountPoint(
            source: "cgroup2", target: "/sys/fs/cgroup", type: "cgroup2", flags: [.noSUID, .noDev, .noExec],
            data: "nsdelegate"),
    ]

    /// Mounts and links; a failure is logged and the rest goes on (a half-working guest that says
    /// why beats a kernel panic).
    static func setup(log: (String) -> Void) {
        for mount in mounts {
            do {
                try Linux.mkdirAll(mount.target)
                try Linux.mount(mount.source, mount.target, mount.type, mount.flags.rawValue, mount.data)
            } catch {
                log("init: \(error)")
            }
        }
        for (link, target) in [
            ("/dev/ptmx", "pts/ptmx"), ("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2"),
        ] {
            unlink(link)
            if symlink(target, link) != 0 { log("init: \(LinuxError(stage: "symlink", detail: link))") }
        }
        // Containers get cgroups below this one; the root must hand every controller down.
        if let controllers = try? Linux.readFile("/sys/fs/cgroup/cgroup.controllers") {
            let enable = controllers.split(separator: " ").map { "+" + $0.trimmed }.joined(separator: " ")
            do { try Linux.writeFile("/sys/fs/cgroup/cgroup.subtree_control", enable) } catch { log("init: cgroup controllers: \(error)") }
        }
        setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1)
        try? Linux.setHostname("vessel")
    }

    /// `agent.*` options from the kernel command line, with Kata's names.
    static func options(cmdline: String) -> (AgentOptions, unknown: [String]) {
        var options = AgentOptions()
        options.hostMode = false
        options.stdioAddress = .vsock(port: StdioStreams.defaultPort)
        // 16 times the default: under TCG stdout ran at 50 MiB/s with 64 KiB pipes, 140 with 1 MiB.
        options.containerPipeSize = 1 << 20
        var unknown: [String] = []
        for word in cmdline.split(whereSeparator: { $0 == " " || $0 == "\n" }) where word.hasPrefix("agent.") {
            let parts = word.dropFirst("agent.".count).split(separator: "=", maxSplits: 1)
            let key = String(parts[0]), value = parts.count > 1 ? String(parts[1]) : ""
            switch key {
            case "log": options.logLevel = value
            case "server_addr":
                if let address = try? AgentOptions.parseServerAddress(value) {
                    options.serverAddress = address
                } else {
                    unknown.append(String(word))
                }
            case "debug_console": options.debugConsole = true
            case "debug_console_vport": options.debugConsolePort = UInt32(value) ?? options.debugConsolePort
            case "stdio_vport":
                if let port = UInt32(value) { options.stdioAddress = .vsock(port: port) } else { unknown.append(String(word)) }
            case "log_vport": options.logPort = UInt32(value)
            case "no_pivot": options.noPivot = true
            case "container_pipe_size": options.containerPipeSize = Int(value)
            case "hotplug_timeout": options.hotplugTimeout = Int(value) ?? options.hotplugTimeout
            case "selftest": options.selftest = value.split(separator: ",").map(String.init)
            default: unknown.append(String(word))
            }
        }
        return (options, unknown)
    }

    /// "/" is the kernel's initramfs (ramfs or tmpfs, and the root of the mount tree): there
    /// pivot_root(2) fails with EINVAL, in every mount namespace cloned from ours.
    static func rootIsInitramfs() -> Bool {
        guard let type = try? Linux.fileSystemType("/") else { return false }
        guard type == 0x8584_58f6 || type == 0x0102_1994 else { return false }
        return (try? MountInfo.rootIsNamespaceRoot(MountInfo.read())) ?? false
    }

    /// Milliseconds since the kernel started (/proc/uptime).
    static var uptimeMilliseconds: Int {
        let text = (try? Linux.readFile("/proc/uptime")) ?? "0"
        let seconds = text.split(separator: " ").first.flatMap { Double($0) } ?? 0
        return Int(seconds * 1000)
    }

    static var residentKiB: Int { Linux.procKiB("VmRSS", in: "/proc/self/status") }

    /// The RSS and what it is made of: the agent's text is file (or shmem) pages of the initramfs,
    /// in guest memory whether mapped or not; only the anonymous part is the agent's own.
    static var residentSummary: String {
        let parts = [("RssAnon", "anon"), ("RssFile", "file"), ("RssShmem", "shmem")]
            .map { key, name in "\(name) \(Linux.procKiB(key, in: "/proc/self/status"))" }
        return "rss \(residentKiB) KiB: \(parts.joined(separator: ", "))"
    }

    /// Everything is stopped already: flush, detach the filesystems, power off. Never returns.
    static func powerOff(log: (String) -> Void) -> Never {
        sync()
        for mount in mounts.reversed() { umount2(mount.target, Int32(MNT_DETACH)) }
        log("vessel-agent: powering off")
        log("vessel-agent: power off failed: \(Linux.powerOff())")
        while true { pause() }
    }
}
