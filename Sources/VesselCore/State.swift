import Foundation
import VesselLinux

/// A container's or exec's status, with the only rules for changing it. The sandbox owner applies
/// events; every other process only reads the result (state.json, Task.State).
public struct Lifecycle: Codable, Sendable, Equatable {
    public enum Status: String, Codable, Sendable { case creating, created, running, paused, stopped }

    public enum Event: Sendable {
        case created, started, paused, resumed
        case exited(status: Int32, at: Date)
    }

    public private(set) var status: Status = .creating
    public private(set) var exitStatus: Int32?
    public private(set) var exitedAt: Date?

    public init() {}

    /// Throws runc's wording for a transition that does not apply (the CLI prints it as is).
    public mutating func apply(_ event: Event) throws(RuntimeError) {
        switch (event, status) {
        case (.created, .creating): status = .created
        case (.started, .created): status = .running
        case (.started, .running), (.started, .paused): throw .precondition("cannot start an already running container")
        case (.started, .stopped): throw .precondition("cannot start a container that has stopped")
        case (.started, .creating): throw .precondition("cannot start a container that is still being created")
        case (.paused, .running): status = .paused
        case (.paused, _): throw .precondition("container not running")
        case (.resumed, .paused): status = .running
        case (.resumed, _): throw .precondition("container not paused")
        case (.exited(let code, let time), let current) where current != .stopped:
            status = .stopped
            exitStatus = code
            exitedAt = time
        case (.exited, _): break
        case (.created, _): throw .precondition("container already created")
        }
    }

    public var isStopped: Bool { status == .stopped }
}

/// A container's record, `<root>/<id>/state.json`, written (atomically) by its sandbox owner only.
public struct ContainerRecord: Codable, Sendable {
    public var id: String
    public var sandbox: String
    public var bundle: String
    public var rootfs: String
    public var lifecycle = Lifecycle()
    /// What callers wait on: the process monitor of the OCI CLI, or QEMU for containerd.
    public var pid: Int32 = 0
    public var created: String
    public var annotations: [String: String] = [:]
    public var terminal = false
    /// Why the sandbox died without the container exiting (QEMU or the vsock backend failed).
    public var failure: String?
    public var ownerPid: Int32 = 0
    public var ownerStartTime: UInt64 = 0

    public init(id: String, sandbox: String, bundle: String, rootfs: String, created: String = rfc3339Now()) {
        self.id = id
        self.sandbox = sandbox
        self.bundle = bundle
        self.rootfs = rootfs
        self.created = created
    }

    /// An owner that is gone means a stopped container, whatever the file last said.
    public var status: Lifecycle.Status {
        if lifecycle.isStopped || lifecycle.status == .creating { return lifecycle.status }
        return ProcessIdentity.isAlive(pid: ownerPid, startTime: ownerStartTime) ? lifecycle.status : .stopped
    }
}

/// What a dead owner leaves for `delete` to clean: `<sandbox directory>/sandbox.json`.
public struct SandboxRecord: Codable, Sendable {
    public var id: String
    public var ownerPid: Int32 = 0
    public var ownerStartTime: UInt64 = 0
    public var qemuPid: Int32 = 0
    /// Host mounts the owner made (shares into the 9p directory, containerd's rootfs mounts), in order.
    public var mounts: [String] = []
    public var hostCgroups: [String] = []

    public init(id: String) { self.id = id }

    public var ownerAlive: Bool { ProcessIdentity.isAlive(pid: ownerPid, startTime: ownerStartTime) }
}

/// A sandbox's directory, short enough for sun_path whatever the root and id (docker's root plus a
/// 64-character id overflow its 108 bytes): sockets, the 9p share, the console log, the record.
public struct SandboxPaths: Sendable, Equatable {
    public let root: String
    public let id: String
    public let directory: String

    public init(root: String, id: String) {
        self.root = root
        self.id = id
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in (root + "/" + id).utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        directory = "/run/vessel-sandboxes/" + String(hash, radix: 16)
    }

    public var ownerSocket: String { directory + "/owner.sock" }
    public var vhostUserSocket: String { directory + "/vhost.sock" }
    public var hybridSocket: String { directory + "/vsock.sock" }
    public var qmpSocket: String { directory + "/qmp.sock" }
    public var consoleLog: String { directory + "/console.log" }
    public var ownerLog: String { directory + "/owner.log" }
    public var shared: String { directory + "/shared" }
    public var recordFile: String { directory + "/sandbox.json" }
}

/// Container records under a root directory (`--root`, or one per containerd namespace).
public struct StateStore: Sendable {
    public let root: String

    public init(root: String) { self.root = root }

    public static func validate(id: String) throws(RuntimeError) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")
        if id.isEmpty || id == "." || id == ".." || id.count > 1024 || !id.allSatisfy(allowed.contains) {
            throw RuntimeError("invalid container id \"\(id)\": use letters, digits, '_', '+', '-' and '.'")
        }
    }

    public func directory(_ id: String) -> String { root + "/" + id }
    func stateFile(_ id: String) -> String { directory(id) + "/state.json" }
    public func sandboxPaths(_ sandbox: String) -> SandboxPaths { SandboxPaths(root: root, id: sandbox) }

    /// Claims the id: its directory, made exclusively (runc's "container with id exists").
    public func claim(_ id: String) throws(RuntimeError) {
        try Self.validate(id: id)
        do { try Linux.mkdirAll(root, mode: 0o711) } catch { throw RuntimeError(stage: "create state root \(root)", error) }
        if mkdir(directory(id), 0o711) != 0 {
            if errno == EEXIST { throw RuntimeError("container with id exists: \(id)", kind: .alreadyExists) }
            throw RuntimeError(stage: "create \(directory(id))", LinuxError(stage: "mkdir"))
        }
    }

    public func load(_ id: String) throws(RuntimeError) -> ContainerRecord {
        try Self.validate(id: id)
        let file = stateFile(id)
        guard let data = FileManager.default.contents(atPath: file) else {
            throw .notFound("container \"\(id)\" does not exist")
        }
        guard let record = try? JSONDecoder().decode(ContainerRecord.self, from: data) else {
            throw RuntimeError("container \"\(id)\": unreadable state file \(file)")
        }
        return record
    }

    public func write(_ record: ContainerRecord) throws(RuntimeError) {
        try writeJSON(record, to: stateFile(record.id), what: "state of \(record.id)")
    }

    public func list() -> [ContainerRecord] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return names.sorted().compactMap { try? load($0) }
    }

    public func remove(_ id: String) {
        Linux.removeTree(directory(id))
    }

    public func loadSandbox(_ sandbox: String) -> SandboxRecord? {
        guard let data = FileManager.default.contents(atPath: sandboxPaths(sandbox).recordFile) else { return nil }
        return try? JSONDecoder().decode(SandboxRecord.self, from: data)
    }

    public func write(_ record: SandboxRecord) throws(RuntimeError) {
        try writeJSON(record, to: sandboxPaths(record.id).recordFile, what: "sandbox record of \(record.id)")
    }
}

/// Written by rename, so a reader sees the old or the new file, never half of one.
func writeJSON(_ value: some Encodable, to path: String, what: String) throws(RuntimeError) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    do {
        let data = try encoder.encode(value)
        let temporary = path + ".tmp"
        try data.write(to: URL(fileURLWithPath: temporary))
        guard rename(temporary, path) == 0 else { throw LinuxError(stage: "rename", detail: temporary) }
    } catch {
        throw RuntimeError("write \(what): \(error)")
    }
}

public enum ProcessIdentity {
    /// Field 22 of /proc/PID/stat (after the parenthesised command, which may contain spaces).
    public static func startTime(of pid: Int32) -> UInt64? {
        guard let fields = Linux.statFields(pid), fields.count > 19, fields[0] != "Z" else { return nil }
        return UInt64(fields[19])
    }

    public static func isAlive(pid: Int32, startTime: UInt64) -> Bool {
        guard let now = Self.startTime(of: pid) else { return false }
        return startTime == 0 || now == startTime
    }

    /// Waits (without polling) until `pid` has exited, up to `timeout` seconds; true when it has.
    public static func waitGone(pid: Int32, timeout: Double) -> Bool { Linux.waitGone(pid: pid, timeout: timeout) }
}

public func rfc3339Now() -> String { rfc3339(Date()) }

public func rfc3339(_ date: Date) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return formatter.string(from: date)
}
