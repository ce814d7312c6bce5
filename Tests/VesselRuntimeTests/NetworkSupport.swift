import Foundation
import Testing

/// A network namespace of the test's own (`ip netns add`), removed with everything in it.
final class TestNamespace: @unchecked Sendable {
    // @unchecked: immutable.
    let name: String
    var path: String { "/run/netns/" + name }

    init(_ prefix: String) throws {
        name = "\(prefix)-\(UUID().uuidString.prefix(6).lowercased())"
        let result = try command(["/bin/ip", "netns", "add", name])
        guard result.status == 0 else { throw CLIError("ip netns add \(name): \(result.output)") }
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
            guard result.status == 0 else { throw CLIError("\(step): \(result.output)") }
        }
        let result = try peer.sh("ip addr add \(peerAddress) dev \(outside) && ip link set \(outside) up && ip link set lo up")
        guard result.status == 0 else { throw CLIError("peer setup: \(result.output)") }
    }
}
