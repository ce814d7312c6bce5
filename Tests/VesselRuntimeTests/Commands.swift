import Foundation
import Testing
import VesselDevSupport
import VesselTestSupport

/// Runs a program with stdout and stderr together (VesselTestSupport's runner: through a file,
/// which callers' daemons may inherit), `input` on its stdin; one that outlives `timeout` is
/// killed and fails the test, its result what it wrote until then. The child dies with the run.
func command(
    _ arguments: [String], environment: [String: String]? = nil, input: String? = nil, timeout: Double = 300
) throws
    -> CommandResult
{
    do {
        return try runCommand(
            arguments, environment: environment, input: input.map { .text($0) } ?? .null, mergingErrors: true, timeout: timeout)
    } catch let timedOut as CommandTimedOut {
        Issue.record("\(arguments.joined(separator: " ")) still running after \(Int(timeout)) s: killed")
        return timedOut.result
    }
}

/// Installs the Debian packages whose programs are missing (services are not started: policy-rc.d).
func ensureInstalled(_ programs: [String: String]) throws {
    let missing = programs.filter { !FileManager.default.isExecutableFile(atPath: $0.key) }.map(\.value)
    guard !missing.isEmpty else { return }
    var environment = ProcessInfo.processInfo.environment
    environment["DEBIAN_FRONTEND"] = "noninteractive"
    let result = try command(["/usr/bin/apt-get", "install", "-y", "--no-install-recommends"] + missing.sorted(), environment: environment)
    guard result.status == 0 else { throw TestSupportError("apt-get install \(missing) failed: \(result.output.suffix(2000))") }
}

/// A busybox image without a registry: a busybox rootfs packed by umoci (`cmd` as its command),
/// converted by skopeo into a docker archive that `docker load` and `ctr images import` take.
enum BusyboxImage {
    static func archive(at path: String, name: String, in directory: String, cmd: [String] = []) throws {
        try ensureInstalled(["/usr/bin/skopeo": "skopeo", "/usr/bin/umoci": "umoci"])
        let work = directory + "/image-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: work) }
        try BusyboxRootfs.make(at: work + "/busybox")
        let config =
            cmd.flatMap { ["--config.cmd", $0] } + ["--config.env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        for step in [
            ["/usr/bin/umoci", "init", "--layout", work + "/oci"],
            ["/usr/bin/umoci", "new", "--image", work + "/oci:image"],
            ["/usr/bin/umoci", "unpack", "--image", work + "/oci:image", work + "/unpacked"],
            ["/bin/cp", "-a", work + "/busybox/.", work + "/unpacked/rootfs/"],
            ["/usr/bin/umoci", "repack", "--image", work + "/oci:image", work + "/unpacked"],
            ["/usr/bin/umoci", "config", "--image", work + "/oci:image"] + config,
            ["/usr/bin/skopeo", "copy", "oci:\(work)/oci:image", "docker-archive:\(path):\(name)"],
        ] {
            let result = try command(step)
            guard result.status == 0 else { throw TestSupportError("\(step.joined(separator: " ")): \(result.output)") }
        }
    }
}
