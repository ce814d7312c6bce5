import Foundation
import Testing
import VesselCore
import VesselTestSupport

/// Kubernetes' way in: containerd's CRI plugin with the `vessel` runtime handler, driven by our
/// own CRI client (Tests/Callers/cri/cri.py on grpcio, in a virtualenv of its own).
struct CRIClient {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Callers/cri/cri.py").path
    let python: String
    let socket: String
    let stubs: String

    /// A virtualenv with grpcio in the Vessel cache (pip from PyPI the first time).
    static func python() throws -> String {
        let venv = (ProcessInfo.processInfo.environment["VESSEL_CACHE"] ?? "/var/cache/vessel") + "/python-cri"
        let python = venv + "/bin/python3"
        if FileManager.default.isExecutableFile(atPath: python),
            try command([python, "-c", "import grpc, grpc_tools"], timeout: 60).status == 0
        {
            return python
        }
        var result = try command(["/usr/bin/env", "python3", "-m", "venv", venv])
        if result.status != 0 {
            try ensureInstalled(["/usr/lib/python3.11/ensurepip/__init__.py": "python3-venv"])
            result = try command(["/usr/bin/python3", "-m", "venv", venv])
        }
        guard result.status == 0 else { throw TestSupportError("python3 -m venv \(venv): \(result.output)") }
        result = try command([venv + "/bin/pip", "install", "--quiet", "grpcio", "grpcio-tools"], timeout: 600)
        guard result.status == 0 else { throw TestSupportError("pip install grpcio grpcio-tools: \(result.output.suffix(2000))") }
        return python
    }

    /// One cri.py call; its JSON answer (or the error line in `TestSupportError`).
    @discardableResult
    func call(_ arguments: [String], timeout: Double = 300) throws -> [String: Any] {
        let result = try command(
            [python, Self.script, "--socket", socket] + arguments, environment: ["VESSEL_CRI_STUBS": stubs],
            timeout: timeout)
        guard result.status == 0 else { throw TestSupportError("cri.py \(arguments.joined(separator: " ")): \(result.output)") }
        let json = result.output.firstIndex(of: "{").map { result.output[$0...] } ?? ""
        guard let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else {
            throw TestSupportError("cri.py \(arguments.joined(separator: " ")): no JSON in \(result.output)")
        }
        return object
    }

    func writeJSON(_ object: [String: Any], to path: String) throws {
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: path))
    }
}

@Suite(
    .serialized, .timeLimit(.minutes(10)),
    .enabled(if: VesselCLI.guestAvailable, "VESSEL_KERNEL/VESSEL_INITRD not set (make test sets them)"))
struct CRITests {
    /// A pod (host network: no CNI needed here) with two containers: one VM, shared namespaces,
    /// CRI-format logs, ExecSync, stats; stopping and removing the pod leaves nothing.
    @Test func aPodWithTwoContainersIsOneVM() throws {
        let containerd = try Containerd(namespace: "k8s.io")
        defer { containerd.stop() }
        let dir = containerd.directory
        let cri = CRIClient(python: try CRIClient.python(), socket: containerd.socket, stubs: dir + "/stubs")
        #expect(try cri.call(["version"])["runtime_name"] as? String == "containerd")
        let logs = dir + "/logs"
        try FileManager.default.createDirectory(atPath: logs, withIntermediateDirectories: true)
        let pod: [String: Any] = [
            "metadata": ["name": "p1", "uid": "u1", "namespace": "default"], "hostname": "vessel-pod", "log_directory": logs,
            "linux": ["security_context": ["namespace_options": ["network": 2]]],
        ]
        try cri.writeJSON(pod, to: dir + "/pod.json")
        let started = try cri.call(["runp", "--config", dir + "/pod.json", "--runtime", "vessel"])
        let podID = try #require(started["pod_sandbox_id"] as? String)
        let status = try cri.call(["inspectp", podID])["status"] as? [String: Any]
        #expect(status?["state"] as? String == "SANDBOX_READY", "\(status ?? [:])")

        var ids: [String] = []
        for name in ["c1", "c2"] {
            let container: [String: Any] = [
                "metadata": ["name": name], "image": ["image": Containerd.image], "log_path": name + ".log",
                "command": ["sh", "-c", "echo \(name)-out; echo \(name)-err >&2; exec sleep 100000"],
            ]
            try cri.writeJSON(container, to: dir + "/\(name).json")
            let created = try cri.call(["create", podID, "--config", dir + "/\(name).json", "--pod-config", dir + "/pod.json"])
            let id = try #require(created["container_id"] as? String)
            try cri.call(["start", id])
            ids.append(id)
        }
        // One sandbox owner and one QEMU for the whole pod.
        let sandbox = try containerd.sandbox(podID)
        let qemus = qemuProcesses().filter { $0.contains(containerd.store.sandboxPaths(podID).directory) }
        #expect(qemus.count == 1, "\(qemus)")
        #expect(containerd.store.loadSandbox(ids[0]) == nil, "the containers joined the pod's sandbox")
        #expect(try containerd.store.load(ids[1]).sandbox == podID)

        let exec = try cri.call(["exec-sync", ids[0], "--", "sh", "-c", "echo hi from $(hostname); exit 3"])
        #expect(exec["stdout"] as? String == "hi from vessel-pod\n" && (exec["exit_code"] as? Int) == 3, "\(exec)")
        let namespaces = try ids.map { id in
            try cri.call(["exec-sync", id, "--", "sh", "-c", "readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts"])["stdout"] as? String
        }
        #expect(namespaces[0] != nil && namespaces[0] == namespaces[1], "a pod's containers share IPC and UTS: \(namespaces)")

        let stats = try cri.call(["stats", ids[0]])["stats"] as? [String: Any]
        #expect((stats?["cpu"] as? [String: Any])?["usage_core_nano_seconds"] != nil, "\(stats ?? [:])")
        #expect((stats?["memory"] as? [String: Any])?["working_set_bytes"] != nil, "\(stats ?? [:])")

        var log = ""
        waitUntil(timeout: 5, every: 0.1) {
            log = (try? String(contentsOfFile: logs + "/c1.log", encoding: .utf8)) ?? ""
            return log.contains("c1-err")
        }
        #expect(log.contains(" stdout F c1-out") && log.contains(" stderr F c1-err"), "CRI log format: \(log)")

        try cri.call(["stopp", podID])
        let stopped = try cri.call(["inspectp", podID])["status"] as? [String: Any]
        #expect(stopped?["state"] as? String == "SANDBOX_NOTREADY")
        try cri.call(["rmp", podID])
        #expect((try cri.call(["pods"])["items"] as? [Any])?.isEmpty ?? true)
        containerd.expectNothingLeft([podID] + ids)
        _ = sandbox
    }

    /// Kubernetes' usual network: CNI's bridge (Debian's plugins) in a namespace of the test's
    /// own, where containerd runs. Pods get addresses, serve and fetch across the bridge, and
    /// reach each other; the guest's interface is the pod's.
    @Test func podsOnACNIBridgeTalkToTheHostSideAndToEachOther() throws {
        try ensureInstalled(["/usr/bin/curl": "curl", "/usr/bin/python3": "python3"])
        let node = try TestNamespace("vnode")
        defer { node.delete() }
        let containerd = try Containerd(namespace: "k8s.io", network: node)
        defer { containerd.stop() }
        let dir = containerd.directory
        let cri = CRIClient(python: try CRIClient.python(), socket: containerd.socket, stubs: dir + "/stubs")
        var pods: [(id: String, ip: String, container: String)] = []
        for name in ["a", "b"] {
            let pod: [String: Any] = [
                "metadata": ["name": "net-\(name)", "uid": "u-\(name)", "namespace": "default"], "hostname": "pod-\(name)",
                "log_directory": dir + "/logs-\(name)",
                "dns_config": ["servers": ["10.66.0.53"], "searches": ["vessel.test"], "options": ["ndots:2"]],
            ]
            try cri.writeJSON(pod, to: dir + "/pod-\(name).json")
            let started = try cri.call(["runp", "--config", dir + "/pod-\(name).json", "--runtime", "vessel"])
            let id = try #require(started["pod_sandbox_id"] as? String)
            let status = try cri.call(["inspectp", id])["status"] as? [String: Any]
            let ip = try #require((status?["network"] as? [String: Any])?["ip"] as? String)
            let container: [String: Any] = [
                "metadata": ["name": "web"], "image": ["image": Containerd.image], "log_path": "web.log",
                "command": ["sh", "-c", "mkdir -p /www; echo hello-from-pod-\(name) > /www/index.html; exec httpd -f -p 8080 -h /www"],
            ]
            try cri.writeJSON(container, to: dir + "/web-\(name).json")
            let created = try cri.call(["create", id, "--config", dir + "/web-\(name).json", "--pod-config", dir + "/pod-\(name).json"])
            let containerID = try #require(created["container_id"] as? String)
            try cri.call(["start", containerID])
            pods.append((id, ip, containerID))
        }
        #expect(pods[0].ip.hasPrefix("10.66.0.") && pods[1].ip.hasPrefix("10.66.0.") && pods[0].ip != pods[1].ip, "\(pods)")

        // The guest's eth0 has the pod's address and its route out through the bridge.
        let guest =
            try cri.call(["exec-sync", pods[0].container, "--", "sh", "-c", "ip -4 addr show eth0; ip route"])["stdout"] as? String ?? ""
        #expect(guest.contains("inet \(pods[0].ip)/24") && guest.contains("default via 10.66.0.1"), "\(guest)")

        // The files CRI wrote for the pod: its DNS and its hostname.
        let files =
            try cri.call(["exec-sync", pods[0].container, "--", "sh", "-c", "cat /etc/resolv.conf /etc/hostname"])["stdout"] as? String
            ?? ""
        #expect(files.contains("nameserver 10.66.0.53") && files.contains("search vessel.test") && files.contains("pod-a"), "\(files)")

        // Node -> pod, pod -> node (a server on the bridge's side), pod -> pod.
        let page = try node.fetch("http://\(pods[0].ip):8080/", until: "hello-from-pod-a")
        #expect(page.contains("hello-from-pod-a"), "\(page)")
        let server = try node.serveHTTP("hello-from-the-node\n", address: "10.66.0.1", port: 8081, directory: dir + "/www")
        defer { server.stop() }
        let request = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5"
        let fromPod = try cri.call(["exec-sync", pods[0].container, "--", "sh", "-c", "\(request) 10.66.0.1 8081"])["stdout"] as? String
        #expect(fromPod?.contains("hello-from-the-node") == true, "\(fromPod ?? "")")
        let podToPod =
            try cri.call(["exec-sync", pods[0].container, "--", "sh", "-c", "\(request) \(pods[1].ip) 8080"])["stdout"] as? String
        #expect(podToPod?.contains("hello-from-pod-b") == true, "\(podToPod ?? "")")

        for pod in pods {
            try cri.call(["stopp", pod.id])
            try cri.call(["rmp", pod.id])
        }
        containerd.expectNothingLeft(pods.map(\.id) + pods.map(\.container))
        let links = try node.sh("ip link show").output
        #expect(!links.contains("vtap"), "\(links)")
    }

    func qemuProcesses() -> [String] {
        HostProcesses.all().map(\.commandLine).filter { $0.hasPrefix("/usr/bin/qemu-system") }
    }
}
