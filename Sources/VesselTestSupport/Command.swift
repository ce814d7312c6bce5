import Foundation
import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// What a command left: its status and everything it wrote.
public struct CommandResult: Sendable {
    /// Shell-style: the exit code, or 128 + the signal.
    public var status: Int32
    public var stdout: [UInt8]
    public var stderr: [UInt8]

    public init(status: Int32, stdout: [UInt8] = [], stderr: [UInt8] = []) {
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
    }

    /// stdout as text (with `mergingErrors`, stderr too).
    public var output: String { String(decoding: stdout, as: UTF8.self) }
    public var errors: String { String(decoding: stderr, as: UTF8.self) }
}

/// A command that outlived its timeout: it was killed; `result` is what it wrote until then.
public struct CommandTimedOut: Error, CustomStringConvertible {
    public var arguments: [String]
    public var timeout: Double
    public var result: CommandResult
    /// Still not gone 10 s after SIGKILL (stuck in the kernel): left behind.
    public var survivedKill: Bool

    public var description: String {
        "\(arguments.joined(separator: " ")) still running after \(Int(timeout)) s: "
            + (survivedKill ? "it survived SIGKILL" : "killed") + "; its output: \(result.output.suffix(2000))"
    }
}

/// Runs a command to its end, at most `timeout` seconds: one still running then gets
/// `timeoutSignal` (a SIGINT lets `vessel` clean up; SIGKILL after 0.5 s more) and the call throws
/// `CommandTimedOut`. Output goes through files that no path names, never pipes: a daemon the
/// command starts may inherit them and would keep a pipe open long after the command returns.
/// `stdoutFile`: stdout goes to that file instead (not read back). The child dies with the test run.
@discardableResult
public func runCommand(
    _ arguments: [String], environment: [String: String]? = nil, directory: String? = nil, input: ChildInput = .null,
    stdoutFile: String? = nil, mergingErrors: Bool = false, timeout: Double = 300, timeoutSignal: Int32 = SIGKILL
) throws -> CommandResult {
    let out = try stdoutFile == nil ? scratchFile() : -1
    defer { Linux.close(out) }
    let err = try mergingErrors ? -1 : scratchFile()
    defer { Linux.close(err) }
    let child = try ChildProcess(
        arguments, environment: environment, directory: directory, stdin: input,
        stdout: stdoutFile.map { .file($0) } ?? .descriptor(out), stderr: mergingErrors ? .stdout : .descriptor(err))
    let status = child.wait(timeout: timeout)
    if status == nil { child.stop(signal: timeoutSignal, grace: timeoutSignal == SIGKILL ? 10 : 0.5) }
    let result = CommandResult(
        status: child.exitStatus ?? -1, stdout: out >= 0 ? contents(of: out) : [], stderr: err >= 0 ? contents(of: err) : [])
    guard status != nil else {
        throw CommandTimedOut(arguments: arguments, timeout: timeout, result: result, survivedKill: child.isRunning)
    }
    return result
}
