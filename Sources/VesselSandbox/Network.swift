import Foundation
import VesselCore
import VesselLinux
import VesselProtocol
import VesselVM

/// The pod's network as its caller (CNI, netavark, docker's libnetwork) configured it in the pod's
/// network namespace, connected to the guest the Kata way ("tcfilter"): a tap per interface,
/// joined to it by tc ingress redirects both ways, given to QEMU as a virtio-net device with the
/// interface's MAC and MTU; the agent then gives the guest side the interface's addresses and the
/// namespace's routes. The taps live as long as QEMU holds them.
final class PodNetwork: @unchecked Sendable {
    // @unchecked: built once, then only read; `namespace` is closed once, by `disconnect`.
    struct Endpoint {
        var link: NetworkLink
        var tapName: String
        var tapFD: Int32
        var addresses: [NetworkAddress]
    }

    let namespace: Int32
    private(set) var endpoints: [Endpoint] = []
    private(set) var routes: [NetworkRoute] = []
    private(set) var neighbours: [NetworkNeighbour] = []

    /// Interfaces the redirect can join to a tap: ethernet-like devices.
    static let connectable: Set<String> = ["veth", "macvlan", "ipvlan", "macvtap", ""]

    /// Scans the namespace `path` (or the nsfs fd `namespace`) and connects every interface but loopback.
    init(namespace fd: Int32) throws(RuntimeError) {
        namespace = fd
        do {
            try connect()
        } catch {
            disconnect()
            throw error
        }
    }

    static func open(path: String) throws(RuntimeError) -> Int32 {
        guard Linux.exists(path) else { throw .invalid("network namespace \(path): no such file") }
        do { return try Linux.open(path, O_RDONLY) } catch { throw RuntimeError(stage: "open network namespace \(path)", error) }
    }

    private func connect() throws(RuntimeError) {
        let links: [NetworkLink], addresses: [NetworkAddress]
        do {
            let netlink = try RouteNetlink(namespace: namespace)
            (links, addresses, routes, neighbours) = (
                try netlink.links(), try netlink.addresses(), try netlink.routes(), try netlink.neighbours()
            )
        } catch {
            throw RuntimeError(stage: "read the pod's network namespace", error)
        }
        for link in links where !link.isLoopback {
            guard Self.connectable.contains(link.kind), link.mac.count == 6 else {
                throw .invalid(
                    "interface \(link.name) (\(link.kind.isEmpty ? "no MAC" : link.kind)) cannot be connected to the sandbox: "
                        + "only veth, macvlan, ipvlan and physical ethernet devices can")
            }
            let tapName = "vtap\(endpoints.count)"
            let tapFD: Int32
            do {
                tapFD = try Linux.inNetworkNamespace(namespace) { () throws(LinuxError) -> Int32 in try Self.attach(link, tapName: tapName)
                }
            } catch {
                throw RuntimeError(stage: "connect interface \(link.name) to the sandbox", error)
            }
            endpoints.append(
                Endpoint(
                    link: link, tapName: tapName, tapFD: tapFD,
                    addresses: addresses.filter { $0.index == link.index && $0.family == UInt8(AF_INET) }))
        }
        routes = routes.filter { route in
            route.family == UInt8(AF_INET) && route.table == 254 && endpoints.contains { $0.link.index == route.outputIndex }
        }
        neighbours = neighbours.filter { neighbour in neighbour.state & 0x80 != 0 && endpoints.contains { $0.link.index == neighbour.index }
        }
    }

    /// In the pod's namespace: a tap like the interface (MTU), then everything arriving on either
    /// leaves through the other.
    private static func attach(_ link: NetworkLink, tapName: String) throws(LinuxError) -> Int32 {
        let tap = try Linux.openTap(tapName)
        do throws(LinuxError) {
            let netlink = try RouteNetlink()
            guard let tapLink = try netlink.links().first(where: { $0.name == tapName }) else {
                throw LinuxError(stage: "find tap", errno: ENODEV, detail: tapName)
            }
            try netlink.setLink(tapLink.index, up: true, mtu: link.mtu)
            try netlink.addIngressQdisc(link.index)
            try netlink.addIngressQdisc(tapLink.index)
            try netlink.redirectIngress(from: link.index, to: tapLink.index)
            try netlink.redirectIngress(from: tapLink.index, to: link.index)
            return tap
        } catch {
            try? RouteNetlink().deleteIngressQdisc(link.index)
            Linux.close(tap)
            throw error
        }
    }

    /// The taps as QEMU gets them (the owner closes its fds once QEMU has them).
    var devices: [NetworkDevice] {
        endpoints.map { NetworkDevice(tapFD: $0.tapFD, mac: Self.mac($0.link.mac), mtu: $0.link.mtu) }
    }

    func closeTaps() {
        for endpoint in endpoints { Linux.close(endpoint.tapFD) }
    }

    /// The interfaces' qdiscs (their filters with them); the taps went with QEMU.
    func disconnect() {
        let indexes = endpoints.map(\.link.index)
        _ = try? Linux.inNetworkNamespace(namespace) { () throws(LinuxError) -> Void in
            let netlink = try RouteNetlink()
            for index in indexes { try? netlink.deleteIngressQdisc(index) }
        }
        closeTaps()
        Linux.close(namespace)
    }

    // MARK: the guest's side, in Kata's agent types

    var guestInterfaces: [Types_Interface] {
        endpoints.map { endpoint in
            .with {
                $0.name = endpoint.link.name
                $0.device = endpoint.link.name
                $0.hwAddr = Self.mac(endpoint.link.mac)
                $0.mtu = UInt64(endpoint.link.mtu)
                $0.ipaddresses = endpoint.addresses.map { address in
                    .with {
                        $0.family = .v4
                        $0.address = Self.ip(address.address)
                        $0.mask = "\(address.prefixLength)"
                    }
                }
            }
        }
    }

    var guestRoutes: [Types_Route] {
        routes.compactMap { route in
            guard let device = endpoints.first(where: { $0.link.index == route.outputIndex })?.link.name else { return nil }
            return .with {
                $0.dest = route.destination.isEmpty ? "" : "\(Self.ip(route.destination))/\(route.destinationLength)"
                $0.gateway = route.gateway.isEmpty ? "" : Self.ip(route.gateway)
                $0.source = route.source.isEmpty ? "" : Self.ip(route.source)
                $0.device = device
                $0.scope = UInt32(route.scope)
                $0.family = .v4
            }
        }
    }

    var guestNeighbours: [Types_ARPNeighbor] {
        neighbours.compactMap { neighbour in
            guard let device = endpoints.first(where: { $0.link.index == neighbour.index })?.link.name else { return nil }
            return .with {
                $0.toIpaddress = .with {
                    $0.family = .v4
                    $0.address = Self.ip(neighbour.address)
                }
                $0.device = device
                $0.lladdr = Self.mac(neighbour.mac)
                $0.state = Int32(neighbour.state)
            }
        }
    }

    static func mac(_ bytes: [UInt8]) -> String {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
    }

    static func ip(_ bytes: [UInt8]) -> String { bytes.map(String.init).joined(separator: ".") }
}
