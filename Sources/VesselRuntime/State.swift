import Foundation
import CVessel
import VesselLinux
import VesselProtocol

/// A container's record under `--root`: one directory per container holding state.json (written
/// atomically), the guest spec, the console log and a lock. `state` works from any fresh process.
public struct ContainerState: Codable, Sendable {
    public enum Status: String, Codable, Sendable { case creating, created, running, paused, stopped }

    public var id: String
    public var bundle: String
    public var rootfs: String
    public var status: Status
    /// The per-container shim (what --pid-file names and callers wait on); 0 before it exists.
    public var pid: Int32 = 0
    /// The shim's start time (clock ticks, /proc/PID/stat field 22): a recycled pid is not our shim.
    public var pidStartTime: UInt64 = 0
    public var qemuPid: Int32 = 0
    public var created: String
    public var owner: String
    public var annotations: [String: String] = [:]
    public var terminal = false
    public var exitStatus: Int32?
    /// Why the sandbox died without the container exiting (QEMU or the vsock backend failed).
    public var failure: String?
    /// Host bind mounts made for the guest's 9p share, undone by delete.
    public var sharedMounts: [String] = []
    /// Host cgroup directories holding the shim and QEMU, removed by delete.
    public var hostCgroups: [String] = []
}

/// Paths of one container. Sockets live under a short per-container directory because runtime
/// roots plus 64-character ids (docker) overflow sun_path's 108 bytes.
public struct ContainerPaths: Sendable {
    public let root: String
    public let id: String
    public var directory: String { root + "/" + id }
    public var stateFile: String { directory + "/state.json" }
    public var specFile: String { directory + "/spec.pb" }
    public var consoleLog: String { directory + "/console.log" }
    public var shared: String { directory + "/shared" }
    public var lockFile: String { directory + "/lock" }
    public let socketDirectory: String
    public var vhostUserSocket: String { socketDirectory + "/vhost.sock" }
    public var hybridSocket: String { socketDirectory + "/vsock.sock" }
    public var qmpSocket: String { socketDirectory + "/qmp.sock" }

    public init(root: String, id: String) {
        self.root = root
        self.id = id
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in (root + "/" + id).utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        socketDirectory = "/run/vessel-sockets/" + String(hash, radix: 16)
    }
}

public struct StateStore: Sendable {
    public let root: String

    public init(root: String) { self.root = root }

    public static func validate(id: String) throws(RuntimeError) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")
        if id.isEmpty || id == "." || id == ".." || id.count > 1024 || !id.allSatisfy(allowed.contains) {
            throw RuntimeError("invalid container id \"\(id)\": use letters, digits, '_', '+', '-' and '.'")
        }
    }

    public func paths(_ id: String) -> ContainerPaths { ContainerPaths(root: root, id: id) }

    /// Creates the container's directory; an existing one is runc's "container with id exists".
    public func create(_ state: ContainerState) throws(RuntimeError) -> ContainerPaths {
        try Self.validate(id: state.id)
        let paths = paths(state.id)
        do { try Linux.mkdirAll(root, mode: 0o711) } catch { throw RuntimeError(stage: "create state root \(root)", error) }
        if mkdir(paths.directory, 0o711) != 0 {
            if errno == EEXIST { throw RuntimeError("container with id exists: \(state.id)") }
            throw RuntimeError(stage: "create \(paths.directory)", LinuxError(stage: "mkdir"))
        }
        try write(state)
        return paths
    }

    public func load(_ id: String) throws(RuntimeError) -> ContainerState {
        try Self.validate(id: id)
        let file = paths(id).stateFile
        guard let data = FileManager.default.contents(atPath: file) else {
            throw RuntimeError("container \"\(id)\" does not exist")
        }
        guard var state = try? JSONDecoder().decode(ContainerState.self, from: data) else {
            throw RuntimeError("container \"\(id)\": unreadable state file \(file)")
        }
        state.status = Self.effectiveStatus(state)
        return state
    }

    /// The guest spec `create` recorded for the container.
    public func guestSpec(_ id: String) throws(RuntimeError) -> Grpc_Spec {
        let file = paths(id).specFile
        guard let data = FileManager.default.contents(atPath: file) else { throw RuntimeError("container \"\(id)\" does not exist") }
        guard let spec = try? Grpc_Spec(serializedBytes: data) else { throw RuntimeError("container \(id): unreadable \(file)") }
        return spec
    }

    public func write(_ state: ContainerState) throws(RuntimeError) {
        let paths = paths(state.id)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do {
            let data = try encoder.encode(state)
            let temporary = paths.stateFile + ".tmp"
            try data.write(to: URL(fileURLWithPath: temporary))
            guard rename(temporary, paths.stateFile) == 0 else { throw LinuxError(stage: "rename") }
        } catch {
            throw RuntimeError("write state of \(state.id): \(error)")
        }
    }

    /// Reads, changes and writes the state under the container's lock.
    @discardableResult
    public func update(_ id: String, _ change: (inout ContainerState) throws(RuntimeError) -> Void) throws(RuntimeError) -> ContainerState {
        try withLock(id) { () throws(RuntimeError) -> ContainerState in
            var state = try load(id)
            try change(&state)
            try write(state)
            return state
        }
    }

    public func withLock<T>(_ id: String, _ body: () throws(RuntimeError) -> T) throws(RuntimeError) -> T {
        let fd = open(paths(id).lockFile, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        if fd < 0 { throw RuntimeError("container \"\(id)\" does not exist") }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 && errno == EINTR {}
        return try body()
    }

    public func list() -> [ContainerState] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return names.sorted().compactMap { try? load($0) }
    }

    public func remove(_ id: String) {
        let paths = paths(id)
        try? FileManager.default.removeItem(atPath: paths.directory)
        try? FileManager.default.removeItem(atPath: paths.socketDirectory)
    }

    /// A shim that is gone means a stopped container, whatever the file last said.
    static func effectiveStatus(_ state: ContainerState) -> ContainerState.Status {
        switch state.status {
        case .created, .running, .paused:
            return ProcessIdentity.isAlive(pid: state.pid, startTime: state.pidStartTime) ? state.status : .stopped
        case .creating, .stopped:
            return state.status
        }
    }
}

public enum ProcessIdentity {
    /// Field 22 of /proc/PID/stat (after the parenthesised command, which may contain spaces).
    public static func startTime(of pid: Int32) -> UInt64? {
        guard pid > 0, let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // fields[0] is the state (field 3), so field 22 is fields[19].
        guard fields.count > 19, fields[0] != "Z" else { return nil }
        return UInt64(fields[19])
    }

    public static func isAlive(pid: Int32, startTime: UInt64) -> Bool {
        guard let now = Self.startTime(of: pid) else { return false }
        return startTime == 0 || now == startTime
    }

    /// Waits (without polling) until `pid` has exited, up to `timeout` seconds; true when it has.
    public static func waitGone(pid: Int32, timeout: Double) -> Bool {
        let fd = vessel_pidfd_open(pid)
        if fd < 0 { return true }
        defer { close(fd) }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, Int32(timeout * 1000)) > 0
    }
}

public func rfc3339Now() -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return formatter.string(from: Date())
}
