import Foundation
import Testing

/// The CLI's answers to bad input: one line naming what was wrong, exit status 1, nothing left.
@Suite(.timeLimit(.minutes(10)), .serialized)
struct CLIBadInputTests {
    @Test func badBundlesAndUnknownIds() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bundle = try cli.bundle(["true"])

        try FileManager.default.removeItem(atPath: bundle + "/config.json")
        var result = try cli.run(["create", "--bundle", bundle, "c1"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("config.json: cannot read"), "\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1, "one line: \(result.stderr)")

        try Data("{\n  \"ociVersion\": \"1.1.0\",\n  \"process\": {,\n}".utf8).write(to: URL(fileURLWithPath: bundle + "/config.json"))
        result = try cli.run(["create", "-b", bundle, "c1"])
        #expect(result.status == 1 && result.stderr.contains("invalid JSON at line 3"), "\(result.stderr)")

        try FileManager.default.removeItem(atPath: bundle)
        try VesselCLI.bundleWithoutRootfs(at: bundle)
        result = try cli.run(["create", "--bundle=\(bundle)", "c1"])
        #expect(result.status == 1 && result.stderr.contains("root.path \(bundle)/rootfs: no such directory"), "\(result.stderr)")

        for command in [
            ["state", "nope"], ["start", "nope"], ["kill", "nope", "KILL"], ["delete", "nope"], ["exec", "nope", "true"],
            ["pause", "nope"],
        ] {
            result = try cli.run(command)
            #expect(result.status == 1 && result.stderr.contains("container \"nope\" does not exist"), "\(command): \(result.stderr)")
        }
        #expect(try cli.run(["delete", "--force", "nope"]).status == 0, "runc: --force of an unknown container succeeds")
        result = try cli.run(["create", "--bundle", bundle, "../escape"])
        #expect(result.status == 1 && result.stderr.contains("invalid container id"), "\(result.stderr)")
        result = try cli.run(["create", "--bogus", "c1"])
        #expect(result.status == 1 && result.stderr.contains("flag provided but not defined: -bogus"), "\(result.stderr)")
        result = try cli.run(["kill", "c1", "SIGNOPE"])
        #expect(result.status == 1 && result.stderr.contains("unknown signal"), "\(result.stderr)")
        try cli.expectNothingLeft("c1")
        #expect(try cli.run(["list", "--quiet"]).stdout.isEmpty)
    }

    @Test func logFileGetsJSONErrorLines() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let log = cli.directory + "/log.json"
        let result = try cli.run(["state", "ghost"], global: ["--log", log, "--log-format", "json"])
        #expect(result.status == 1)
        let line = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").first.map(String.init) ?? ""
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String]
        #expect(object?["level"] == "error")
        #expect(object?["msg"] == "container \"ghost\" does not exist")
    }

    @Test func specFeaturesVersionAndEnv() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let dir = cli.directory + "/spec"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(try cli.run(["spec", "--bundle", dir]).status == 0)
        let spec = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/config.json"))) as? [String: Any]
        #expect((spec?["process"] as? [String: Any])?["args"] as? [String] == ["sh"])
        #expect(try cli.run(["spec", "--bundle", dir]).stderr.contains("exists"))
        let features = try JSONSerialization.jsonObject(with: Data(try cli.run(["features"]).stdout.utf8)) as? [String: Any]
        #expect(features?["ociVersionMax"] as? String == "1.1.0")
        #expect(try cli.run(["--version"]).stdout.hasPrefix("vessel version "))
        let env = try cli.run(["env", "--json"])
        let config = try JSONSerialization.jsonObject(with: Data(env.stdout.utf8)) as? [String: [String: Any]]
        #expect(config?["hypervisor"]?["memory_mib"] as? Int == 256)
    }
}

extension VesselCLI {
    static func bundleWithoutRootfs(at dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data(#"{"ociVersion":"1.1.0","process":{"user":{"uid":0,"gid":0},"cwd":"/","args":["true"]},"root":{"path":"rootfs"}}"#.utf8)
            .write(to: URL(fileURLWithPath: dir + "/config.json"))
    }
}
