import Foundation
import VesselLinux

/// A running QEMU guest whose serial console is captured: wait for a line, for exit, or kill it.
/// Errors carry the console's tail, which is what anyone debugging a guest needs first.
public final class GuestVM: @unchecked Sendable {
    // @unchecked: `console` and `status` are guarded by `changed`; the rest is immutable.
    public let config: VMConfig
    public let accelerator: VMConfig.Accelerator
    public let startedAt: Date
    public let pid: Int32
    private let changed = NSCondition()
    private var console = ""
    private var status: Int32?
    private static let consoleLimit = 1 << 20

    /// Starts QEMU. With `consoleLog` the console is also appended to that file (at most
    /// `consoleLogLimit` bytes in it and as much in its `.1`); with `dieWithParent` QEMU gets
    /// SIGKILL when this process dies.
    public init(_ config: VMConfig, consoleLog: String? = nil, consoleLogLimit: Int = 1 << 20, dieWithParent: Bool = false) throws {
        self.config = config
        for (what, path) in [("kernel", config.kernel), ("initrd", config.initrd), ("QEMU", config.qemu)]
        where !FileManager.default.fileExists(atPath: path) {
            throw VMError("\(what) \(path) does not exist (`make kernel initrd` builds the guest; apt-get install qemu-system-x86)")
        }
        accelerator = AcceleratorProbe.resolve(config.accelerator, kernel: config.kernel, qemu: config.qemu)
        let log = try consoleLog.map { try ConsoleLog(path: $0, limit: consoleLogLimit) }
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        guard devNull >= 0, let pipe = try? Linux.pipe() else { throw VMError("cannot create the console pipe") }
        defer {
            close(devNull)
            close(pipe.write)
        }
        startedAt = Date()
        // Where QEMU starts: open before the fork, so the C child only writes and clones.
        let cgroupFD = { (path: String?, flags: Int32) throws -> Int32 in
            guard let path else { return -1 }
            let fd = open(path, flags | O_CLOEXEC)
            guard fd >= 0 else { throw VMError("cannot open \(path): \(String(cString: strerror(errno)))") }
            return fd
        }
        let cgroupProcs = try cgroupFD(config.cgroup.map { $0 + "/cgroup.procs" }, O_WRONLY)
        defer { if cgroupProcs >= 0 { close(cgroupProcs) } }
        let unifiedCgroup = try cgroupFD(config.unifiedCgroup, O_DIRECTORY | O_RDONLY)
        defer { if unifiedCgroup >= 0 { close(unifiedCgroup) } }
        do {
            let spawned = try spawn(
                exeFD: -1, path: config.qemu, arguments: [config.qemu] + config.arguments(accelerator: accelerator),
                environment: ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" },
                fds: [(devNull, 0), (pipe.write, 1), (pipe.write, 2)]
                    + config.networks.enumerated().map { ($0.element.tapFD, NetworkDevice.firstFD + Int32($0.offset)) },
                parentDeathSignal: dieWithParent ? SIGKILL : 0, cgroup: unifiedCgroup,
                keepCapabilities: config.sandboxed && geteuid() == 0 ? VMConfig.keptCapabilities : nil,
                cgroupProcs: cgroupProcs)
            if spawned.execErrno != 0 {
                var ignored: Int32 = 0
                waitpid(spawned.pid, &ignored, 0)
                throw VMError("cannot execute \(config.qemu): \(String(cString: strerror(spawned.execErrno)))")
            }
            pid = spawned.pid
        } catch let error as LinuxError {
            close(pipe.read)
            log?.close()
            throw VMError("cannot start \(config.qemu): \(error)")
        }
        let reader = pipe.read
        Linux.startThread { [self] in readConsole(reader, log: log) }
        Linux.startThread { [self] in
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
            let code = Linux.shellStatus(raw)
            changed.withLock { status = code }
            changed.broadcast()
        }
    }

    private func readConsole(_ fd: Int32, log: ConsoleLog?) {
        defer {
            close(fd)
            log?.close()
        }
        var buffer = [UInt8](repeating: 0, count: 16 << 10)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            log?.append(buffer[0..<n])
            changed.withLock {
                console += String(decoding: buffer[0..<n], as: UTF8.self)
                // A long-lived guest keeps its whole console in the log file, only the tail here.
                if console.utf8.count > Self.consoleLimit { console = String(console.suffix(Self.consoleLimit / 2)) }
            }
            changed.broadcast()
        }
    }

    public var output: String { changed.withLock { console } }
    public var isRunning: Bool { changed.withLock { status == nil } }
    /// QEMU's exit status (or 128+signal) once it has exited.
    public var exitStatus: Int32? { changed.withLock { status } }

    public func consoleTail(_ lines: Int = 30) -> String { tail(output, lines) }

    private func tail(_ text: String, _ lines: Int = 30) -> String {
        text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    /// Waits until the console shows `text`; returns the seconds since QEMU started.
    @discardableResult
    public func waitFor(_ text: String, timeout: TimeInterval) throws -> TimeInterval {
        let deadline = Date().addingTimeInterval(timeout)
        changed.lock()
        defer { changed.unlock() }
        while !console.contains(text) {
            if let status {
                throw VMError("QEMU exited (status \(status)) before \"\(text)\"; console:\n\(tail(console))")
            }
            if !changed.wait(until: deadline) && Date() >= deadline {
                throw VMError("no \"\(text)\" within \(Int(timeout)) s; console:\n\(tail(console))")
            }
        }
        return Date().timeIntervalSince(startedAt)
    }

    /// Waits for QEMU to exit by itself (a power-off); returns its exit status.
    public func waitForExit(timeout: TimeInterval) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        changed.lock()
        defer { changed.unlock() }
        while true {
            if let status { return status }
            if !changed.wait(until: deadline) && Date() >= deadline {
                throw VMError("QEMU still running after \(Int(timeout)) s; console:\n\(tail(console))")
            }
        }
    }

    /// SIGKILL and wait for the exit; safe to call twice.
    public func kill() {
        if isRunning { Foundation.kill(pid, SIGKILL) }
        _ = try? waitForExit(timeout: 30)
    }

    deinit { kill() }
}

/// The console's file on the host. The guest writes it (its kernel, and any container that can
/// open /dev/console), so it is bounded: past `limit` bytes it becomes `<path>.1` (replacing
/// the previous one) and a new file starts. At most twice `limit` on disk, the newest output kept.
final class ConsoleLog: @unchecked Sendable {
    // @unchecked: after init only the console reader thread uses it.
    private let path: String
    private let limit: Int
    private var fd: Int32
    private var size: Int

    init(path: String, limit: Int) throws {
        self.path = path
        self.limit = max(limit, 4096)
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        if fd < 0 { throw VMError("cannot open console log \(path): \(String(cString: strerror(errno)))") }
        var info = stat()
        size = fstat(fd, &info) == 0 ? Int(info.st_size) : 0
    }

    func append(_ bytes: ArraySlice<UInt8>) {
        guard fd >= 0 else { return }
        if size + bytes.count > limit { rotate() }
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if written > 0 { size += written }
    }

    private func rotate() {
        Foundation.close(fd)
        rename(path, path + ".1")
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o640)
        size = 0
    }

    func close() {
        if fd >= 0 { Foundation.close(fd) }
        fd = -1
    }
}
