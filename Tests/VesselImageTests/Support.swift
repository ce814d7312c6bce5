import Foundation

let repoRootfs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("rootfs").path

func installed(_ tool: String) -> Bool { FileManager.default.isExecutableFile(atPath: "/usr/bin/" + tool) }

/// A fresh directory, removed by the caller.
func temporaryDirectory() throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("vessel-image-tests-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func write(_ text: String, to path: String) throws {
    try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try Data(text.utf8).write(to: URL(fileURLWithPath: path))
}

/// A stand-in agent: 64 KiB of fixed pseudo-random bytes, so compression has something to do.
func fakeAgent(in directory: String) throws -> String {
    var state: UInt32 = 12345
    let bytes = (0..<65536).map { _ -> UInt8 in
        state = state &* 1_103_515_245 &+ 12345
        return UInt8(truncatingIfNeeded: state >> 16)
    }
    let path = directory + "/agent"
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    return path
}

/// Runs a command with stdin from a file; returns status, stdout, stderr. Output goes through
/// files, so the wait can have a bound: one still running after `timeout` s is killed and throws.
func run(_ command: [String], stdin: String? = nil, timeout: Double = 120) throws -> (status: Int32, stdout: [UInt8], stderr: String) {
    let directory = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let out = directory + "/stdout", err = directory + "/stderr"
    FileManager.default.createFile(atPath: out, contents: nil)
    FileManager.default.createFile(atPath: err, contents: nil)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: command[0])
    process.arguments = Array(command.dropFirst())
    process.standardInput = try stdin.map { try FileHandle(forReadingFrom: URL(fileURLWithPath: $0)) } ?? FileHandle.nullDevice
    process.standardOutput = FileHandle(forWritingAtPath: out)
    process.standardError = FileHandle(forWritingAtPath: err)
    try process.run()
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning && Date() < deadline { usleep(10_000) }
    if process.isRunning {
        kill(process.processIdentifier, SIGKILL)
        throw TimedOut(description: "\(command.joined(separator: " ")) still running after \(Int(timeout)) s: killed")
    }
    return (
        process.terminationStatus, Array(try Data(contentsOf: URL(fileURLWithPath: out))),
        (try? String(contentsOfFile: err, encoding: .utf8)) ?? ""
    )
}

struct TimedOut: Error, CustomStringConvertible {
    var description: String
}
