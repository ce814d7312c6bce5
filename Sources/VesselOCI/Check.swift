import Foundation
import VesselCore
import VesselLinux
import VesselVM

/// `vessel check`: can this host run Vessel? One line per requirement, with a remedy when it fails.
enum Check {
    static func run(_ runtime: Context) -> Int32 {
        let h = runtime.config.hypervisor
        var failed = false
        func line(_ ok: Bool, _ what: String, _ remedy: String = "") {
            print("\(ok ? "ok  " : "FAIL") \(what)" + (ok || remedy.isEmpty ? "" : " -> \(remedy)"))
            if !ok { failed = true }
        }
        line(geteuid() == 0, "running as root", "run vessel as root (it mounts, creates cgroups and starts VMs)")
        let qemu = FileManager.default.isExecutableFile(atPath: h.path)
        line(qemu, "QEMU at \(h.path)", "apt-get install qemu-system-x86, or set hypervisor.path")
        let devices = qemu ? deviceHelp(h.path) : ""
        line(devices.contains("vhost-user-vsock-pci"), "QEMU has vhost-user-vsock-pci (hybrid vsock)", "QEMU 7.0 or newer is needed")
        line(devices.contains("virtio-9p-pci"), "QEMU has virtio-9p-pci (rootfs sharing)", "a QEMU built with virtfs support is needed")
        if qemu {
            let failure = sandboxProbe(h.path)
            line(
                failure == nil, "QEMU runs under its seccomp sandbox (-sandbox)",
                "\(failure ?? ""): a QEMU built with libseccomp is needed")
        }
        print("ok   configuration: \(runtime.configPath ?? "built-in defaults (no \(RuntimeConfig.defaultPath))")")
        func guestFile(_ path: String, _ name: String, _ what: String, _ target: String) -> Bool {
            let exists = FileManager.default.fileExists(atPath: path)
            let looked = path == GuestFiles.find(name) ? " (looked in \(GuestFiles.directories().joined(separator: " and ")))" : ""
            line(exists, "guest \(what) \(path)", "\(target) or make install, or set hypervisor.\(what)" + looked)
            return exists
        }
        let kernel = guestFile(h.kernel, "bzImage", "kernel", "make kernel")
        _ = guestFile(h.initrd, "initrd.img", "initrd", "make initrd")
        if let wanted = VMConfig.Accelerator(rawValue: h.accelerator), kernel, qemu {
            let resolved = AcceleratorProbe.resolve(wanted, kernel: h.kernel, qemu: h.path)
            print(
                resolved == .kvm
                    ? "ok   KVM works: guests run with hardware virtualization"
                    : "ok   KVM unusable here: guests run under TCG emulation (works, much slower; enable nested virtualization for KVM)")
        }
        let vhostVsock = FileManager.default.fileExists(atPath: "/dev/vhost-vsock")
        print(
            "ok   vsock: "
                + (vhostVsock
                    ? "/dev/vhost-vsock present; Vessel uses its own hybrid vsock backend anyway"
                    : "no /dev/vhost-vsock; Vessel's userspace hybrid vsock backend is used"))
        let network = networkProbe()
        line(
            network == nil, "tap devices and tc ingress redirects (a pod's network reaches its VM through them)",
            network.map { "\($0): a kernel with tun, sch_ingress, cls_u32 and act_mirred is needed" } ?? "")
        let cgroup2 =
            FileManager.default.fileExists(atPath: "/sys/fs/cgroup/cgroup.controllers")
            || FileManager.default.fileExists(atPath: "/sys/fs/cgroup/unified/cgroup.controllers")
        let cgroup1 = FileManager.default.fileExists(atPath: "/sys/fs/cgroup/pids")
        line(
            cgroup1 || cgroup2, "host cgroups (" + (cgroup2 ? "v2" : "") + (cgroup1 ? (cgroup2 ? "+v1" : "v1") : "") + ")",
            "mount cgroup2 on /sys/fs/cgroup")
        line(
            FileManager.default.isWritableFile(atPath: "/dev/shm") || FileManager.default.fileExists(atPath: "/proc/self/fd"),
            "memfd shared guest memory", "a kernel with memfd_create is needed")
        return failed ? 1 : 0
    }

    /// `vessel __nettest` in a network namespace of its own (nothing is left when it exits):
    /// nil when it could join two taps the way a pod's interface is joined to QEMU's tap.
    static func networkProbe() -> String? {
        do {
            let spawned = try spawn(
                exeFD: -1, path: "/proc/self/exe", arguments: ["vessel", "__nettest"], environment: [],
                fds: [(2, 2)], namespaces: Namespace.network.cloneFlag)
            let status = Linux.reap(spawned.pid)
            return status == 0 ? nil : "the probe failed (status \(status))"
        } catch {
            return "\(error)"
        }
    }

    /// The probe itself: two taps, an ingress qdisc on the first, a u32 + mirred redirect to the second.
    static func networkTest() -> Int32 {
        do {
            let first = try Linux.openTap("vcheck0"), second = try Linux.openTap("vcheck1")
            defer {
                Linux.close(first)
                Linux.close(second)
            }
            let netlink = try RouteNetlink()
            let links = try netlink.links()
            guard let a = links.first(where: { $0.name == "vcheck0" }), let b = links.first(where: { $0.name == "vcheck1" }) else {
                return 1
            }
            try netlink.setLink(a.index, up: true)
            try netlink.addIngressQdisc(a.index)
            try netlink.redirectIngress(from: a.index, to: b.index)
            return 0
        } catch {
            FileHandle.standardError.write(Data("network probe: \(error)\n".utf8))
            return 1
        }
    }

    /// QEMU started with the sandbox's -sandbox options and no machine, told to quit at once: nil
    /// if it could, else what it said.
    static func sandboxProbe(_ qemu: String) -> String? {
        let process = Process()
        let (input, errors) = (Pipe(), Pipe())
        process.executableURL = URL(fileURLWithPath: qemu)
        process.arguments = [
            "-sandbox", VMConfig.sandboxOptions, "-machine", "none", "-nodefaults", "-display", "none",
            "-monitor", "stdio",
        ]
        process.standardInput = input
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errors
        guard (try? process.run()) != nil else { return "cannot start \(qemu)" }
        // A QEMU that refused its options is gone before it reads: EPIPE, not SIGPIPE.
        signal(SIGPIPE, SIG_IGN)
        try? input.fileHandleForWriting.write(contentsOf: Data("quit\n".utf8))
        try? input.fileHandleForWriting.close()
        let said = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus != 0 else { return nil }
        return said.split(separator: "\n").first.map(String.init) ?? "QEMU exited with status \(process.terminationStatus)"
    }

    static func deviceHelp(_ qemu: String) -> String {
        let process = Process()
        let pipe = Pipe()
        process.executableURL = URL(fileURLWithPath: qemu)
        process.arguments = ["-nodefaults", "-machine", "none", "-device", "help"]
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return "" }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }
}
