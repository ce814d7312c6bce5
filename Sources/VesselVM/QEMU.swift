import Foundation
import VesselLinux

/// How to run one guest with QEMU: kernel, initrd, memory shared through a memfd (the
/// vhost-user-vsock backend maps it), a serial console, and the accelerator that works here.
public struct VMConfig: Sendable {
    public enum Machine: String, Sendable { case q35, microvm }
    public enum Accelerator: String, Sendable { case auto, kvm, tcg }

    public var qemu = "/usr/bin/qemu-system-x86_64"
    public var kernel: String
    public var initrd: String
    public var machine = Machine.q35
    public var vcpus = 1
    public var memoryMiB = 256
    public var accelerator = Accelerator.auto
    public var kernelParameters: [String] = []
    /// The vhost-user-vsock backend's socket, when the guest gets vsock.
    public var vsockSocket: String?
    /// Host directories exported with virtio-9p; the guest mounts them by tag.
    public var shares: [SharedDirectory] = []
    /// A QMP control socket (server, no wait) for status and clean shutdown.
    public var qmpSocket: String?
    /// virtio-net devices on taps the caller opened; QEMU gets the fds as 3, 4, ... in this order.
    public var networks: [NetworkDevice] = []
    public var extraArguments: [String] = []
    /// QEMU's seccomp filter: no set*id, no spawning, no obsolete or scheduling syscalls. A guest
    /// that takes over a device emulator then still cannot run programs or gain privileges.
    public var sandboxed = true
    /// The -sandbox options `sandboxed` means (`vessel check` probes QEMU with them).
    public static let sandboxOptions = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
    /// A virtio-rng device fed from the host's /dev/urandom.
    public var entropy = true
    /// Under TCG, the translated-code cache in MiB (an idle guest fills about 80 MiB of QEMU's
    /// default); nil leaves QEMU's default.
    public var translationCacheMiB: Int?
    /// A cgroup directory QEMU joins before it runs anything, e.g. the sandbox's v1 devices child
    /// that allows QEMU only the devices it opens.
    public var cgroup: String?
    /// A cgroup v2 directory QEMU starts in (CLONE_INTO_CGROUP), e.g. the one whose device program
    /// allows QEMU only the devices it opens.
    public var unifiedCgroup: String?
    /// A virtio-balloon that only reports free pages (never inflates): memory the guest touched at
    /// boot and freed (the initramfs, after switch_root) goes back to the host.
    public var freePageReporting = true

    /// What QEMU, running as root, keeps of its capabilities (with no_new_privs): what the 9p share
    /// needs to act for the guest on root-owned files (security_model=none), nothing more. Without
    /// CAP_SYS_ADMIN the guest cannot set trusted.* xattrs (overlayfs' own) on host files, without
    /// CAP_LINUX_IMMUTABLE it cannot make them immutable, without CAP_MKNOD it makes no device
    /// nodes (QEMU 7.2's 9p removes special files right after making them anyway).
    public static let keptCapabilities: UInt64 = [
        0,  // CAP_CHOWN
        1,  // CAP_DAC_OVERRIDE
        2,  // CAP_DAC_READ_SEARCH
        3,  // CAP_FOWNER
        4,  // CAP_FSETID
        31,  // CAP_SETFCAP (file capabilities; the share is nosuid on the host)
    ].reduce(0) { $0 | (1 << $1) }

    public init(kernel: String, initrd: String) {
        self.kernel = kernel
        self.initrd = initrd
    }

    static let baseKernelParameters = ["console=ttyS0", "panic=-1", "quiet", "reboot=t"]

    /// The command line after the accelerator has been resolved to kvm or tcg.
    public func arguments(accelerator resolved: Accelerator) -> [String] {
        var machineOptions = "\(machine.rawValue),memory-backend=mem"
        if machine == .microvm { machineOptions += ",acpi=on,pit=off,pic=off,rtc=on" }
        let accelerator = resolved == .tcg ? translationCacheMiB.map { "tcg,tb-size=\($0)" } ?? "tcg" : resolved.rawValue
        var args = [
            "-accel", accelerator,
            "-machine", machineOptions,
            "-object", "memory-backend-memfd,id=mem,size=\(memoryMiB)M,share=on",
            "-m", "\(memoryMiB)M",
            "-smp", "\(vcpus)",
            "-nographic", "-nodefaults", "-no-reboot", "-no-user-config",
            "-serial", "stdio",
            "-kernel", kernel,
            "-initrd", initrd,
            "-append", (Self.baseKernelParameters + kernelParameters).joined(separator: " "),
        ]
        if resolved == .kvm { args += ["-cpu", "host"] }
        if let vsockSocket {
            let device = machine == .microvm ? "vhost-user-vsock-device" : "vhost-user-vsock-pci"
            args += ["-chardev", "socket,id=vsock0,path=\(vsockSocket)", "-device", "\(device),chardev=vsock0"]
        }
        let ninePDevice = machine == .microvm ? "virtio-9p-device" : "virtio-9p-pci"
        for (index, share) in shares.enumerated() {
            args += [
                "-fsdev", "local,id=fs\(index),path=\(share.path),security_model=none\(share.readOnly ? ",readonly=on" : "")",
                "-device", "\(ninePDevice),fsdev=fs\(index),mount_tag=\(share.tag)",
            ]
        }
        if let qmpSocket { args += ["-qmp", "unix:\(qmpSocket),server=on,wait=off"] }
        // The guest's entropy: without it the agent's first getrandom() waits seconds for the crng.
        if entropy {
            args += [
                "-object", "rng-random,id=rng0,filename=/dev/urandom",
                "-device", "\(machine == .microvm ? "virtio-rng-device" : "virtio-rng-pci"),rng=rng0",
            ]
        }
        if freePageReporting {
            args += ["-device", "\(machine == .microvm ? "virtio-balloon-device" : "virtio-balloon-pci"),free-page-reporting=on"]
        }
        if sandboxed { args += ["-sandbox", Self.sandboxOptions] }
        let netDevice = machine == .microvm ? "virtio-net-device" : "virtio-net-pci"
        for (index, network) in networks.enumerated() {
            args += [
                "-netdev", "tap,id=net\(index),fd=\(NetworkDevice.firstFD + Int32(index)),vhost=off",
                "-device", "\(netDevice),netdev=net\(index),mac=\(network.mac),host_mtu=\(network.mtu)",
            ]
        }
        return args + extraArguments
    }
}

/// A virtio-net device backed by an open tap: the guest sees `mac` and `mtu` (the interface the
/// caller configured, which the tap is connected to).
public struct NetworkDevice: Sendable, Equatable {
    public static let firstFD: Int32 = 3
    public var tapFD: Int32
    public var mac: String
    public var mtu: UInt32
    public init(tapFD: Int32, mac: String, mtu: UInt32) {
        self.tapFD = tapFD
        self.mac = mac
        self.mtu = mtu
    }
}

/// One host directory given to the guest over virtio-9p (mount with `-t 9p -o trans=virtio TAG`).
public struct SharedDirectory: Sendable, Equatable {
    public var tag: String
    public var path: String
    public var readOnly: Bool
    public init(tag: String, path: String, readOnly: Bool = false) {
        self.tag = tag
        self.path = path
        self.readOnly = readOnly
    }
}

public struct VMError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// KVM only counts as working when a guest kernel really boots with it: on some hosts /dev/kvm
/// opens and QEMU starts, yet the guest never prints a line. The probe boots `kernel` without an
/// initrd (it panics at once) and looks for its first message; the answer is cached per kernel.
public enum AcceleratorProbe {
    public static func resolve(
        _ wanted: VMConfig.Accelerator, kernel: String, qemu: String = "/usr/bin/qemu-system-x86_64",
        cacheDirectory: String = "/run/vessel"
    ) -> VMConfig.Accelerator {
        if wanted != .auto { return wanted }
        guard FileManager.default.isReadableFile(atPath: "/dev/kvm"), FileManager.default.isWritableFile(atPath: "/dev/kvm") else {
            return .tcg
        }
        let attributes = try? FileManager.default.attributesOfItem(atPath: kernel)
        let stamp = "\(kernel) \((attributes?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0)"
        let cache = cacheDirectory + "/kvm-probe"
        if let cached = try? String(contentsOfFile: cache, encoding: .utf8), cached.hasPrefix(stamp + " ") {
            return cached.hasSuffix(" kvm") ? .kvm : .tcg
        }
        let works = bootsWithKVM(kernel: kernel, qemu: qemu)
        try? FileManager.default.createDirectory(atPath: cacheDirectory, withIntermediateDirectories: true)
        try? "\(stamp) \(works ? "kvm" : "tcg")".write(toFile: cache, atomically: true, encoding: .utf8)
        return works ? .kvm : .tcg
    }

    /// The probe guest is killed outright (nothing of it is kept): on a host where KVM opens but
    /// never runs a guest, a probe QEMU was seen to outlive SIGTERM for 100 minutes while the
    /// probe waited for it. Spawned as GuestVM spawns QEMU, and read with a deadline.
    static func bootsWithKVM(kernel: String, qemu: String) -> Bool {
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        guard devNull >= 0 else { return false }
        defer { close(devNull) }
        guard let pipe = try? Linux.pipe() else { return false }
        defer { close(pipe.read) }
        let arguments = [
            qemu, "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "128M", "-nographic", "-nodefaults",
            "-no-reboot", "-serial", "stdio", "-kernel", kernel, "-append", "console=ttyS0 panic=-1",
        ]
        let spawned = try? spawn(
            exeFD: -1, path: qemu, arguments: arguments,
            environment: ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" },
            fds: [(devNull, 0), (pipe.write, 1), (devNull, 2)])
        close(pipe.write)
        guard let spawned else { return false }
        defer {
            kill(spawned.pid, SIGKILL)
            Linux.reap(spawned.pid)
        }
        guard spawned.execErrno == 0 else { return false }
        let marker = Array("Linux version".utf8)
        var seen: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = Date().addingTimeInterval(3)
        while Date() < deadline {
            var p = pollfd(fd: pipe.read, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, Int32(max(1, deadline.timeIntervalSinceNow * 1000))) > 0 else { continue }
            let n = read(pipe.read, &buffer, buffer.count)
            guard n > 0 else { return false }  // QEMU is gone (or its stdout closed) without a line
            // Only a marker's length of the past is needed: the marker may straddle two reads.
            seen = Array(seen.suffix(marker.count - 1)) + buffer[0..<n]
            if seen.indices.contains(where: { seen[$0...].starts(with: marker) }) { return true }
        }
        return false
    }
}
