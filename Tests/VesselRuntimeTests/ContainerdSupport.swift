import Foundation
import Testing
import VesselCore
import VesselDevSupport
import VesselTestSupport

/// A private containerd 1.6 (Debian's) with all its state in a temporary directory, Vessel's shim
/// on its PATH (the test build's `vessel` under the shim's name), the CRI plugin with a `vessel`
/// runtime handler, and a local busybox image (no registry).
final class Containerd: @unchecked Sendable {
    // @unchecked: set up once, then only read.
    static let image = "docker.io/library/busybox:vessel"
    static let runtime = "io.containerd.vessel.v2"

    let cli: VesselCLI
    let directory: String
    let socket: String
    let namespace: String
    private let daemon: ChildProcess

    /// `namespace`: containerd's for ctr ("k8s.io" is CRI's). With `network`, containerd runs in
    /// that network namespace (so does everything CNI makes: the bridge, the pods' veths) and CRI
    /// gets a bridge network (Debian's CNI plugins) with `subnet`.
    init(
        namespace: String = "vessel-\(UUID().uuidString.prefix(6).lowercased())", network: TestNamespace? = nil,
        subnet: String = "10.66.0.0/24"
    ) throws {
        try ensureInstalled(["/usr/bin/containerd": "containerd"])
        cli = try VesselCLI()
        directory = cli.directory + "/containerd"
        socket = directory + "/containerd.sock"
        self.namespace = namespace
        try FileManager.default.createDirectory(atPath: directory + "/bin", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(
            atPath: directory + "/bin/containerd-shim-vessel-v2", withDestinationPath: VesselCLI.binary)
        try """
        version = 2
        root = "\(directory)/root"
        state = "\(directory)/state"
        [grpc]
          address = "\(socket)"
        [ttrpc]
          address = "\(socket).ttrpc"
        [plugins."io.containerd.internal.v1.opt"]
          path = "\(directory)/opt"
        [plugins."io.containerd.grpc.v1.cri"]
          sandbox_image = "\(Self.image)"
          stream_server_address = "127.0.0.1"
          stream_server_port = "0"
          # This machine's root lacks CAP_SYS_RESOURCE: a negative oom score for the pause task fails.
          restrict_oom_score_adj = true
          [plugins."io.containerd.grpc.v1.cri".cni]
            conf_dir = "\(directory)/cni/net.d"
            bin_dir = "\(directory)/cni/bin"
          [plugins."io.containerd.grpc.v1.cri".containerd]
            snapshotter = "overlayfs"
            default_runtime_name = "vessel"
            [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.vessel]
              runtime_type = "\(Self.runtime)"
        """.write(toFile: directory + "/config.toml", atomically: true, encoding: .utf8)
        if network != nil {
            try ensureInstalled(["/usr/lib/cni/bridge": "containernetworking-plugins"])
            try FileManager.default.createDirectory(atPath: directory + "/cni/net.d", withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: directory + "/cni/bin", withDestinationPath: "/usr/lib/cni")
            try """
            {"cniVersion": "0.4.0", "name": "vessel-test", "plugins": [
              {"type": "bridge", "bridge": "vcni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
               "ipam": {"type": "host-local", "ranges": [[{"subnet": "\(subnet)"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
              {"type": "loopback"}
            ]}
            """.write(toFile: directory + "/cni/net.d/10-vessel.conflist", atomically: true, encoding: .utf8)
        }
        let containerd = ["/usr/bin/containerd", "--config", directory + "/config.toml"]
        // The shim gets containerd's environment: its PATH finds Vessel's shim, VESSEL_CONFIG our configuration.
        daemon = try ChildProcess(
            network.map { ["/usr/bin/nsenter", "--net=" + $0.path] + containerd } ?? containerd,
            environment: ["PATH": directory + "/bin:/usr/sbin:/usr/bin:/sbin:/bin", "VESSEL_CONFIG": cli.config],
            stdout: .file(directory + "/containerd.log"), stderr: .stdout)
        let up = waitUntil(timeout: 60, every: 0.1) {
            (try? command(["/usr/bin/ctr", "-a", socket, "version"], timeout: 10))?.status == 0
        }
        guard up else { throw TestSupportError("containerd did not come up: \(log.suffix(2000))") }
        try BusyboxImage.archive(at: directory + "/busybox.tar", name: Self.image, in: directory, cmd: ["sleep", "1000000"])
        let load = try ctr(["images", "import", directory + "/busybox.tar"])
        guard load.status == 0 else { throw TestSupportError("ctr images import: \(load.output)") }
    }

    var log: String { (try? String(contentsOfFile: directory + "/containerd.log", encoding: .utf8)) ?? "" }

    /// `ctr -a SOCKET -n NAMESPACE ARGS`.
    @discardableResult
    func ctr(_ arguments: [String], input: String? = nil, timeout: Double = 300) throws -> CommandResult {
        try command(["/usr/bin/ctr", "-a", socket, "-n", namespace] + arguments, input: input, timeout: timeout)
    }

    /// `ctr run --rm --runtime io.containerd.vessel.v2 IMAGE ID ARGS`, and its exit status.
    func run(_ id: String, _ args: [String], flags: [String] = ["--rm"], input: String? = nil) throws -> CommandResult {
        try ctr(["run"] + flags + ["--runtime", Self.runtime, Self.image, id] + args, input: input)
    }

    /// The task's STATUS column in `ctr task ls` ("" when there is no such task).
    func taskStatus(_ id: String) throws -> String {
        let listing = try ctr(["task", "ls"]).output.split(separator: "\n")
        let row = listing.first { $0.split(separator: " ", omittingEmptySubsequences: true).first.map(String.init) == id }
        return row?.split(separator: " ", omittingEmptySubsequences: true).last.map(String.init) ?? ""
    }

    func waitForStatus(_ id: String, _ status: String, timeout: Double = 60) throws -> Bool {
        try waitUntil(timeout: timeout, every: 0.2) { try taskStatus(id) == status }
    }

    /// The shim's records for this namespace (one state root per containerd namespace).
    var store: StateStore { StateStore(root: "/run/vessel-containerd/" + namespace) }

    func sandbox(_ id: String) throws -> SandboxRecord {
        guard let record = store.loadSandbox(id) else { throw TestSupportError("no sandbox record for \(id)") }
        return record
    }

    /// No owner, no QEMU, no mounts, no records of these sandboxes are left.
    func expectNothingLeft(_ sandboxes: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        var left: [String] = []
        waitUntil(timeout: 30, every: 0.2) {
            left = leftovers(sandboxes)
            return left.isEmpty
        }
        #expect(left.isEmpty, "left behind: \(left)", sourceLocation: sourceLocation)
    }

    private func leftovers(_ sandboxes: [String]) -> [String] {
        var left: [String] = []
        let directories = sandboxes.map { store.sandboxPaths($0).directory }
        for directory in directories where FileManager.default.fileExists(atPath: directory) { left.append(directory) }
        left += MountTable.lines().filter { line in directories.contains { line.contains($0) } }
        for process in HostProcesses.all() {
            let cmdline = process.commandLine
            if directories.contains(where: { cmdline.contains($0) }) || cmdline.contains("-namespace\0\(namespace)\0") {
                left.append("process \(process.pid): \(cmdline.replacingOccurrences(of: "\0", with: " ").prefix(120))")
            }
        }
        let records = (try? FileManager.default.contentsOfDirectory(atPath: store.root)) ?? []
        left += records.map { "record \(store.root)/\($0)" }
        return left
    }

    func stop() {
        if !daemon.stop(grace: 60) { Issue.record("containerd still running 60 s after SIGTERM: killed") }
        _ = try? command(["/bin/umount", "--recursive", "--lazy", directory + "/root"])
        _ = try? command(["/bin/umount", "--recursive", "--lazy", directory + "/state"])
        try? FileManager.default.removeItem(atPath: "/run/vessel-containerd/" + namespace)
        // ctr's default cgroupsPath is /<namespace>/<id>: the runtime removes the container's
        // directory (as runc does), the namespace's own is the caller's to remove, once empty.
        let hierarchies = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup")) ?? []
        for directory in ["/sys/fs/cgroup/" + namespace] + hierarchies.map({ "/sys/fs/cgroup/\($0)/" + namespace }) { rmdir(directory) }
        cli.cleanUp()
    }
}
