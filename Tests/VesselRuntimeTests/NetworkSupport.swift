import Foundation
import Testing
import VesselTestSupport

/// A network namespace of the test's own (`ip netns add`), removed with everything in it.
final class TestNamespace: @unchecked Sendable {
    // @unchecked: immutable.
    let name: String
    var path: String { "/run/netns/" + name }

    init(_ prefix: String) throws {
        name = "\(prefix)-\(UUID().uuidString.prefix(6).lowercased())"
        let result = try command(["/bin/ip", "netns", "add", name])
        guard result.status == 0 else { throw TestSupportError("ip netns add \(name): \(result.output)") }
        // Without loopback even the namespace's own addresses are unreachable from inside it.
        let up = try sh("ip link set lo up")
        guard up.status == 0 else {
            delete()
            throw TestSupportError("ip link set lo up in \(name): \(up.output)")
        }
    }

    /// `sh -c LINE` inside the namespace (network only: `ip netns exec` also remounts /sys).
    @discardableResult
    func sh(_ line: String, timeout: Double = 60) throws -> CommandResult {
        try command(["/usr/bin/nsenter", "--net=" + path, "/bin/sh", "-c", line], timeout: timeout)
    }

    func delete() {
        _ = try? command(["/bin/ip", "netns", "del", name])
    }

    /// A veth pair: `inside` (with `address`, e.g. 10.55.0.2/24) here, `outside` in `peer`
    /// (with `peerAddress`), and a default route here through the peer.
    func link(to peer: TestNamespace, inside: String, address: String, outside: String, peerAddress: String, mtu: Int = 1500) throws {
        let gateway = peerAddress.split(separator: "/").first.map(String.init) ?? ""
        let steps = [
            "ip link add \(inside) mtu \(mtu) type veth peer name \(outside) mtu \(mtu) && ip link set \(outside) netns \(peer.name)",
            "ip addr add \(address) dev \(inside) && ip link set \(inside) up && ip link set lo up && ip route add default via \(gateway)",
        ]
        for step in steps {
            let result = try sh(step)
            guard result.status == 0 else { throw TestSupportError("\(step): \(result.output)") }
        }
        let result = try peer.sh("ip addr add \(peerAddress) dev \(outside) && ip link set \(outside) up && ip link set lo up")
        guard result.status == 0 else { throw TestSupportError("peer setup: \(result.output)") }
    }

    /// A page at http://ADDRESS:PORT/ from a server in this namespace, serving `text`; it stops
    /// when the returned server is stopped.
    func serveHTTP(_ text: String, address: String, port: Int, directory: String) throws -> HTTPServer {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try text.write(toFile: directory + "/index.html", atomically: true, encoding: .utf8)
        let server = try ChildProcess(
            [
                "/usr/bin/nsenter", "--net=" + path, "/usr/bin/python3", "-m", "http.server", "--bind", address, String(port),
                "--directory", directory,
            ], stdout: .discard, stderr: .discard)
        let handle = HTTPServer(server)
        let page = try fetch("http://\(address):\(port)/", until: text)
        guard page.contains(text) else {
            handle.stop()
            throw TestSupportError("the test's HTTP server on \(address):\(port) does not answer: \(page)")
        }
        return handle
    }

    /// curl from this namespace until the page contains `text` (servers in VMs take a while), or
    /// the last answer after `timeout` seconds.
    func fetch(_ url: String, until text: String, timeout: Double = 120) throws -> String {
        var page = ""
        try waitUntil(timeout: timeout, every: 0.2) {
            page = try sh("curl -s -m 3 \(url) 2>&1").output
            return page.contains(text)
        }
        return page
    }
}

final class HTTPServer {
    private let process: ChildProcess

    init(_ process: ChildProcess) { self.process = process }

    func stop() {
        // SIGKILL: it has nothing to clean up.
        if !process.stop(signal: SIGKILL, grace: 10) { Issue.record("HTTP server \(process.pid) survived SIGKILL") }
    }
}
