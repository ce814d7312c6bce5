import Foundation

/// A running QEMU guest whose serial console is captured: wait for a line, for exit, or kill it.
/// Errors carry the console's tail, which is what anyone debugging a guest needs first.
public final class GuestVM: @unchecked Sendable {
    // @unchecked: `console` and `exitStatus` are guarded by `lock`; the rest is immutable.
    public let config: VMConfig
    public let accelerator: VMConfig.Accelerator
    public let startedAt: Date
    private let process = Process()
    private let lock = NSLock()
    private var console = ""
    private let changed = NSCondition()

    public init(_ config: VMConfig) throws {
        self.config = config
        for (what, path) in [("kernel", config.kernel), ("initrd", config.initrd), ("QEMU", config.qemu)]
        where !FileManager.default.fileExists(atPath: path) {
            throw VMError("\(what) \(path) does not exist (`make kernel initrd` builds the guest; apt-get install qemu-system-x86)")
        }
        accelerator = AcceleratorProbe.resolve(config.accelerator, kernel: config.kernel, qemu: config.qemu)
        startedAt = Date()
        let pipe = Pipe()
        process.executableURL = URL(fileURLWithPath: config.qemu)
        process.arguments = config.arguments(accelerator: accelerator)
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        pipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self, !data.isEmpty else { return }
            self.lock.withLock { self.console += String(decoding: data, as: UTF8.self) }
            self.changed.broadcast()
        }
        process.terminationHandler = { [weak self] _ in self?.changed.broadcast() }
        try process.run()
    }

    public var pid: Int32 { process.processIdentifier }
    public var output: String { lock.withLock { console } }
    public var isRunning: Bool { process.isRunning }

    public func consoleTail(_ lines: Int = 30) -> String {
        output.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    /// Waits until the console shows `text`; returns the seconds since QEMU started.
    @discardableResult
    public func waitFor(_ text: String, timeout: TimeInterval) throws -> TimeInterval {
        let deadline = Date().addingTimeInterval(timeout)
        changed.lock()
        defer { changed.unlock() }
        while !output.contains(text) {
            if !process.isRunning {
                throw VMError("QEMU exited (status \(process.terminationStatus)) before \"\(text)\"; console:\n\(consoleTail())")
            }
            if !changed.wait(until: min(deadline, Date().addingTimeInterval(0.2))) && Date() >= deadline {
                throw VMError("no \"\(text)\" within \(Int(timeout)) s; console:\n\(consoleTail())")
            }
        }
        return Date().timeIntervalSince(startedAt)
    }

    /// Waits for QEMU to exit by itself (a power-off); returns its exit status.
    public func waitForExit(timeout: TimeInterval) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning {
            if Date() >= deadline {
                throw VMError("QEMU still running after \(Int(timeout)) s; console:\n\(consoleTail())")
            }
            usleep(20_000)
        }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// SIGKILL and reap; safe to call twice.
    public func kill() {
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit { kill() }
}
