import Foundation
import VesselLinux
import VesselProtocol

/// An OCI bundle turned into what the guest needs: the spec with host paths replaced by paths in
/// the sandbox's 9p share, and the host bind mounts that populate the share.
public struct GuestBundle: Sendable {
    /// Where the guest mounts the share, and the 9p tag it mounts.
    public static let guestShare = "/run/vessel/shared"
    public static let shareTag = "vessel"

    public struct HostMount: Sendable, Equatable {
        public var source: String
        /// Relative to the share directory.
        public var name: String
        public var readOnly: Bool
    }

    public let oci: OCISpec
    public let bundle: String
    public let rootfs: String
    public let guestSpec: Grpc_Spec
    public let hostMounts: [HostMount]
    public var terminal: Bool { oci.process?.terminal ?? false }

    /// Reads `bundle`/config.json and checks everything the guest cannot check for us.
    public init(bundle path: String) throws(RuntimeError) {
        let bundle = URL(fileURLWithPath: path).standardizedFileURL.path
        guard Linux.isDirectory(bundle) else { throw RuntimeError("bundle \(bundle): no such directory") }
        let oci = try OCISpec.load(bundle + "/config.json")
        let rootPath = oci.root!.path
        let rootfs = rootPath.hasPrefix("/") ? rootPath : bundle + "/" + rootPath
        guard Linux.isDirectory(rootfs) else { throw RuntimeError("root.path \(rootfs): no such directory") }
        self.oci = oci
        self.bundle = bundle
        self.rootfs = rootfs
        var mounts = [HostMount(source: rootfs, name: "rootfs", readOnly: false)]
        var spec = oci.grpc()
        spec.root.path = Self.guestShare + "/rootfs"
        spec.hooks = Grpc_Hooks()  // OCI hooks are host programs: the runtime runs them on the host.
        for index in spec.mounts.indices {
            var mount = spec.mounts[index]
            let isBind = mount.type == "bind" || mount.options.contains("bind") || mount.options.contains("rbind")
            guard isBind else { continue }
            if mount.destination == "/dev/shm" {
                // Shared memory must stay inside the guest: a 9p file cannot back it.
                mount = .with { $0.destination = "/dev/shm"; $0.type = "tmpfs"; $0.source = "shm"
                    $0.options = ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] }
                spec.mounts[index] = mount
                continue
            }
            let source = mount.source.hasPrefix("/") ? mount.source : bundle + "/" + mount.source
            guard Linux.exists(source) else {
                throw RuntimeError("mounts[\(index)].source \(source): no such file or directory")
            }
            let name = "m\(index)"
            mounts.append(HostMount(source: source, name: name, readOnly: mount.options.contains("ro")))
            mount.source = Self.guestShare + "/" + name
            spec.mounts[index] = mount
        }
        // Host namespace paths (docker's and podman's network namespaces) mean nothing in the guest.
        for index in spec.linux.namespaces.indices { spec.linux.namespaces[index].path = "" }
        guestSpec = spec
        hostMounts = mounts
    }
}

/// The host side of the 9p share: bind mounts of the rootfs and volumes into the share directory,
/// private so they do not propagate, read-only where the container's mount is.
public enum SharedMounts {
    public static func make(_ mounts: [GuestBundle.HostMount], in directory: String) throws(RuntimeError) -> [String] {
        var made: [String] = []
        do {
            try Linux.mkdirAll(directory, mode: 0o700)
            for mount in mounts {
                let target = directory + "/" + mount.name
                if Linux.isDirectory(mount.source) {
                    try Linux.mkdirAll(target, mode: 0o755)
                } else if !Linux.exists(target) {
                    let fd = try Linux.open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
                    Linux.close(fd)
                }
                try Linux.mount(mount.source, target, nil, MountFlags([.bind, .recursive]).rawValue, nil)
                made.append(target)
                try Linux.mount("", target, nil, MountFlags([.private, .recursive]).rawValue, nil)
                if mount.readOnly {
                    try Linux.mount("", target, nil, MountFlags([.bind, .remount, .readOnly]).rawValue, nil)
                }
            }
        } catch {
            release(made)
            throw RuntimeError(stage: "share \(mounts.count) path(s) with the guest in \(directory)", error)
        }
        return made
    }

    /// Lazily unmounts (QEMU may still hold them for a moment); safe to call twice.
    public static func release(_ targets: [String]) {
        for target in targets.reversed() { _ = umount2(target, Int32(MNT_DETACH)) }
    }
}
