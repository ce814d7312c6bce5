import Foundation
import VesselProtocol

/// The OCI runtime spec (config.json) as far as Vessel passes it on. Decoding is strict about
/// types (a negative rlimit or uid is an error naming the field), lenient about unknown keys.
public struct OCISpec: Codable, Sendable {
    public var ociVersion: String
    public var process: Process?
    public var root: Root?
    public var hostname: String?
    public var mounts: [Mount]?
    public var hooks: Hooks?
    public var annotations: [String: String]?
    public var linux: Linux?

    public struct Process: Codable, Sendable {
        public var terminal: Bool?
        public var consoleSize: Box?
        public var user: User
        public var args: [String]?
        public var env: [String]?
        public var cwd: String
        public var capabilities: Capabilities?
        public var rlimits: [Rlimit]?
        public var noNewPrivileges: Bool?
        public var apparmorProfile: String?
        public var oomScoreAdj: Int64?
        public var selinuxLabel: String?
    }
    public struct Box: Codable, Sendable {
        public var height: UInt32
        public var width: UInt32
    }
    public struct User: Codable, Sendable {
        public var uid: UInt32
        public var gid: UInt32
        public var umask: UInt32?
        public var additionalGids: [UInt32]?
        public var username: String?
    }
    public struct Capabilities: Codable, Sendable {
        public var bounding, effective, inheritable, permitted, ambient: [String]?
        public init() {}
    }
    public struct Rlimit: Codable, Sendable {
        public var type: String
        public var hard: UInt64
        public var soft: UInt64
    }
    public struct Root: Codable, Sendable {
        public var path: String
        public var readonly: Bool?
    }
    public struct Mount: Codable, Sendable {
        public var destination: String
        public var source: String?
        public var type: String?
        public var options: [String]?
    }
    public struct Hooks: Codable, Sendable {
        public var prestart, createRuntime, createContainer, startContainer, poststart, poststop: [Hook]?
    }
    public struct Hook: Codable, Sendable {
        public var path: String
        public var args: [String]?
        public var env: [String]?
        public var timeout: Int64?
    }
    public struct Linux: Codable, Sendable {
        public var uidMappings, gidMappings: [IDMapping]?
        public var sysctl: [String: String]?
        public var resources: Resources?
        public var cgroupsPath: String?
        public var namespaces: [Namespace]?
        public var devices: [Device]?
        public var seccomp: Seccomp?
        public var rootfsPropagation: String?
        public var maskedPaths, readonlyPaths: [String]?
        public var mountLabel: String?
    }
    public struct IDMapping: Codable, Sendable {
        public var containerID: UInt32
        public var hostID: UInt32
        public var size: UInt32
    }
    public struct Namespace: Codable, Sendable {
        public var type: String
        public var path: String?
    }
    public struct Device: Codable, Sendable {
        public var type: String
        public var path: String
        public var major, minor: Int64?
        public var fileMode, uid, gid: UInt32?
    }
    public struct Resources: Codable, Sendable {
        public var devices: [DeviceCgroup]?
        public var memory: Memory?
        public var cpu: CPU?
        public var pids: Pids?
        public var hugepageLimits: [Hugepage]?
        public init() {}
    }
    public struct DeviceCgroup: Codable, Sendable {
        public var allow: Bool
        public var type: String?
        public var major, minor: Int64?
        public var access: String?
    }
    public struct Memory: Codable, Sendable {
        public var limit, reservation, swap, kernel, kernelTCP: Int64?
        public var swappiness: UInt64?
        public var disableOOMKiller: Bool?
        public init() {}
    }
    public struct CPU: Codable, Sendable {
        public var shares: UInt64?
        public var quota: Int64?
        public var period: UInt64?
        public var realtimeRuntime: Int64?
        public var realtimePeriod: UInt64?
        public var cpus, mems: String?
        public init() {}
    }
    public struct Pids: Codable, Sendable {
        public var limit: Int64
        public init(limit: Int64) { self.limit = limit }
    }
    public struct Hugepage: Codable, Sendable {
        public var pageSize: String
        public var limit: UInt64
    }
    public struct Seccomp: Codable, Sendable {
        public var defaultAction: String
        public var defaultErrnoRet: UInt32?
        public var architectures, flags: [String]?
        public var syscalls: [Syscall]?
    }
    public struct Syscall: Codable, Sendable {
        public var names: [String]
        public var action: String
        public var errnoRet: UInt32?
        public var args: [SyscallArg]?
    }
    public struct SyscallArg: Codable, Sendable {
        public var index: UInt64
        public var value: UInt64
        public var valueTwo: UInt64?
        public var op: String
    }

    /// Reads and checks `path`; errors name the file and the field (or line and column for bad JSON).
    public static func load(_ path: String) throws(RuntimeError) -> OCISpec {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .invalid("\(path): cannot read the bundle's config.json (no such file?)")
        }
        let spec = try decode(OCISpec.self, data, name: path)
        try spec.validate(path)
        return spec
    }

    /// JSON from a caller (a bundle, an exec's process, resources), with errors that name `name` and the field.
    public static func decode<T: Decodable>(_ type: T.Type, _ data: Data, name: String) throws(RuntimeError) -> T {
        do {
            return try JSONDecoder().decode(T.self, from: data)
        } catch let error as DecodingError {
            throw .invalid("\(name): \(JSONDiagnostics.explain(data) ?? describe(error))")
        } catch {
            throw .invalid("\(name): \(error)")
        }
    }

    /// An exec's process (containerd sends it as JSON in an Any).
    public static func process(fromJSON data: Data, field: String) throws(RuntimeError) -> Grpc_Process {
        let process = try decode(Process.self, data, name: field)
        if process.args?.isEmpty ?? true { throw .invalid("\(field): process.args must not be empty") }
        if !process.cwd.hasPrefix("/") { throw .invalid("\(field): process.cwd \"\(process.cwd)\" is not an absolute path") }
        return process.grpc()
    }

    func validate(_ name: String) throws(RuntimeError) {
        guard let process else { throw .invalid("\(name): process: required field missing") }
        if process.args?.isEmpty ?? true { throw .invalid("\(name): process.args must not be empty") }
        if !process.cwd.hasPrefix("/") { throw .invalid("\(name): process.cwd \"\(process.cwd)\" is not an absolute path") }
        guard let root, !root.path.isEmpty else { throw .invalid("\(name): root.path: required field missing") }
        for (i, mount) in (mounts ?? []).enumerated() where !mount.destination.hasPrefix("/") {
            throw .invalid("\(name): mounts[\(i)].destination \"\(mount.destination)\" is not an absolute path")
        }
        for (i, limit) in (process.rlimits ?? []).enumerated() where limit.soft > limit.hard {
            throw .invalid("\(name): process.rlimits[\(i)] (\(limit.type)): soft \(limit.soft) is above hard \(limit.hard)")
        }
    }
}

extension OCISpec {
    /// The agent's protobuf form of this spec.
    public func grpc() -> Grpc_Spec {
        var out = Grpc_Spec()
        out.version = ociVersion
        if let process { out.process = process.grpc() }
        if let root {
            out.root = .with {
                $0.path = root.path
                $0.readonly = root.readonly ?? false
            }
        }
        out.hostname = hostname ?? ""
        out.mounts = (mounts ?? []).map { m in
            .with {
                $0.destination = m.destination
                $0.source = m.source ?? ""
                $0.type = m.type ?? ""
                $0.options = m.options ?? []
            }
        }
        if let hooks { out.hooks = hooks.grpc() }
        out.annotations = annotations ?? [:]
        if let linux { out.linux = linux.grpc() }
        return out
    }
}

extension OCISpec.Process {
    public func grpc() -> Grpc_Process {
        .with { p in
            p.terminal = terminal ?? false
            if let consoleSize {
                p.consoleSize = .with {
                    $0.height = consoleSize.height
                    $0.width = consoleSize.width
                }
            }
            p.user = .with {
                $0.uid = user.uid
                $0.gid = user.gid
                $0.additionalGids = user.additionalGids ?? []
                $0.username = user.username ?? ""
            }
            p.args = args ?? []
            p.env = env ?? []
            p.cwd = cwd
            if let capabilities {
                p.capabilities = .with {
                    $0.bounding = capabilities.bounding ?? []
                    $0.effective = capabilities.effective ?? []
                    $0.inheritable = capabilities.inheritable ?? []
                    $0.permitted = capabilities.permitted ?? []
                    $0.ambient = capabilities.ambient ?? []
                }
            }
            p.rlimits = (rlimits ?? []).map { r in
                .with {
                    $0.type = r.type
                    $0.hard = r.hard
                    $0.soft = r.soft
                }
            }
            p.noNewPrivileges = noNewPrivileges ?? false
            p.apparmorProfile = apparmorProfile ?? ""
            p.oomscoreAdj = oomScoreAdj ?? 0
            p.selinuxLabel = selinuxLabel ?? ""
        }
    }
}

extension OCISpec.Hooks {
    func grpc() -> Grpc_Hooks {
        func convert(_ hooks: [OCISpec.Hook]?) -> [Grpc_Hook] {
            (hooks ?? []).map { h in
                .with {
                    $0.path = h.path
                    $0.args = h.args ?? []
                    $0.env = h.env ?? []
                    $0.timeout = h.timeout ?? 0
                }
            }
        }
        return .with {
            $0.prestart = convert(prestart)
            $0.createRuntime = convert(createRuntime)
            $0.createContainer = convert(createContainer)
            $0.startContainer = convert(startContainer)
            $0.poststart = convert(poststart)
            $0.poststop = convert(poststop)
        }
    }
}

extension OCISpec.Linux {
    func grpc() -> Grpc_Linux {
        .with { l in
            l.uidmappings = (uidMappings ?? []).map { m in
                .with {
                    $0.containerID = m.containerID
                    $0.hostID = m.hostID
                    $0.size = m.size
                }
            }
            l.gidmappings = (gidMappings ?? []).map { m in
                .with {
                    $0.containerID = m.containerID
                    $0.hostID = m.hostID
                    $0.size = m.size
                }
            }
            l.sysctl = sysctl ?? [:]
            if let resources { l.resources = resources.grpc() }
            l.cgroupsPath = cgroupsPath ?? ""
            l.namespaces = (namespaces ?? []).map { n in
                .with {
                    $0.type = n.type
                    $0.path = n.path ?? ""
                }
            }
            l.devices = (devices ?? []).map { d in
                .with {
                    $0.path = d.path
                    $0.type = d.type
                    $0.major = d.major ?? 0
                    $0.minor = d.minor ?? 0
                    $0.fileMode = d.fileMode ?? 0o666
                    $0.uid = d.uid ?? 0
                    $0.gid = d.gid ?? 0
                }
            }
            if let seccomp { l.seccomp = seccomp.grpc() }
            l.rootfsPropagation = rootfsPropagation ?? ""
            l.maskedPaths = maskedPaths ?? []
            l.readonlyPaths = readonlyPaths ?? []
            l.mountLabel = mountLabel ?? ""
        }
    }
}

extension OCISpec.Resources {
    public func grpc() -> Grpc_LinuxResources {
        .with { r in
            r.devices = (devices ?? []).map { d in
                .with {
                    $0.allow = d.allow
                    $0.type = d.type ?? "a"
                    $0.major = d.major ?? -1
                    $0.minor = d.minor ?? -1
                    $0.access = d.access ?? ""
                }
            }
            if let memory {
                r.memory = .with {
                    $0.limit = memory.limit ?? 0
                    $0.reservation = memory.reservation ?? 0
                    $0.swap = memory.swap ?? 0
                    $0.kernel = memory.kernel ?? 0
                    $0.kernelTcp = memory.kernelTCP ?? 0
                    $0.swappiness = memory.swappiness ?? 0
                    $0.disableOomkiller = memory.disableOOMKiller ?? false
                }
            }
            if let cpu {
                r.cpu = .with {
                    $0.shares = cpu.shares ?? 0
                    $0.quota = cpu.quota ?? 0
                    $0.period = cpu.period ?? 0
                    $0.realtimeRuntime = cpu.realtimeRuntime ?? 0
                    $0.realtimePeriod = cpu.realtimePeriod ?? 0
                    $0.cpus = cpu.cpus ?? ""
                    $0.mems = cpu.mems ?? ""
                }
            }
            if let pids { r.pids = .with { $0.limit = pids.limit } }
            r.hugepageLimits = (hugepageLimits ?? []).map { h in
                .with {
                    $0.pagesize = h.pageSize
                    $0.limit = h.limit
                }
            }
        }
    }
}

extension OCISpec.Seccomp {
    func grpc() -> Grpc_LinuxSeccomp {
        .with { s in
            s.defaultAction = defaultAction
            s.architectures = architectures ?? []
            s.flags = flags ?? []
            s.syscalls = (syscalls ?? []).map { call in
                .with { c in
                    c.names = call.names
                    c.action = call.action
                    if let errno = call.errnoRet { c.errnoret = errno }
                    c.args = (call.args ?? []).map { a in
                        .with {
                            $0.index = a.index
                            $0.value = a.value
                            $0.valueTwo = a.valueTwo ?? 0
                            $0.op = a.op
                        }
                    }
                }
            }
        }
    }
}

/// Foundation's JSONDecoder says only "not valid JSON" both for a syntax error and for a number
/// that does not fit its field (a negative uid or rlimit); this finds the line or the field.
enum JSONDiagnostics {
    /// Fields that are signed in the OCI spec; a negative number anywhere else is out of range.
    static let signedFields: Set<String> = [
        "oomScoreAdj", "major", "minor", "limit", "reservation", "swap", "kernel", "kernelTCP",
        "quota", "realtimeRuntime", "timeout",
    ]

    static func explain(_ data: Data) -> String? {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data)
        } catch {
            let message = ((error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String) ?? "invalid JSON"
            guard let range = message.range(of: #"character \d+"#, options: .regularExpression),
                let offset = Int(message[range].dropFirst("character ".count))
            else { return "invalid JSON: \(message)" }
            let prefix = data.prefix(offset)
            let line = prefix.filter { $0 == UInt8(ascii: "\n") }.count + 1
            let column = offset - (prefix.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? 0) + 1
            return "invalid JSON at line \(line), column \(column): \(message)"
        }
        return negativeNumber(in: object, path: "")
    }

    private static func negativeNumber(in value: Any, path: String) -> String? {
        if let dictionary = value as? [String: Any] {
            for key in dictionary.keys.sorted() {
                if let found = negativeNumber(in: dictionary[key]!, path: path.isEmpty ? key : path + "." + key) { return found }
            }
        } else if let array = value as? [Any] {
            for (index, element) in array.enumerated() {
                if let found = negativeNumber(in: element, path: path + "[\(index)]") { return found }
            }
        } else if let number = value as? NSNumber, !(value is Bool), number.doubleValue < 0 {
            let field = path.split(separator: ".").last.map { String($0.prefix { $0 != "[" }) } ?? path
            if !signedFields.contains(field) { return "\(path): \(number) is out of range (must not be negative)" }
        }
        return nil
    }
}
