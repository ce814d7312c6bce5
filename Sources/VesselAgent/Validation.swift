import VesselLinux
import VesselProtocol
#if canImport(Glibc)
import Glibc
#endif

/// Checks shared by the RPCs: each failure names the request field that is wrong.
enum Validation {
    static func containerID(_ id: String) throws {
        try identifier(id, field: "container_id")
    }

    static func execID(_ id: String) throws {
        try identifier(id, field: "exec_id")
    }

    /// Ids become path components (cgroups, /run): a safe alphabet, like runc's.
    private static func identifier(_ id: String, field: String) throws {
        let allowed = id.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == 0x2d || c == 0x5f || c == 0x2e
        }
        guard !id.isEmpty, id.utf8.count <= 128, allowed, id != ".", id != ".." else {
            throw AgentError.invalidArgument("\(field) \"\(id)\" is invalid: use 1-128 of [A-Za-z0-9_.-]")
        }
    }

    /// Returns the namespaces to create. A mount namespace is always created: pivot_root in the
    /// agent's own namespace would take the agent's root away.
    static func spec(_ spec: Grpc_Spec) throws -> Set<Namespace> {
        guard spec.hasProcess else { throw AgentError.invalidArgument("OCI.process is missing") }
        try process(spec.process, field: "OCI.process")
        let root = spec.root.path
        guard root.hasPrefix("/") else {
            throw AgentError.invalidArgument("OCI.root.path \"\(root)\" must be an absolute path")
        }
        guard Linux.isDirectory(root) else {
            throw AgentError.notFound("OCI.root.path \(root): no such directory")
        }
        var namespaces: Set<Namespace> = [.mount]
        for (index, entry) in spec.linux.namespaces.enumerated() {
            guard let namespace = Namespace(oci: entry.type) else {
                throw AgentError.invalidArgument("OCI.linux.namespaces[\(index)].type \"\(entry.type)\" is not a namespace type")
            }
            if namespace == .user {
                throw AgentError.invalidArgument("OCI.linux.namespaces[\(index)]: user namespaces are not supported")
            }
            // A path means "join the sandbox's": inside the VM the containers already share it.
            if entry.path.isEmpty { namespaces.insert(namespace) }
        }
        for (index, mount) in spec.mounts.enumerated() {
            guard mount.destination.hasPrefix("/") else {
                throw AgentError.invalidArgument("OCI.mounts[\(index)].destination \"\(mount.destination)\" must be absolute")
            }
            if mount.destination.split(separator: "/").contains("..") {
                throw AgentError.invalidArgument("OCI.mounts[\(index)].destination \"\(mount.destination)\" escapes the rootfs with '..'")
            }
        }
        try Sysctl.validate(spec.linux.sysctl, namespaces: namespaces)
        if spec.linux.hasSeccomp { try SeccompSpec.validate(spec.linux.seccomp) }
        for (index, device) in spec.linux.devices.enumerated() {
            let field = "OCI.linux.devices[\(index)]"
            guard ["c", "b", "u", "p"].contains(device.type) else {
                throw AgentError.invalidArgument("\(field).type \"\(device.type)\" is not one of c, b, u, p")
            }
            guard device.path.hasPrefix("/"), !device.path.split(separator: "/").contains("..") else {
                throw AgentError.invalidArgument("\(field).path \"\(device.path)\" must be absolute and stay in the rootfs")
            }
        }
        for (index, rule) in spec.linux.resources.devices.enumerated() where !rule.access.lowercased().allSatisfy({ "rwm".contains($0) }) {
            throw AgentError.invalidArgument("OCI.linux.resources.devices[\(index)].access \"\(rule.access)\" may only hold r, w and m")
        }
        for (index, path) in (spec.linux.maskedPaths + spec.linux.readonlyPaths).enumerated() where !path.hasPrefix("/") {
            throw AgentError.invalidArgument("OCI.linux masked/readonly path #\(index) \"\(path)\" must be absolute")
        }
        if !["", "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable"].contains(spec.linux.rootfsPropagation) {
            throw AgentError.invalidArgument("OCI.linux.rootfsPropagation \"\(spec.linux.rootfsPropagation)\" is not a propagation type")
        }
        return namespaces
    }

    /// CreateSandbox/CreateContainer `storages`: a known driver, what it needs, and a clean mount
    /// point strictly below `base` (/run in the guest), so no storage can cover the agent's files.
    static func storages(_ storages: [Grpc_Storage], base: String) throws {
        for (index, storage) in storages.enumerated() {
            let field = "storages[\(index)]"
            guard StorageTable.drivers.contains(storage.driver) else {
                throw AgentError.invalidArgument("\(field).driver \"\(storage.driver)\" is not supported (\(StorageTable.drivers.joined(separator: ", ")))")
            }
            let mountPoint = storage.mountPoint
            guard mountPoint.hasPrefix("/") else {
                throw AgentError.invalidArgument("\(field).mount_point \"\(mountPoint)\" must be an absolute path")
            }
            let parts = mountPoint.split(separator: "/")
            guard !parts.contains("..") && !parts.contains(".") else {
                throw AgentError.invalidArgument("\(field).mount_point \"\(mountPoint)\" must not contain '.' or '..'")
            }
            let baseParts = base.split(separator: "/")
            guard parts.count > baseParts.count, Array(parts.prefix(baseParts.count)) == baseParts else {
                throw AgentError.invalidArgument("\(field).mount_point \"\(mountPoint)\" must be below \(base)")
            }
            switch storage.driver {
            case "9p":
                guard !storage.source.isEmpty else { throw AgentError.invalidArgument("\(field).source (the 9p mount tag) is empty") }
                guard storage.fstype.isEmpty || storage.fstype == "9p" else {
                    throw AgentError.invalidArgument("\(field).fstype \"\(storage.fstype)\" does not match driver 9p")
                }
            case "bind":
                guard storage.source.hasPrefix("/"), !storage.source.split(separator: "/").contains("..") else {
                    throw AgentError.invalidArgument("\(field).source \"\(storage.source)\" must be an absolute path without '..'")
                }
                guard Linux.exists(storage.source) else { throw AgentError.notFound("\(field).source \(storage.source): no such file or directory") }
            case "ephemeral":
                guard storage.fstype.isEmpty || storage.fstype == "tmpfs" else {
                    throw AgentError.invalidArgument("\(field).fstype \"\(storage.fstype)\" does not match driver ephemeral (tmpfs)")
                }
            default:
                if let mode = storage.options.first(where: { $0.hasPrefix("mode=") }), mode_t(mode.dropFirst(5), radix: 8) == nil {
                    throw AgentError.invalidArgument("\(field).options \"\(mode)\" is not an octal mode")
                }
            }
        }
    }

    static func process(_ process: Grpc_Process, field: String) throws {
        guard let first = process.args.first, !first.isEmpty else {
            throw AgentError.invalidArgument("\(field).args is empty")
        }
        if !process.cwd.isEmpty && !process.cwd.hasPrefix("/") {
            throw AgentError.invalidArgument("\(field).cwd \"\(process.cwd)\" must be absolute")
        }
        _ = try Capabilities.sets(process, field: field)
        try Rlimits.validate(process, field: field)
    }
}
