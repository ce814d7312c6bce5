import Foundation
import VesselLinux
import VesselProtocol
import VesselSpec

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
        /// `rbind` (and the rootfs): the mounts below `source` come along; `bind`: only its own.
        public var recursive = true
        /// Made inside `source` before it turns read-only, as runc makes them before it remounts a
        /// read-only root: the guest cannot create the spec's mount points through a read-only share.
        public var mountPoints: [MountPoint] = []
    }

    public struct MountPoint: Sendable, Equatable, Codable {
        public var path: String
        public var directory: Bool
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

    /// Hooks the runtime spec runs in the container's namespaces, which are in the guest, where the
    /// host's programs are not: Vessel does not run them (and `vessel features` does not list them).
    public var hooksNotRun: [String] {
        [("createContainer", oci.hooks?.createContainer), ("startContainer", oci.hooks?.startContainer)]
            .filter { !($0.1 ?? []).isEmpty }.map { "hooks.\($0.0)" }
    }

    /// A new network namespace that only the hooks can configure (docker's libnetwork does it in
    /// prestart): it must exist, in a process the hooks get the pid of, before they run.
    public var hooksConfigureNetwork: Bool {
        let hooks = oci.hooks
        return networkNamespace == .new && (!(hooks?.prestart ?? []).isEmpty || !(hooks?.createRuntime ?? []).isEmpty)
    }

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
        var mounts = [HostMount(source: rootfs, name: container + "/rootfs", readOnly: oci.root?.readonly ?? false)]
        var mountPoints: [MountPoint] = []
        var spec = oci.grpc()
        spec.root.path = share + "/rootfs"
        spec.hooks = Grpc_Hooks()  // OCI hooks are host programs: the runtime runs them on the host.
        for index in spec.mounts.indices {
            var mount = spec.mounts[index]
            let options = MountOptions(mount.options)
            guard mount.type == "bind" || options.isBind else {
                mountPoints.append(MountPoint(path: mount.destination, directory: true))
                continue
            }
            if mount.destination == "/dev/shm" {
                mountPoints.append(MountPoint(path: mount.destination, directory: true))
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
            guard !mount.source.isEmpty else {
                throw RuntimeError("mounts[\(index)] (\(mount.destination)): a bind mount needs a source")
            }
            let source = mount.source.hasPrefix("/") ? mount.source : bundle + "/" + mount.source
            guard Linux.exists(source) else {
                throw RuntimeError("mounts[\(index)].source \(source): no such file or directory")
            }
            // The source's own name last, as a bind's root reads in mountinfo under runc.
            let base = URL(fileURLWithPath: source).standardizedFileURL.lastPathComponent
            let name = "m\(index)/" + (["", ".", "..", "/"].contains(base) ? "source" : base)
            var host = HostMount(source: source, name: container + "/" + name, readOnly: options.flags.contains(.readOnly))
            // A `bind` type without "bind" or "rbind" in the options is recursive, as before.
            host.recursive = options.flags.contains(.recursive) || !options.isBind
            mounts.append(host)
            mountPoints.append(MountPoint(path: mount.destination, directory: Linux.isDirectory(source)))
            mount.source = share + "/" + name
            spec.mounts[index] = mount
        }
        try Self.checkNamespacePaths(oci.linux?.namespaces ?? [], bundle: bundle)
        // Host namespace paths (a pod's, docker's and podman's network namespaces) mean nothing in
        // the guest: the agent puts a pod's containers into the sandbox's namespaces itself.
        for index in spec.linux.namespaces.indices { spec.linux.namespaces[index].path = "" }
        spec.linux.resources.cpu.clearHostPlacement()
        if mounts[0].readOnly { mounts[0].mountPoints = mountPoints }
        // The guest checks the same rules again; here they cost no boot.
        do { _ = try SpecRules.spec(spec) } catch { throw .invalid("\(bundle)/config.json: \(error.message)") }
        guestSpec = spec
        hostMounts = mounts
    }

    /// A namespace path must exist and be a namespace of its entry's type (the runtime spec makes
    /// anything else an error), even where the guest has no use for it.
    static func checkNamespacePaths(_ namespaces: [OCISpec.Namespace], bundle: String) throws(RuntimeError) {
        for (index, namespace) in namespaces.enumerated() {
            guard let path = namespace.path, !path.isEmpty, let expected = VesselLinux.Namespace(oci: namespace.type) else { continue }
            let field = "\(bundle)/config.json: linux.namespaces[\(index)].path \(path)"
            let found: VesselLinux.Namespace
            do { found = try VesselLinux.Namespace.of(path: path) } catch { throw .invalid("\(field): \(error)") }
            guard found == expected else { throw .invalid("\(field) is a \(found.rawValue) namespace, not \(expected.rawValue)") }
        }
    }
}

extension Grpc_LinuxCPU {
    /// Host CPU and NUMA node numbers mean nothing to a guest with its own few vCPUs (writing them
    /// fails there): the host holds QEMU to them instead (`HostCgroup.limit`).
    public mutating func clearHostPlacement() {
        cpus = ""
        mems = ""
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
/// private so they do not propagate. The guest acts on them as root (QEMU, security_model=none),
/// so on the host they are nosuid, nodev and noexec all the way down, and read-only all the way
/// down where the container's mount is: a guest that ignores its own mount flags gains nothing.
public enum SharedMounts {
    /// The share's own root: a small tmpfs, so what the guest writes beside the containers' mounts
    /// stays small and inert.
    public static func makeRoot(_ directory: String) throws(RuntimeError) {
        do {
            try Linux.mkdirAll(directory, mode: 0o700)
            try Linux.mount(
                "vessel-share", directory, "tmpfs", MountFlags([.noSUID, .noDev, .noExec]).rawValue,
                "mode=0700,size=1m,nr_inodes=16384")
        } catch {
            throw RuntimeError(stage: "mount the share directory \(directory)", error)
        }
    }

    public static func make(_ mounts: [GuestBundle.HostMount], in directory: String) throws(RuntimeError) -> [String] {
        var made: [String] = []
        do {
            try Linux.mkdirAll(directory, mode: 0o700)
            for mount in mounts {
                let target = directory + "/" + mount.name
                if Linux.isDirectory(mount.source) {
                    try Linux.mkdirAll(target, mode: 0o755)
                } else if !Linux.exists(target) {
                    try Linux.mkdirAll(String(target[..<(target.lastIndex(of: "/") ?? target.endIndex)]), mode: 0o755)
                    let fd = try Linux.open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
                    Linux.close(fd)
                }
                let bind: MountFlags = mount.recursive ? [.bind, .recursive] : .bind
                try Linux.mount(mount.source, target, nil, bind.rawValue, nil)
                made.append(target)
                try Linux.mount("", target, nil, MountFlags([.private, .recursive]).rawValue, nil)
                try makeMountPoints(mount.mountPoints, in: target)
                var attributes: MountAttributes = [.noSUID, .noDev, .noExec]
                if mount.readOnly { attributes.insert(.readOnly) }
                try Linux.setMountAttributes(target, attributes, recursive: true)
            }
        } catch {
            release(made)
            throw RuntimeError(stage: "share \(mounts.count) path(s) with the guest in \(directory)", error)
        }
        return made
    }

    /// Inside a container's rootfs, which the container controls: resolved as if it were "/".
    private static func makeMountPoints(_ points: [GuestBundle.MountPoint], in root: String) throws(LinuxError) {
        guard !points.isEmpty else { return }
        let rooted = try RootedPath.open(directory: root)
        defer { Linux.close(rooted.rootFD) }
        for point in points {
            let fd = try rooted.create(try RootedPath.components(point.path, field: "mount point"), directory: point.directory)
            Linux.close(fd)
        }
    }

    /// Lazily unmounts (QEMU may still hold them for a moment); safe to call twice.
    public static func release(_ targets: [String]) {
        for target in targets.reversed() { _ = umount2(target, Int32(MNT_DETACH)) }
    }
}
