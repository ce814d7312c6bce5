import Foundation
import VesselLinux
import VesselProtocol

/// An OCI bundle turned into what the guest needs: the spec with host paths replaced by paths in
/// the sandbox's 9p share (each container under a directory of its own there), and the host bind
/// mounts that populate the share.
public struct GuestBundle: Sendable {
    /// Where the guest mounts the share, and the 9p tag it mounts.
    public static let guestShare = "/run/vessel/shared"
    public static let shareTag = "vessel"
    /// The pod's /dev/shm: one tmpfs per sandbox (an ephemeral storage) that every container binds.
    public static let sandboxShm = "/run/vessel/sandbox-shm"

    public struct HostMount: Sendable, Equatable, Codable {
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

    /// The spec's network namespace on the host: the pod's network lives there.
    public enum NetworkNamespace: Sendable, Equatable {
        /// None in the spec: the host's network, which a VM cannot share.
        case host
        /// A new one, which the OCI hooks (docker's libnetwork) configure.
        case new
        /// One the caller made and configured (CNI, netavark).
        case path(String)
    }

    public var networkNamespace: NetworkNamespace {
        guard let namespace = oci.linux?.namespaces?.first(where: { $0.type == "network" }) else { return .host }
        guard let path = namespace.path, !path.isEmpty else { return .new }
        return .path(path)
    }
    public var pod: PodRole { PodRole(annotations: oci.annotations ?? [:]) }

    /// Reads `bundle`/config.json and checks everything the guest cannot check for us. `container`
    /// names the container's directory in the share.
    public init(bundle path: String, container: String) throws(RuntimeError) {
        let bundle = URL(fileURLWithPath: path).standardizedFileURL.path
        guard Linux.isDirectory(bundle) else { throw RuntimeError("bundle \(bundle): no such directory") }
        let oci = try OCISpec.load(bundle + "/config.json")
        let rootPath = oci.root!.path
        let rootfs = rootPath.hasPrefix("/") ? rootPath : bundle + "/" + rootPath
        guard Linux.isDirectory(rootfs) else { throw RuntimeError("root.path \(rootfs): no such directory") }
        self.oci = oci
        self.bundle = bundle
        self.rootfs = rootfs
        let share = Self.guestShare + "/" + container
        var mounts = [HostMount(source: rootfs, name: container + "/rootfs", readOnly: false)]
        var spec = oci.grpc()
        spec.root.path = share + "/rootfs"
        spec.hooks = Grpc_Hooks()  // OCI hooks are host programs: the runtime runs them on the host.
        for index in spec.mounts.indices {
            var mount = spec.mounts[index]
            let isBind = mount.type == "bind" || mount.options.contains("bind") || mount.options.contains("rbind")
            guard isBind else { continue }
            if mount.destination == "/dev/shm" {
                // Shared memory must stay inside the guest (a 9p file cannot back it): the pod's tmpfs.
                mount = .with {
                    $0.destination = "/dev/shm"
                    $0.type = "bind"
                    $0.source = Self.sandboxShm
                    $0.options = ["rbind", "nosuid", "noexec", "nodev"]
                }
                spec.mounts[index] = mount
                continue
            }
            let source = mount.source.hasPrefix("/") ? mount.source : bundle + "/" + mount.source
            guard Linux.exists(source) else {
                throw RuntimeError("mounts[\(index)].source \(source): no such file or directory")
            }
            let name = "m\(index)"
            mounts.append(HostMount(source: source, name: container + "/" + name, readOnly: mount.options.contains("ro")))
            mount.source = share + "/" + name
            spec.mounts[index] = mount
        }
        // Host namespace paths (a pod's, docker's and podman's network namespaces) mean nothing in
        // the guest: the agent puts a pod's containers into the sandbox's namespaces itself.
        for index in spec.linux.namespaces.indices { spec.linux.namespaces[index].path = "" }
        guestSpec = spec
        hostMounts = mounts
    }
}

/// Where a container stands in a pod, from the annotations containerd's CRI plugin (and CRI-O,
/// for the OCI CLI) put on its spec: the pod's sandbox (pause) container creates the VM, the
/// pod's other containers join it, and a container without them is a sandbox of its own.
public enum PodRole: Sendable, Equatable {
    case sandbox
    case member(sandbox: String)

    public static let criType = "io.kubernetes.cri.container-type"
    public static let criSandbox = "io.kubernetes.cri.sandbox-id"
    public static let crioType = "io.kubernetes.cri-o.ContainerType"
    public static let crioSandbox = "io.kubernetes.cri-o.SandboxID"

    public init(annotations: [String: String]) {
        for (type, sandbox) in [(Self.criType, Self.criSandbox), (Self.crioType, Self.crioSandbox)]
        where annotations[type] == "container" {
            if let id = annotations[sandbox], !id.isEmpty {
                self = .member(sandbox: id)
                return
            }
        }
        self = .sandbox
    }

    /// The sandbox a container with this role lives in.
    public func sandboxID(container: String) -> String {
        switch self {
        case .sandbox: container
        case .member(let sandbox): sandbox
        }
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
