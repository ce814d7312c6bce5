import Foundation
import Testing
import VesselDevSupport
import VesselCore

/// Real callers of an OCI runtime, installed from Debian when missing, with all their state in a
/// temporary directory: podman (conmon) and dockerd 20.10 (containerd + containerd-shim-runc-v2).
@Suite(.serialized, .enabled(if: VesselCLI.guestAvailable, "VESSEL_KERNEL/VESSEL_INITRD not set (make test sets them)"))
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
        let podman = ["/usr/bin/podman", "--root", dir + "/storage", "--runroot", dir + "/run", "--storage-driver", "vfs",
                      "--runtime", VesselCLI.binary, "--runtime-flag", "config=" + cli.config]
        let environment = ["CONTAINERS_CONF": dir + "/containers.conf", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]
        // podman's cleanup (`podman container cleanup`) calls the runtime without --runtime-flag: default --root.
        let result = try command(podman + ["run", "--rm", "--cidfile", dir + "/cid", "--rootfs", dir + "/rootfs",
                                           "sh", "-c", "echo hello-podman from $(hostname); exit 7"], environment: environment)
        #expect(result.status == 7, "\(result.output)")
        #expect(result.output.contains("hello-podman from"), "\(result.output)")
        _ = try command(podman + ["rm", "--all", "--force"], environment: environment)
        let id = (try? String(contentsOfFile: dir + "/cid", encoding: .utf8)) ?? ""
        #expect(!id.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: "/run/vessel/" + id), "container state left in /run/vessel")
    }

    @Test func dockerRunsABusyboxContainer() throws {
        try ensureInstalled(["/usr/sbin/dockerd": "docker.io", "/usr/bin/skopeo": "skopeo", "/usr/bin/umoci": "umoci"])
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let dir = cli.directory
        try BusyboxImage.archive(at: dir + "/busybox.tar", name: "busybox:vessel", in: dir)
        // Its own dockerd (and the containerd it starts), all state under `dir`; the runtime gets our config.
        try """
            {"runtimes": {"vessel": {"path": "\(VesselCLI.binary)", "runtimeArgs": ["--config", "\(cli.config)"]}}}
            """.write(toFile: dir + "/daemon.json", atomically: true, encoding: .utf8)
        let socket = dir + "/docker.sock"
        let daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: "/usr/sbin/dockerd")
        daemon.arguments = ["--config-file", dir + "/daemon.json", "--data-root", dir + "/data", "--exec-root", dir + "/exec",
                            "--pidfile", dir + "/docker.pid", "-H", "unix://" + socket, "--iptables=false", "--ip-masq=false",
                            "--ip-forward=false", "--bridge=none", "--storage-driver", "vfs",
                            "--exec-opt", "native.cgroupdriver=cgroupfs", "--userland-proxy=false"]
        daemon.environment = ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]
        FileManager.default.createFile(atPath: dir + "/dockerd.log", contents: nil)
        daemon.standardOutput = FileHandle(forWritingAtPath: dir + "/dockerd.log")
        daemon.standardError = daemon.standardOutput
        try daemon.run()
        defer {
            daemon.terminate()
            daemon.waitUntilExit()
            _ = try? command(["/bin/umount", "--recursive", "--lazy", dir + "/exec"])
            _ = try? command(["/bin/umount", "--recursive", "--lazy", dir + "/data"])
        }
        let docker = ["/usr/bin/docker", "-H", "unix://" + socket]
        var up = false
        for _ in 0..<300 where !up {
            up = (try? command(docker + ["version"]))?.status == 0
            if !up { usleep(100_000) }
        }
        try #require(up, "dockerd did not come up: \((try? String(contentsOfFile: dir + "/dockerd.log", encoding: .utf8))?.suffix(2000) ?? "")")
        let load = try command(docker + ["load", "-i", dir + "/busybox.tar"])
        try #require(load.status == 0, "\(load.output)")
        let run = try command(docker + ["run", "--rm", "--runtime", "vessel", "--network", "none", "busybox:vessel",
                                        "sh", "-c", "echo hello-docker from $(hostname); exit 5"])
        #expect(run.status == 5, "\(run.output)")
        #expect(run.output.contains("hello-docker from"), "\(run.output)")
        let runtimeRoot = dir + "/exec/runtime-vessel/moby"
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: runtimeRoot)) ?? []).isEmpty, "containers left in \(runtimeRoot)")
    }
}

