import VesselLinux
import VesselProtocol
import VesselSpec

#if canImport(Glibc)
    import Glibc
#endif

/// Checks shared by the RPCs: each failure names the request field that is wrong. The spec's rules
/// are `VesselSpec.SpecRules` (the host checks them too); what only the guest can know is here.
enum Validation {
    static func containerID(_ id: String) throws {
        try SpecRules.identifier(id, field: "container_id")
    }

    static func execID(_ id: String) throws {
        try SpecRules.identifier(id, field: "exec_id")
    }

    static func spec(_ spec: Grpc_Spec) throws -> Set<Namespace> {
        let namespaces = try SpecRules.spec(spec)
        guard Linux.isDirectory(spec.root.path) else {
            throw AgentError.notFound("OCI.root.path \(spec.root.path): no such directory")
        }
        return namespaces
    }

    /// CreateSandbox/CreateContainer `storages`: a known driver, what it needs, and a clean mount
    /// point strictly below `base` (/run in the guest), so no storage can cover the agent's files.
    static func storages(_ storages: [Grpc_Storage], base: String) throws {
        for (index, storage) in storages.enumerated() {
            let field = "storages[\(index)]"
            guard StorageTable.drivers.contains(storage.driver) else {
                throw AgentError.invalidArgument(
                    "\(field).driver \"\(storage.driver)\" is not supported (\(StorageTable.drivers.joined(separator: ", ")))")
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
                guard Linux.exists(storage.source) else {
                    throw AgentError.notFound("\(field).source \(storage.source): no such file or directory")
                }
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
        try SpecRules.process(process, field: field)
    }
}
