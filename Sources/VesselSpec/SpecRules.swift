import VesselLinux
import VesselProtocol

/// The one error of a spec check: a line naming the field that is wrong and why.
public struct SpecError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
    public init(_ message: String) { self.message = message }
}

/// What makes a container spec acceptable, checked by the agent for every request and by the host
/// before it boots a VM for one: the same rules in one place, so a typo in a capability name costs
/// a line of output, not a guest boot.
public enum SpecRules {
    /// Ids become path components (cgroups, /run): a safe alphabet, like runc's.
    public static func identifier(_ id: String, field: String) throws(SpecError) {
        let allowed = id.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == 0x2d || c == 0x5f || c == 0x2e
        }
        guard !id.isEmpty, id.utf8.count <= 128, allowed, id != ".", id != ".." else {
            throw SpecError("\(field) \"\(id)\" is invalid: use 1-128 of [A-Za-z0-9_.-]")
        }
    }

    /// Returns the namespaces to create. A mount namespace is always created: pivot_root in the
    /// agent's own namespace would take the agent's root away. Whether the root exists is the
    /// guest's to check (only there does the path mean something).
    public static func spec(_ spec: Grpc_Spec) throws(SpecError) -> Set<Namespace> {
        guard spec.hasProcess else { throw SpecError("OCI.process is missing") }
        try process(spec.process, field: "OCI.process")
        let root = spec.root.path
        guard root.hasPrefix("/") else {
            throw SpecError("OCI.root.path \"\(root)\" must be an absolute path")
        }
        var namespaces: Set<Namespace> = [.mount]
        for (index, entry) in spec.linux.namespaces.enumerated() {
            guard let namespace = Namespace(oci: entry.type) else {
                throw SpecError("OCI.linux.namespaces[\(index)].type \"\(entry.type)\" is not a namespace type")
            }
            // A path means "join the sandbox's": inside the VM the containers already share it. A
            // user namespace is always the container's own (the sandbox has none to join).
            if entry.path.isEmpty || namespace == .user { namespaces.insert(namespace) }
        }
        try idMappings(spec.linux, userNamespace: namespaces.contains(.user))
        if namespaces.contains(.user) { try userIsMapped(spec.process.user, spec.linux) }
        for (index, mount) in spec.mounts.enumerated() {
            guard mount.destination.hasPrefix("/") else {
                throw SpecError("OCI.mounts[\(index)].destination \"\(mount.destination)\" must be absolute")
            }
            if mount.destination.split(separator: "/").contains("..") {
                throw SpecError("OCI.mounts[\(index)].destination \"\(mount.destination)\" escapes the rootfs with '..'")
            }
        }
        try Sysctl.validate(spec.linux.sysctl, namespaces: namespaces)
        if spec.linux.hasSeccomp { try SeccompSpec.validate(spec.linux.seccomp) }
        for (index, device) in spec.linux.devices.enumerated() {
            let field = "OCI.linux.devices[\(index)]"
            guard ["c", "b", "u", "p"].contains(device.type) else {
                throw SpecError("\(field).type \"\(device.type)\" is not one of c, b, u, p")
            }
            guard device.path.hasPrefix("/"), !device.path.split(separator: "/").contains("..") else {
                throw SpecError("\(field).path \"\(device.path)\" must be absolute and stay in the rootfs")
            }
        }
        for (index, rule) in spec.linux.resources.devices.enumerated() where !rule.access.lowercased().allSatisfy({ "rwm".contains($0) }) {
            throw SpecError("OCI.linux.resources.devices[\(index)].access \"\(rule.access)\" may only hold r, w and m")
        }
        for (index, path) in (spec.linux.maskedPaths + spec.linux.readonlyPaths).enumerated() where !path.hasPrefix("/") {
            throw SpecError("OCI.linux masked/readonly path #\(index) \"\(path)\" must be absolute")
        }
        if !["", "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable"].contains(
            spec.linux.rootfsPropagation)
        {
            throw SpecError("OCI.linux.rootfsPropagation \"\(spec.linux.rootfsPropagation)\" is not a propagation type")
        }
        return namespaces
    }

    /// A user namespace needs both maps (the guest has no subordinate ids to pick from), and maps
    /// need a user namespace. What the kernel would refuse with a bare EINVAL is named here: ranges
    /// past 32 bits or overlapping (inside or outside), more than 340 lines or a page of text.
    static func idMappings(_ linux: Grpc_Linux, userNamespace: Bool) throws(SpecError) {
        let maps = [("uidMappings", linux.uidmappings), ("gidMappings", linux.gidmappings)]
        guard userNamespace else {
            if let (name, _) = maps.first(where: { !$0.1.isEmpty }) {
                throw SpecError("OCI.linux.\(name) need a user namespace in OCI.linux.namespaces")
            }
            return
        }
        for (name, map) in maps {
            let field = "OCI.linux.\(name)"
            guard !map.isEmpty else { throw SpecError("\(field): a user namespace needs them") }
            guard map.count <= 340, mapText(map).utf8.count < 4096 else {
                throw SpecError("\(field): \(map.count) ranges, more than the kernel takes (340 lines, 4 KiB)")
            }
            for (index, range) in map.enumerated() {
                let end = UInt64(range.containerID) + UInt64(range.size), hostEnd = UInt64(range.hostID) + UInt64(range.size)
                guard range.size > 0, end <= UInt64(UInt32.max), hostEnd <= UInt64(UInt32.max) else {
                    throw SpecError(
                        "\(field)[\(index)]: size \(range.size) from \(range.containerID)/\(range.hostID) is empty or past 2^32-1")
                }
                for (other, earlier) in map.prefix(index).enumerated() {
                    let overlaps = { (a: UInt32, b: UInt32) in
                        UInt64(a) < UInt64(b) + UInt64(earlier.size) && UInt64(b) < UInt64(a) + UInt64(range.size)
                    }
                    if overlaps(range.containerID, earlier.containerID) || overlaps(range.hostID, earlier.hostID) {
                        throw SpecError("\(field)[\(index)] overlaps \(field)[\(other)]")
                    }
                }
            }
        }
    }

    /// A map as /proc/PID/uid_map and gid_map take it (in one write), and as the size rule counts it.
    public static func mapText(_ map: [Grpc_LinuxIDMapping]) -> String {
        map.map { "\($0.containerID) \($0.hostID) \($0.size)\n" }.joined()
    }

    /// The process's ids must exist in the namespace, or setuid/setgid fail with EINVAL at start.
    static func userIsMapped(_ user: Grpc_User, _ linux: Grpc_Linux) throws(SpecError) {
        let mapped = { (id: UInt32, map: [Grpc_LinuxIDMapping]) in
            map.contains { UInt64(id) >= UInt64($0.containerID) && UInt64(id) < UInt64($0.containerID) + UInt64($0.size) }
        }
        guard mapped(user.uid, linux.uidmappings) else {
            throw SpecError("OCI.process.user.uid \(user.uid) is not in OCI.linux.uidMappings")
        }
        for gid in [user.gid] + user.additionalGids where !mapped(gid, linux.gidmappings) {
            throw SpecError("OCI.process.user gid \(gid) is not in OCI.linux.gidMappings")
        }
    }

    public static func process(_ process: Grpc_Process, field: String) throws(SpecError) {
        guard let first = process.args.first, !first.isEmpty else {
            throw SpecError("\(field).args is empty")
        }
        if !process.cwd.isEmpty && !process.cwd.hasPrefix("/") {
            throw SpecError("\(field).cwd \"\(process.cwd)\" must be absolute")
        }
        _ = try Capabilities.sets(process, field: field)
        try Rlimits.validate(process, field: field)
    }
}
