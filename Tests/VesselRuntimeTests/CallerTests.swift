import Foundation
import Synchronization
import Testing
import VesselCore
import VesselDevSupport
import VesselTestSupport

/// Real callers of an OCI runtime, installed from Debian when missing, with all their state in a
/// temporary directory: podman (conmon) and dockerd 20.10 (containerd + containerd-shim-runc-v2).
@Suite(
    .timeLimit(.minutes(10)), .serialized,
    .enabled(if: VesselCLI.guestAvailable, "VESSEL_KERNEL/VESSEL_INITRD not set (make test sets them)"))
struct CallerTests {
    @Test func podmanRunsABusyboxContainer() throws {
        try ensureInstalled(["/usr/bin/podman": "podman", "/usr/bin/conmon": "conmon"])
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let dir = cli.directory
        try BusyboxRootfs.make(at: dir + "/rootfs")
        try """
        [containers]
        default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
        netns = "none"
        [engine]
        cgroup_manager = "cgroupfs"
        events_logger = "file"
        """.write(toFile: dir + "/containers.conf", atomically: true, encoding: .utf8)
        let podman = [
            "/usr/bin/podman", "--root", dir + "/storage", "--runroot", dir + "/run", "--storage-driver", "vfs",
            "--runtime", VesselCLI.binary, "--runtime-flag", "config=" + cli.config,
        ]
        let environment = ["CONTAINERS_CONF": dir + "/containers.conf", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]
        // podman's cleanup (`podman container cleanup`) calls the runtime without --runtime-flag: default --root.
        let run = Background {
            try command(
                podman + [
                    "run", "--rm", "--cidfile", dir + "/cid", "--rootfs", dir + "/rootfs",
                    "sh", "-c", "echo hello-podman from $(hostname); exit 7",
                ], environment: environment)
        }
        // The state must be seen while the container exists, or its absence afterwards proves nothing.
        let stateDirectory = { () -> String? in
            let id = ((try? String(contentsOfFile: dir + "/cid", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            return id.isEmpty ? nil : "/run/vessel/" + id
        }
        var seen = false
        while !seen, try run.value(timeout: 0.1) == nil {
            seen = stateDirectory().map { FileManager.default.fileExists(atPath: $0) } ?? false
        }
        let result = try #require(try run.value(timeout: 400), "podman run outlived its command's own timeout")
        #expect(result.status == 7, "\(result.output)")
        #expect(result.output.contains("hello-podman from"), "\(result.output)")
        _ = try command(podman + ["rm", "--all", "--force"], environment: environment)
        let state = try #require(stateDirectory(), "podman wrote no container id")
        #expect(seen, "\(state) never appeared: the runtime kept its state elsewhere")
        #expect(!FileManager.default.fileExists(atPath: state), "container state left in /run/vessel")
    }

    @Test func dockerRunsABusyboxContainer() throws {
        let docker = try DockerDaemon()
        defer { docker.stop() }
        let cidfile = docker.cli.directory + "/cid"
        let background = Background {
            try docker.docker([
                "run", "--rm", "--cidfile", cidfile, "--runtime", "vessel", "--network", "none", "busybox:vessel",
                "sh", "-c", "echo hello-docker from $(hostname); exit 5",
            ])
        }
        // The state must be seen while the container exists, or its absence afterwards proves nothing.
        var state: String?
        while state == nil, try background.value(timeout: 0.1) == nil {
            let id = ((try? String(contentsOfFile: cidfile, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            if !id.isEmpty { state = docker.stateDirectory(of: id) }
        }
        let run = try #require(try background.value(timeout: 400), "docker run outlived its command's own timeout")
        #expect(run.status == 5, "\(run.output)")
        #expect(run.output.contains("hello-docker from"), "\(run.output)")
        #expect(state != nil, "the container's state (--root/ID/state.json) never appeared")
        if let state { #expect(!FileManager.default.fileExists(atPath: state), "\(state) left behind") }
        docker.expectNoContainersLeft()
    }
}

/// Its own dockerd (and the containerd it starts), all state in a temporary directory, Vessel as
/// runtime `vessel` with our configuration, a local busybox image; in `network` when given
/// (with its bridge and iptables there), else without any network of its own.
final class DockerDaemon: @unchecked Sendable {
    // @unchecked: set up once, then only read.
    let cli: VesselCLI
    let socket: String
    private let daemon: ChildProcess
    /// The --root directories docker gave vessel, as found by `stateDirectory(of:)`.
    private let roots = Mutex<Set<String>>([])

    init(network: TestNamespace? = nil) throws {
        try ensureInstalled(["/usr/sbin/dockerd": "docker.io", "/usr/bin/skopeo": "skopeo", "/usr/bin/umoci": "umoci"])
        cli = try VesselCLI()
        let dir = cli.directory
        try BusyboxImage.archive(at: dir + "/busybox.tar", name: "busybox:vessel", in: dir)
        try """
        {"runtimes": {"vessel": {"path": "\(VesselCLI.binary)", "runtimeArgs": ["--config", "\(cli.config)"]}}}
        """.write(toFile: dir + "/daemon.json", atomically: true, encoding: .utf8)
        socket = dir + "/docker.sock"
        let networking =
            network == nil
            ? ["--iptables=false", "--ip-masq=false", "--ip-forward=false", "--bridge=none"]
            : ["--iptables=true", "--ip-masq=false", "--ip-forward=true"]
        let arguments =
            [
                "/usr/sbin/dockerd", "--config-file", dir + "/daemon.json", "--data-root", dir + "/data", "--exec-root", dir + "/exec",
                "--pidfile", dir + "/docker.pid", "-H", "unix://" + socket, "--storage-driver", "vfs",
                "--exec-opt", "native.cgroupdriver=cgroupfs", "--userland-proxy=false",
            ] + networking
        daemon = try ChildProcess(
            network.map { ["/usr/bin/nsenter", "--net=" + $0.path] + arguments } ?? arguments,
            environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"], stdout: .file(dir + "/dockerd.log"), stderr: .stdout)
        let up = waitUntil(timeout: 120, every: 0.1) { (try? docker(["version"]))?.status == 0 }
        guard up else {
            throw TestSupportError(
                "dockerd did not come up: \((try? String(contentsOfFile: dir + "/dockerd.log", encoding: .utf8))?.suffix(2000) ?? "")")
        }
        let load = try docker(["load", "-i", dir + "/busybox.tar"])
        guard load.status == 0 else { throw TestSupportError("docker load: \(load.output)") }
    }

    @discardableResult
    func docker(_ arguments: [String]) throws -> CommandResult {
        try command(["/usr/bin/docker", "-H", "unix://" + socket] + arguments)
    }

    /// Where docker's shim has `vessel` keep its state (`--root`): `<exec-root>/runtime-<name>/<namespace>`.
    /// Where vessel keeps container `id`'s state (`--root`/ID/state.json) while it exists: below
    /// docker's exec root, or containerd's runc default where docker passes no root. The root is
    /// remembered for `expectNoContainersLeft`.
    func stateDirectory(of id: String) -> String? {
        for base in [cli.directory + "/exec", "/run/containerd/runc", "/run/vessel"] {
            guard let walker = FileManager.default.enumerator(atPath: base) else { continue }
            while let path = walker.nextObject() as? String {
                if walker.level >= 4 { walker.skipDescendants() }
                let file = URL(fileURLWithPath: base + "/" + path)
                guard file.lastPathComponent == "state.json", file.deletingLastPathComponent().lastPathComponent == id else { continue }
                let directory = file.deletingLastPathComponent()
                roots.withLock { _ = $0.insert(directory.deletingLastPathComponent().path) }
                return directory.path
            }
        }
        return nil
    }

    func expectNoContainersLeft(sourceLocation: SourceLocation = #_sourceLocation) {
        let found = roots.withLock { $0 }
        #expect(!found.isEmpty, "vessel's state was never seen: nothing to check", sourceLocation: sourceLocation)
        for root in found.sorted() {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
            #expect(entries.isEmpty, "containers left in \(root): \(entries)", sourceLocation: sourceLocation)
        }
    }

    func stop() {
        if !daemon.stop(grace: 60) { Issue.record("dockerd still running 60 s after SIGTERM: killed") }
        _ = try? command(["/bin/umount", "--recursive", "--lazy", cli.directory + "/exec"])
        _ = try? command(["/bin/umount", "--recursive", "--lazy", cli.directory + "/data"])
        cli.cleanUp()
    }
}

/// The callers' own networks, each in a network namespace of the test's own (no packet leaves it).
@Suite(
    .serialized, .timeLimit(.minutes(10)),
    .enabled(if: VesselCLI.guestAvailable, "VESSEL_KERNEL/VESSEL_INITRD not set (make test sets them)"))
struct CallerNetworkTests {
    /// podman 4.3 with netavark: `-p 18080:80` reaches busybox httpd in the VM.
    @Test func podmanPublishesAPort() throws {
        try ensureInstalled([
            "/usr/bin/podman": "podman", "/usr/bin/conmon": "conmon", "/usr/lib/podman/netavark": "netavark",
            "/usr/sbin/iptables": "iptables", "/usr/bin/curl": "curl",
        ])
        let node = try TestNamespace("vpodman")
        defer { node.delete() }
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let dir = cli.directory
        try BusyboxRootfs.make(at: dir + "/rootfs")
        try FileManager.default.createDirectory(atPath: dir + "/rootfs/www", withIntermediateDirectories: true)
        try "hello-through-podman\n".write(toFile: dir + "/rootfs/www/index.html", atomically: true, encoding: .utf8)
        try """
        [containers]
        default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
        [engine]
        cgroup_manager = "cgroupfs"
        events_logger = "file"
        [network]
        network_backend = "netavark"
        network_config_dir = "\(dir)/networks"
        """.write(toFile: dir + "/containers.conf", atomically: true, encoding: .utf8)
        let podman = [
            "/usr/bin/nsenter", "--net=" + node.path, "/usr/bin/podman", "--root", dir + "/storage", "--runroot", dir + "/run",
            "--storage-driver", "vfs", "--runtime", VesselCLI.binary, "--runtime-flag", "config=" + cli.config,
        ]
        let environment = ["CONTAINERS_CONF": dir + "/containers.conf", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]
        defer { _ = try? command(podman + ["rm", "--all", "--force"], environment: environment) }
        var result = try command(
            podman + [
                "run", "-d", "--name", "web", "-p", "18080:80", "--rootfs", dir + "/rootfs",
                "httpd", "-f", "-p", "80", "-h", "/www",
            ], environment: environment)
        #expect(result.status == 0, "\(result.output)")
        let page = try node.fetch("http://10.88.0.1:18080/", until: "hello-through-podman")
        #expect(page.contains("hello-through-podman"), "\(page)")
        result = try command(podman + ["rm", "--force", "web"], environment: environment)
        #expect(result.status == 0, "\(result.output)")
    }

    /// docker 20.10 with its bridge network (its iptables rules inside the test's namespace):
    /// libnetwork configures the sandbox's network namespace from its prestart hook; `-p` answers.
    @Test func dockerPublishesAPort() throws {
        try ensureInstalled(["/usr/sbin/iptables": "iptables", "/usr/bin/curl": "curl"])
        let node = try TestNamespace("vdocker")
        defer { node.delete() }
        let docker = try DockerDaemon(network: node)
        defer { docker.stop() }
        let result = try docker.docker([
            "run", "-d", "--name", "web", "--runtime", "vessel", "-p", "18081:80", "busybox:vessel",
            "sh", "-c", "mkdir -p /www; echo hello-through-docker > /www/index.html; exec httpd -f -p 80 -h /www",
        ])
        #expect(result.status == 0, "\(result.output)")
        let id = result.output.split(separator: "\n").last.map { String($0).trimmingCharacters(in: .whitespaces) } ?? ""
        #expect(docker.stateDirectory(of: id) != nil, "no state for container \(id)")
        let page = try node.fetch("http://172.17.0.1:18081/", until: "hello-through-docker")
        #expect(page.contains("hello-through-docker"), "\(page)")
        #expect(try docker.docker(["rm", "--force", "web"]).status == 0)
        docker.expectNoContainersLeft()
    }
}
