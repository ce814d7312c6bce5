import Foundation
import Testing
import VesselCore
import VesselDevSupport

/// The pod's network reaches the guest: a bundle whose spec names a network namespace the test
/// prepared (veth + address + default route, as CNI leaves it). All traffic stays between two
/// namespaces the test made.
@Suite(
    .serialized, .timeLimit(.minutes(10)),
    .enabled(if: VesselCLI.guestAvailable, "VESSEL_KERNEL/VESSEL_INITRD not set (make test sets them)"))
struct NetworkTests {
    func bundle(_ cli: VesselCLI, _ args: [String], namespace: String) throws -> String {
        let dir = cli.directory + "/bundle-\(UUID().uuidString.prefix(6))"
        try OCIBundleWithNetwork.make(at: dir, args: args, namespace: namespace)
        return dir
    }

    @Test func trafficFlowsBothWaysAndTheGuestHasThePodsAddress() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let pod = try TestNamespace("vpod"), outside = try TestNamespace("vout")
        defer {
            pod.delete()
            outside.delete()
        }
        try pod.link(to: outside, inside: "eth0", address: "10.55.0.2/24", outside: "veth-out", peerAddress: "10.55.0.1/24", mtu: 1400)
        try ensureInstalled(["/usr/bin/curl": "curl", "/usr/bin/python3": "python3"])
        // (`ip`, not /sys: nsenter --net keeps the host's sysfs.)
        let mac = try pod.sh("ip link show eth0 | sed -n 's/.*link\\/ether \\([0-9a-f:]*\\).*/\\1/p'").output
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(mac.count == 17, "\(mac)")
        let bundle = try bundle(
            cli, ["sh", "-c", "mkdir -p /www; echo hello-from-the-pod > /www/index.html; exec httpd -f -p 8080 -h /www"],
            namespace: pod.path)
        var result = try cli.run(["run", "--detach", "--bundle", bundle, "n1"])
        #expect(result.status == 0, "\(result.stderr)")

        // The guest's interface is the pod's: name, MAC, MTU, address, default route.
        result = try cli.run([
            "exec", "n1", "sh", "-c", "cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu; ip -4 addr show eth0; ip route",
        ])
        #expect(result.stdout.contains(mac), "\(result.stdout) \(result.stderr)")
        #expect(result.stdout.contains("1400"), "\(result.stdout)")
        #expect(result.stdout.contains("inet 10.55.0.2/24"), "\(result.stdout)")
        #expect(result.stdout.contains("default via 10.55.0.1"), "\(result.stdout)")

        // Outside -> pod: a client in the other namespace fetches the pod's page.
        let page = try outside.fetch("http://10.55.0.2:8080/", until: "hello-from-the-pod")
        #expect(page.contains("hello-from-the-pod"), "\(page)")

        // Pod -> outside: a server on the other side answers the container.
        let server = try outside.serveHTTP("hello-from-outside\n", address: "10.55.0.1", port: 8081, directory: cli.directory + "/www")
        defer { server.stop() }
        // nc, not wget: Debian's static busybox wget can crash on its way (glibc NSS in a static binary).
        result = try cli.run(["exec", "n1", "sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 10.55.0.1 8081"])
        #expect(result.stdout.contains("hello-from-outside"), "status \(result.status): \(result.stdout) \(result.stderr)")

        // The pod's namespace holds our tap and tc state only while the sandbox lives.
        #expect(try pod.sh("ip link show").output.contains("vtap0"))
        #expect(try pod.sh("tc qdisc show dev eth0").output.contains("ingress"))
        #expect(try cli.run(["delete", "--force", "n1"]).status == 0)
        try cli.expectNothingLeft("n1")
        let links = try pod.sh("ip link show").output
        #expect(!links.contains("vtap"), "tap left: \(links)")
        let qdiscs = try pod.sh("tc qdisc show dev eth0").output
        #expect(!qdiscs.contains("ingress"), "qdisc left: \(qdiscs)")
    }

    @Test func badNetworkNamespacesAreNamed() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        var result = try cli.run(["run", "--bundle", try bundle(cli, ["true"], namespace: "/run/netns/vessel-no-such-ns"), "b1"])
        #expect(
            result.status != 0 && result.stderr.contains("linux.namespaces[4].path /run/netns/vessel-no-such-ns: statfs")
                && result.stderr.lowercased().contains("no such file"), "\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1, "one line: \(result.stderr)")
        try cli.expectNothingLeft("b1")

        let pod = try TestNamespace("vpod")
        defer { pod.delete() }
        try pod.sh("ip link add br0 type bridge && ip link set br0 up")
        result = try cli.run(["run", "--bundle", try bundle(cli, ["true"], namespace: pod.path), "b2"])
        #expect(
            result.status != 0 && result.stderr.contains("interface br0 (bridge) cannot be connected to the sandbox"), "\(result.stderr)")
        try cli.expectNothingLeft("b2")
        let qdiscs = try pod.sh("tc qdisc show").output
        let links = try pod.sh("ip link show").output
        #expect(!qdiscs.contains("ingress") && !links.contains("vtap"), "\(qdiscs) \(links)")
    }
}

enum OCIBundleWithNetwork {
    /// A busybox bundle whose spec joins the network namespace at `namespace`.
    static func make(at path: String, args: [String], namespace: String) throws {
        let namespaces: [[String: Any]] = ["pid", "mount", "uts", "ipc"].map { ["type": $0] } + [["type": "network", "path": namespace]]
        try OCIBundle.make(at: path, args: args, extra: ["linux": ["namespaces": namespaces]])
    }
}
