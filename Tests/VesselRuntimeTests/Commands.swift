import Foundation
import Testing
import VesselDevSupport
import VesselLinux

struct CommandResult {
    var status: Int32
    var output: String
}

/// Runs a program with stdout and stderr together in a file (callers' daemons may inherit them),
/// `input` on its stdin; one that outlives `timeout` is killed and fails the test. Spawned and
/// reaped by us (VesselLinux's spawn, waitpid): the child starts with no signal blocked whatever
/// the test thread blocks, a quick exit is never missed, and a test run that dies takes it along.
func command(
    _ arguments: [String], environment: [String: String]? = nil, input: String? = nil, timeout: Double = 300
) throws
    -> CommandResult
{
    let output = FileManager.default.temporaryDirectory.appendingPathComponent("vessel-cmd-\(UUID().uuidString.prefix(8))").path
    let out = open(output, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard out >= 0 else { throw CLIError("cannot create \(output)") }
    defer {
        close(out)
        unlink(output)
    }
    let inputFile = output + ".in"
    FileManager.default.createFile(atPath: inputFile, contents: Data((input ?? "").utf8))
    let stdin = open(input == nil ? "/dev/null" : inputFile, O_RDONLY | O_CLOEXEC)
    defer {
        close(stdin)
        unlink(inputFile)
    }
    let environment = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
    let spawned = try spawn(
        exeFD: -1, path: arguments[0], arguments: arguments, environment: environment,
        fds: [(stdin, 0), (out, 1), (out, 2)], parentDeathSignal: SIGKILL)
    var raw: Int32 = 0
    let deadline = Date().addingTimeInterval(timeout)
    var reaped = waitpid(spawned.pid, &raw, WNOHANG)
    while reaped == 0 && Date() < deadline {
        usleep(20_000)
        reaped = waitpid(spawned.pid, &raw, WNOHANG)
    }
    if reaped == 0 {
        kill(spawned.pid, SIGKILL)
        waitpid(spawned.pid, &raw, 0)
        Issue.record("\(arguments.joined(separator: " ")) still running after \(Int(timeout)) s: killed")
    }
    if spawned.execErrno != 0 { throw CLIError("cannot run \(arguments[0]): \(String(cString: strerror(spawned.execErrno)))") }
    return CommandResult(status: Linux.shellStatus(raw), output: (try? String(contentsOfFile: output, encoding: .utf8)) ?? "")
}

/// Installs the Debian packages whose programs are missing (services are not started: policy-rc.d).
func ensureInstalled(_ programs: [String: String]) throws {
    let missing = programs.filter { !FileManager.default.isExecutableFile(atPath: $0.key) }.map(\.value)
    guard !missing.isEmpty else { return }
    var environment = ProcessInfo.processInfo.environment
    environment["DEBIAN_FRONTEND"] = "noninteractive"
    let result = try command(["/usr/bin/apt-get", "install", "-y", "--no-install-recommends"] + missing.sorted(), environment: environment)
    guard result.status == 0 else { throw CLIError("apt-get install \(missing) failed: \(result.output.suffix(2000))") }
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
            guard result.status == 0 else { throw CLIError("\(step.joined(separator: " ")): \(result.output)") }
        }
    }
}
