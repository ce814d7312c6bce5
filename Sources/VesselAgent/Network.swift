import VesselLinux
import VesselProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// The guest's side of the pod's network, as Kata's agent API describes it (UpdateInterface,
/// UpdateRoutes, ListInterfaces, ListRoutes, AddARPNeighbors), done with our own rtnetlink codec in
/// the pod's network namespace: the sandbox's shared one, which every container of the pod joins
/// (the agent's own namespace when there is no sandbox). A virtio-net device boots in the agent's
/// namespace and moves into the pod's with its UpdateInterface.
enum GuestNetwork {
    static func updateInterface(_ interface: Types_Interface, pod: Int32?) throws -> Types_Interface {
        let mac = try parseMAC(interface.hwAddr, field: "interface.hwAddr")
        let netlink = try RouteNetlink(namespace: pod)
        if try netlink.links().first(where: { $0.mac == mac }) == nil, let pod {
            let root = try RouteNetlink()
            guard let booted = try root.links().first(where: { $0.mac == mac }) else {
                throw AgentError.notFound("no interface with MAC \(interface.hwAddr)")
            }
            try root.setLink(booted.index, up: false, namespace: pod)
        }
        guard let link = try netlink.links().first(where: { $0.mac == mac }) else {
            throw AgentError.notFound("no interface with MAC \(interface.hwAddr)")
        }
        if !interface.name.isEmpty && interface.name != link.name {
            try netlink.setLink(link.index, up: false, name: interface.name)
        }
        if interface.mtu > 0 { try netlink.setLink(link.index, mtu: UInt32(clamping: interface.mtu)) }
        for (index, address) in interface.ipaddresses.enumerated() {
            let field = "interface.IPAddresses[\(index)]"
            guard address.family == .v4 else { throw AgentError.invalidArgument("\(field) \(address.address): the guest has no IPv6") }
            guard let prefix = UInt8(address.mask.isEmpty ? "32" : address.mask), prefix <= 32 else {
                throw AgentError.invalidArgument("\(field).mask \"\(address.mask)\" is not a prefix length")
            }
            try netlink.addAddress(
                NetworkAddress(
                    index: link.index, family: UInt8(AF_INET), address: try parseIPv4(address.address, field: field),
                    prefixLength: prefix))
        }
        try netlink.setLink(link.index, up: true)
        return try listInterfaces(pod: pod).first { $0.hwAddr == interface.hwAddr.lowercased() } ?? interface
    }

    /// Routes without a gateway first: a gateway must be reachable before a route through it.
    static func updateRoutes(_ routes: [Types_Route], pod: Int32?) throws -> [Types_Route] {
        let netlink = try RouteNetlink(namespace: pod)
        let links = try netlink.links()
        for (index, route) in routes.enumerated().sorted(by: { $0.element.gateway.isEmpty && !$1.element.gateway.isEmpty }) {
            let field = "routes[\(index)]"
            guard route.family == .v4 else { throw AgentError.invalidArgument("\(field): the guest has no IPv6") }
            var out = NetworkRoute()
            if !route.dest.isEmpty && route.dest != "default" {
                let parts = route.dest.split(separator: "/", maxSplits: 1).map(String.init)
                out.destination = try parseIPv4(parts[0], field: "\(field).dest")
                guard let length = UInt8(parts.count == 2 ? parts[1] : "32"), length <= 32 else {
                    throw AgentError.invalidArgument("\(field).dest \"\(route.dest)\" is not a CIDR")
                }
                out.destinationLength = length
            }
            if !route.gateway.isEmpty { out.gateway = try parseIPv4(route.gateway, field: "\(field).gateway") }
            if !route.source.isEmpty { out.source = try parseIPv4(route.source, field: "\(field).source") }
            if !route.device.isEmpty {
                guard let link = links.first(where: { $0.name == route.device }) else {
                    throw AgentError.notFound("\(field).device \(route.device): no such interface")
                }
                out.outputIndex = link.index
            }
            out.scope = UInt8(clamping: route.scope)
            try netlink.addRoute(out)
        }
        return try listRoutes(pod: pod)
    }

    static func addNeighbours(_ neighbours: [Types_ARPNeighbor], pod: Int32?) throws {
        let netlink = try RouteNetlink(namespace: pod)
        let links = try netlink.links()
        for (index, neighbour) in neighbours.enumerated() {
            let field = "neighbors[\(index)]"
            guard let link = links.first(where: { $0.name == neighbour.device }) else {
                throw AgentError.notFound("\(field).device \(neighbour.device): no such interface")
            }
            // NUD_PERMANENT unless told otherwise: these are the host's static entries.
            try netlink.addNeighbour(
                NetworkNeighbour(
                    index: link.index, family: UInt8(AF_INET),
                    address: try parseIPv4(neighbour.toIpaddress.address, field: "\(field).toIPAddress"),
                    mac: try parseMAC(neighbour.lladdr, field: "\(field).lladdr"),
                    state: neighbour.state == 0 ? 0x80 : UInt16(clamping: neighbour.state)))
        }
    }

    static func listInterfaces(pod: Int32?) throws -> [Types_Interface] {
        let netlink = try RouteNetlink(namespace: pod)
        let addresses = try netlink.addresses()
        return try netlink.links().map { link in
            .with {
                $0.name = link.name
                $0.device = link.name
                $0.hwAddr = link.mac.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
                $0.mtu = UInt64(link.mtu)
                $0.type = link.kind
                $0.rawFlags = link.flags
                $0.ipaddresses = addresses.filter { $0.index == link.index && $0.family == UInt8(AF_INET) }.map { address in
                    .with {
                        $0.family = .v4
                        $0.address = ipv4(address.address)
                        $0.mask = "\(address.prefixLength)"
                    }
                }
            }
        }
    }

    static func listRoutes(pod: Int32?) throws -> [Types_Route] {
        let netlink = try RouteNetlink(namespace: pod)
        let links = try netlink.links()
        return try netlink.routes().filter { $0.table == 254 }.map { route in
            .with {
                $0.dest = route.destination.isEmpty ? "" : "\(ipv4(route.destination))/\(route.destinationLength)"
                $0.gateway = route.gateway.isEmpty ? "" : ipv4(route.gateway)
                $0.source = route.source.isEmpty ? "" : ipv4(route.source)
                $0.device = links.first { $0.index == route.outputIndex }?.name ?? ""
                $0.scope = UInt32(route.scope)
                $0.family = .v4
            }
        }
    }

    static func parseIPv4(_ text: String, field: String) throws -> [UInt8] {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false).map { UInt8($0) }
        guard parts.count == 4, parts.allSatisfy({ $0 != nil }) else {
            throw AgentError.invalidArgument("\(field) \"\(text)\" is not an IPv4 address")
        }
        return parts.map { $0! }
    }

    static func parseMAC(_ text: String, field: String) throws -> [UInt8] {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map { UInt8($0, radix: 16) }
        guard parts.count == 6, parts.allSatisfy({ $0 != nil }) else {
            throw AgentError.invalidArgument("\(field) \"\(text)\" is not a MAC address")
        }
        return parts.map { $0! }
    }

    static func ipv4(_ bytes: [UInt8]) -> String { bytes.map(String.init).joined(separator: ".") }
}
