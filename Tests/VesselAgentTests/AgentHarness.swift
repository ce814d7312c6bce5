import Foundation
import Testing
import VesselAgentClient
import VesselDevSupport
import VesselProtocol
import VesselTestSupport

/// The debug build of the agent, next to the test bundle in the package's build folder.
let agentBinary: String = {
    if let path = ProcessInfo.processInfo.environment["VESSEL_AGENT_BIN"] { return path }
    let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    return packageRoot.appendingPathComponent(".build/debug/vessel-agent").path
}()

/// Runs a test body against a fresh agent process and always stops it.
func withAgent(arguments: [String] = [], _ body: (LocalAgent) async throws -> Void) async throws {
    try await LocalAgent.with(binary: agentBinary, arguments: arguments, body)
}

/// Short forms for the tests: ids and argv in, strings out.
extension LocalAgent {
    func create(_ id: String, _ args: [String], terminal: Bool = false, hostname: String = "vessel-test") async throws {
        try await client.createContainer(id, spec: spec(args, terminal: terminal, hostname: hostname))
    }

    func run(_ id: String, _ args: [String]) async throws {
        try await create(id, args)
        try await client.startContainer(id)
    }

    func exec(_ id: String, _ execID: String, _ args: [String], terminal: Bool = false) async throws {
        try await client.exec(id, execID, process: Self.process(args, terminal: terminal))
    }

    func output(_ id: String, _ execID: String = "", stderr: Bool = false) async throws -> String {
        String(decoding: try await client.readAll(id, execID, stderr: stderr), as: UTF8.self)
    }

    /// Reads until `needle` shows up (a terminal's EOF comes only at exit).
    func read(_ id: String, _ execID: String = "", until needle: String) async throws -> String {
        var out = ""
        while !out.contains(needle) {
            let chunk = try await client.read(id, execID)
            if chunk.isEmpty { break }
            out += String(decoding: chunk, as: UTF8.self)
        }
        return out
    }

    func write(_ id: String, exec execID: String = "", _ text: String) async throws {
        try await client.writeStdin(id, execID, Array(text.utf8))
    }

    /// Every mount any process on the host sees that mentions our temp dir.
    func leftoverMounts() -> [String] { MountTable.everywhere(mentioning: directory.path) }
}

/// Expects a ttrpc error with `code` whose message contains `fragment`.
func expectError(_ code: TTRPCCode, containing fragment: String, _ body: () async throws -> Void) async {
    do {
        try await body()
        Issue.record("expected \(code) error containing \"\(fragment)\", got success")
    } catch let error as TTRPCError {
        #expect(error.code == code, "\(error)")
        #expect(error.message.contains(fragment), "\(error)")
    } catch {
        Issue.record("expected TTRPCError, got \(error)")
    }
}
