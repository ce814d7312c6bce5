import CVessel

#if canImport(Glibc)
    import Glibc
#endif

/// A network interface as rtnetlink describes it.
public struct NetworkLink: Sendable, Equatable {
    public var index: Int32
    public var name: String
    public var mac: [UInt8]
    public var mtu: UInt32
    public var flags: UInt32
    /// IFLA_INFO_KIND: "veth", "tun", "bridge"...; empty for a physical device or loopback.
    public var kind: String
    public var isUp: Bool { flags & 1 != 0 }
    public var isLoopback: Bool { flags & 8 != 0 }
}

public struct NetworkAddress: Sendable, Equatable {
    public var index: Int32
    public var family: UInt8
    public var address: [UInt8]
    public var prefixLength: UInt8

    public init(index: Int32, family: UInt8, address: [UInt8], prefixLength: UInt8) {
        (self.index, self.family, self.address, self.prefixLength) = (index, family, address, prefixLength)
    }
}

public struct NetworkRoute: Sendable, Equatable {
    public var family: UInt8 = UInt8(AF_INET)
    public var destination: [UInt8] = []
    public var destinationLength: UInt8 = 0
    public var gateway: [UInt8] = []
    public var source: [UInt8] = []
    public var outputIndex: Int32 = 0
    public var scope: UInt8 = 0
    public var table: UInt8 = 254
    public var protocolID: UInt8 = 4
    public var type: UInt8 = 1

    public init() {}
}

public struct NetworkNeighbour: Sendable, Equatable {
    public var index: Int32
    public var family: UInt8
    public var address: [UInt8]
    public var mac: [UInt8]
    public var state: UInt16

    public init(index: Int32, family: UInt8, address: [UInt8], mac: [UInt8], state: UInt16) {
        (self.index, self.family, self.address, self.mac, self.state) = (index, family, address, mac, state)
    }
}

/// rtnetlink over one NETLINK_ROUTE socket: what Vessel needs to read a network namespace and to
/// connect a tap to a veth (an ingress qdisc and a u32 filter redirecting everything). A socket
/// belongs to the network namespace it was made in, whichever thread uses it later.
public final class RouteNetlink: @unchecked Sendable {
    // @unchecked: one request at a time (callers own the value), `sequence` only changes inside one.
    private let fd: Int32
    private var sequence: UInt32 = 0

    enum Message {
        static let done: UInt16 = 3, error: UInt16 = 2
        static let newLink: UInt16 = 16, getLink: UInt16 = 18
        static let newAddress: UInt16 = 20, getAddress: UInt16 = 22
        static let newRoute: UInt16 = 24, getRoute: UInt16 = 26
        static let newNeighbour: UInt16 = 28, getNeighbour: UInt16 = 30
        static let newQdisc: UInt16 = 36, deleteQdisc: UInt16 = 37
        static let newFilter: UInt16 = 44
    }

    enum Flags {
        static let request: UInt16 = 0x1, ack: UInt16 = 0x4, dump: UInt16 = 0x300
        static let exclusive: UInt16 = 0x200, create: UInt16 = 0x400, replace: UInt16 = 0x100
    }

    /// A socket in this thread's network namespace, or in the one `namespace` (an nsfs fd) names.
    public init(namespace: Int32? = nil) throws(LinuxError) {
        if let namespace {
            fd = try Linux.inNetworkNamespace(namespace) { () throws(LinuxError) -> Int32 in try Self.open() }
        } else {
            fd = try Self.open()
        }
    }

    /// Unbound: the kernel binds it to a port id of its own at the first send.
    private static func open() throws(LinuxError) -> Int32 {
        try sys("socket(AF_NETLINK)") { socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
    }

    deinit { Glibc.close(fd) }

    /// Sends one request and collects the answers up to DONE (dumps) or the ACK; a kernel error
    /// is thrown with its errno and `what`.
    @discardableResult
    func request(
        _ type: UInt16, flags: UInt16, header: [UInt8], attributes: [NetlinkAttribute] = [], what: String
    ) throws(LinuxError)
        -> [NetlinkMessage]
    {
        sequence &+= 1
        let payload = header + NetlinkAttribute.encode(attributes)
        let message =
            NetlinkBytes.u32(UInt32(16 + payload.count)) + NetlinkBytes.u16(type) + NetlinkBytes.u16(flags | Flags.request | Flags.ack)
            + NetlinkBytes.u32(sequence) + NetlinkBytes.u32(0) + payload
        _ = try sys("sendto(netlink)", what) { message.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) } }
        var answers: [NetlinkMessage] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = try sys("recv(netlink)", what) { buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) } }
            if try Self.collect(
                buffer[0..<n], sequence: sequence, dump: flags & Flags.dump == Flags.dump, what: what,
                into: &answers)
            {
                return answers
            }
        }
    }

    /// Adds the answers to request `sequence` in one received datagram to `answers`; true once the
    /// request is answered (DONE for a dump, else the ACK). Apart from the socket so it can be fuzzed.
    static func collect(
        _ datagram: ArraySlice<UInt8>, sequence: UInt32, dump: Bool, what: String,
        into answers: inout [NetlinkMessage]
    ) throws(LinuxError) -> Bool {
        for answer in NetlinkMessage.split(datagram) where answer.sequence == sequence {
            switch answer.type {
            case Message.done:
                return true
            case Message.error:
                let code =
                    answer.body.count >= 4
                    ? Int32(bitPattern: NetlinkBytes.readU32(answer.body[...], 0)) : -EPROTO
                // The kernel sends a negative errno; anything else (Int32.min would trap on negation)
                // is no errno at all.
                if code != 0 {
                    throw LinuxError(stage: "netlink", errno: code < 0 && code != .min ? -code : EPROTO, detail: what)
                }
                // An ACK: dumps end with DONE, everything else with this.
                if !dump { return true }
            default:
                answers.append(answer)
            }
        }
        return false
    }

    // MARK: reading

    static func linkHeader(index: Int32 = 0, flags: UInt32 = 0, change: UInt32 = 0) -> [UInt8] {
        [UInt8(AF_UNSPEC), 0] + NetlinkBytes.u16(0) + NetlinkBytes.i32(index) + NetlinkBytes.u32(flags) + NetlinkBytes.u32(change)
    }

    public func links() throws(LinuxError) -> [NetworkLink] {
        try request(Message.getLink, flags: Flags.dump, header: Self.linkHeader(), what: "list links")
            .compactMap(Self.link)
    }

    // The decoders of dump answers are apart from their requests so they can be fuzzed without a socket.

    static func link(_ message: NetlinkMessage) -> NetworkLink? {
        guard message.type == Message.newLink, message.body.count >= 16 else { return nil }
        let attributes = message.attributes(after: 16)
        let kind = attributes.first { $0.type == 18 }?.nested.first { $0.type == 1 }?.string ?? ""
        return NetworkLink(
            index: Int32(bitPattern: NetlinkBytes.readU32(message.body[...], 4)),
            name: attributes.first { $0.type == 3 }?.string ?? "",
            mac: attributes.first { $0.type == 1 }?.data ?? [],
            mtu: attributes.first { $0.type == 4 }?.u32 ?? 0,
            flags: NetlinkBytes.readU32(message.body[...], 8), kind: kind)
    }

    public func addresses() throws(LinuxError) -> [NetworkAddress] {
        let header: [UInt8] = [UInt8(AF_UNSPEC), 0, 0, 0] + NetlinkBytes.u32(0)
        return try request(Message.getAddress, flags: Flags.dump, header: header, what: "list addresses")
            .compactMap(Self.address)
    }

    static func address(_ message: NetlinkMessage) -> NetworkAddress? {
        guard message.type == Message.newAddress, message.body.count >= 8 else { return nil }
        let attributes = message.attributes(after: 8)
        // IFA_LOCAL is the interface's own address on point-to-point links, IFA_ADDRESS elsewhere.
        let local = attributes.first { $0.type == 2 } ?? attributes.first { $0.type == 1 }
        guard let address = local?.data else { return nil }
        return NetworkAddress(
            index: Int32(bitPattern: NetlinkBytes.readU32(message.body[...], 4)),
            family: message.body[0], address: address, prefixLength: message.body[1])
    }

    static let routeHeaderSize = 12

    public func routes() throws(LinuxError) -> [NetworkRoute] {
        let header = [UInt8(AF_INET)] + [UInt8](repeating: 0, count: 11)
        return try request(Message.getRoute, flags: Flags.dump, header: header, what: "list routes")
            .compactMap(Self.route)
    }

    static func route(_ message: NetlinkMessage) -> NetworkRoute? {
        guard message.type == Message.newRoute, message.body.count >= Self.routeHeaderSize else { return nil }
        let b = message.body
        var route = NetworkRoute()
        (route.family, route.destinationLength, route.table) = (b[0], b[1], b[4])
        (route.protocolID, route.scope, route.type) = (b[5], b[6], b[7])
        for attribute in message.attributes(after: Self.routeHeaderSize) {
            switch attribute.type {
            case 1: route.destination = attribute.data
            case 4: route.outputIndex = Int32(bitPattern: attribute.u32 ?? 0)
            case 5: route.gateway = attribute.data
            case 7: route.source = attribute.data
            case 15: route.table = UInt8(truncatingIfNeeded: attribute.u32 ?? 254)
            default: break
            }
        }
        return route
    }

    public func neighbours() throws(LinuxError) -> [NetworkNeighbour] {
        let header = [UInt8(AF_INET), 0] + NetlinkBytes.u16(0) + NetlinkBytes.i32(0) + NetlinkBytes.u16(0) + [0, 0]
        return try request(Message.getNeighbour, flags: Flags.dump, header: header, what: "list neighbours")
            .compactMap(Self.neighbour)
    }

    static func neighbour(_ message: NetlinkMessage) -> NetworkNeighbour? {
        guard message.type == Message.newNeighbour, message.body.count >= 12 else { return nil }
        let attributes = message.attributes(after: 12)
        guard let address = attributes.first(where: { $0.type == 1 })?.data else { return nil }
        return NetworkNeighbour(
            index: Int32(bitPattern: NetlinkBytes.readU32(message.body[...], 4)),
            family: message.body[0], address: address,
            mac: attributes.first { $0.type == 2 }?.data ?? [],
            state: NetlinkBytes.readU16(message.body[...], 8))
    }

    // MARK: changing

    /// Up or down, MTU, MAC, name, or a move into another network namespace (an nsfs fd).
    public func setLink(
        _ index: Int32, up: Bool? = nil, mtu: UInt32? = nil, mac: [UInt8]? = nil, name: String? = nil,
        namespace: Int32? = nil
    ) throws(LinuxError) {
        var attributes: [NetlinkAttribute] = []
        if let mtu { attributes.append(NetlinkAttribute(4, u32: mtu)) }
        if let mac { attributes.append(NetlinkAttribute(1, mac)) }
        if let name { attributes.append(NetlinkAttribute(3, string: name)) }
        if let namespace { attributes.append(NetlinkAttribute(28, u32: UInt32(bitPattern: namespace))) }
        let header = Self.linkHeader(index: index, flags: up == true ? 1 : 0, change: up == nil ? 0 : 1)
        try request(Message.newLink, flags: 0, header: header, attributes: attributes, what: "set link \(index)")
    }

    public func addAddress(_ address: NetworkAddress) throws(LinuxError) {
        let header = [address.family, address.prefixLength, 0, 0] + NetlinkBytes.i32(address.index)
        let attributes = [NetlinkAttribute(2, address.address), NetlinkAttribute(1, address.address)]
        try request(
            Message.newAddress, flags: Flags.create | Flags.replace, header: header, attributes: attributes,
            what: "add address to link \(address.index)")
    }

    public func addRoute(_ route: NetworkRoute) throws(LinuxError) {
        let header =
            [route.family, route.destinationLength, 0, 0, route.table, route.protocolID, route.scope, route.type] + NetlinkBytes.u32(0)
        var attributes: [NetlinkAttribute] = []
        if !route.destination.isEmpty { attributes.append(NetlinkAttribute(1, route.destination)) }
        if route.outputIndex != 0 { attributes.append(NetlinkAttribute(4, u32: UInt32(bitPattern: route.outputIndex))) }
        if !route.gateway.isEmpty { attributes.append(NetlinkAttribute(5, route.gateway)) }
        if !route.source.isEmpty { attributes.append(NetlinkAttribute(7, route.source)) }
        try request(Message.newRoute, flags: Flags.create | Flags.replace, header: header, attributes: attributes, what: "add route")
    }

    public func addNeighbour(_ neighbour: NetworkNeighbour) throws(LinuxError) {
        let header =
            [neighbour.family, 0] + NetlinkBytes.u16(0) + NetlinkBytes.i32(neighbour.index) + NetlinkBytes.u16(neighbour.state) + [0, 0]
        try request(
            Message.newNeighbour, flags: Flags.create | Flags.replace, header: header,
            attributes: [NetlinkAttribute(1, neighbour.address), NetlinkAttribute(2, neighbour.mac)], what: "add neighbour")
    }

    // MARK: tc: everything that enters `from` leaves through `to`

    static let ingressHandle: UInt32 = 0xffff_0000
    static let ingressParent: UInt32 = 0xffff_fff1

    static func tcHeader(index: Int32, handle: UInt32, parent: UInt32, info: UInt32) -> [UInt8] {
        [UInt8(AF_UNSPEC), 0] + NetlinkBytes.u16(0) + NetlinkBytes.i32(index) + NetlinkBytes.u32(handle) + NetlinkBytes.u32(parent)
            + NetlinkBytes.u32(info)
    }

    public func addIngressQdisc(_ index: Int32) throws(LinuxError) {
        try request(
            Message.newQdisc, flags: Flags.create | Flags.exclusive,
            header: Self.tcHeader(index: index, handle: Self.ingressHandle, parent: Self.ingressParent, info: 0),
            attributes: [NetlinkAttribute(1, string: "ingress")], what: "add an ingress qdisc to link \(index)")
    }

    /// Its filters go with it.
    public func deleteIngressQdisc(_ index: Int32) throws(LinuxError) {
        try request(
            Message.deleteQdisc, flags: 0,
            header: Self.tcHeader(index: index, handle: Self.ingressHandle, parent: Self.ingressParent, info: 0),
            what: "delete the ingress qdisc of link \(index)")
    }

    /// A u32 filter matching every packet (one key: mask 0 at offset 0) whose action is a mirred
    /// egress redirect to `to`, on `from`'s ingress qdisc: Kata's "tcfilter" network model.
    public func redirectIngress(from: Int32, to: Int32) throws(LinuxError) {
        let ethAll: UInt32 = 0x0300  // htons(ETH_P_ALL) in the low half of tcm_info
        let selector: [UInt8] =
            [1, 0, 1, 0] + NetlinkBytes.u16(0) + NetlinkBytes.u16(0) + NetlinkBytes.u16(0) + NetlinkBytes.u16(0)
            + NetlinkBytes.u32(0) + [UInt8](repeating: 0, count: 16)
        // tc_mirred: index, capab, action (TC_ACT_STOLEN), refcnt, bindcnt, eaction (TCA_EGRESS_REDIR), ifindex.
        let mirred =
            NetlinkBytes.u32(0) + NetlinkBytes.u32(0) + NetlinkBytes.i32(4) + NetlinkBytes.i32(0) + NetlinkBytes.i32(0)
            + NetlinkBytes.i32(1) + NetlinkBytes.u32(UInt32(bitPattern: to))
        let action = NetlinkAttribute(
            1,
            nested: [
                NetlinkAttribute(1, string: "mirred"),
                NetlinkAttribute(2, nested: [NetlinkAttribute(2, mirred)]),
            ])
        let options = NetlinkAttribute(
            2,
            nested: [
                NetlinkAttribute(1, u32: 0x0001_0001), NetlinkAttribute(5, selector),
                NetlinkAttribute(7, nested: [action]),
            ])
        try request(
            Message.newFilter, flags: Flags.create | Flags.exclusive,
            header: Self.tcHeader(index: from, handle: 0, parent: Self.ingressHandle, info: 1 << 16 | ethAll),
            attributes: [NetlinkAttribute(1, string: "u32"), options], what: "redirect link \(from) to link \(to)")
    }
}

extension Linux {
    /// Runs `body` on a thread of its own that first joins the network namespace `namespace` (an
    /// nsfs fd): sockets and taps made there belong to it. The thread ends with `body`, so no
    /// other work ever runs in that namespace by accident.
    public static func inNetworkNamespace<T: Sendable>(
        _ namespace: Int32,
        _ body: @escaping @Sendable () throws(LinuxError) -> T
    ) throws(LinuxError) -> T {
        let job = NamespaceJob(namespace, body)
        let rc = runOnNewThread { job.run() }
        guard rc == 0 else { throw LinuxError(stage: "pthread_create", errno: rc) }
        return try job.result!.get()
    }

    /// Runs `body` on a new thread and waits for it to end; pthread_create's error, else 0.
    public static func runOnNewThread(_ body: @escaping @Sendable () -> Void) -> Int32 {
        final class Box {
            let body: @Sendable () -> Void
            init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        }
        var thread = pthread_t()
        let box = Unmanaged.passRetained(Box(body))
        let rc = pthread_create(
            &thread, nil,
            { arg in
                Unmanaged<Box>.fromOpaque(arg!).takeUnretainedValue().body()
                return nil
            }, box.toOpaque())
        if rc == 0 { pthread_join(thread, nil) }
        box.release()
        return rc
    }

    /// A tap device (no packet info, with virtio-net headers) in this thread's network namespace;
    /// it lives as long as an fd to it does. Returns the fd.
    public static func openTap(_ name: String) throws(LinuxError) -> Int32 {
        try cvessel("open tap", name) { vessel_tap_open(name, 0x0002 | 0x1000 | 0x4000) }
    }
}

private final class NamespaceJob<T: Sendable>: @unchecked Sendable {
    // @unchecked: `result` is written by the thread before pthread_join returns, read after.
    var result: Result<T, LinuxError>?
    let body: @Sendable () throws(LinuxError) -> T
    let namespace: Int32

    init(_ namespace: Int32, _ body: @escaping @Sendable () throws(LinuxError) -> T) {
        self.namespace = namespace
        self.body = body
    }

    func run() {
        do throws(LinuxError) {
            try cvessel("setns(CLONE_NEWNET)") { vessel_setns(namespace, 0x4000_0000) }
            result = .success(try body())
        } catch {
            result = .failure(error)
        }
    }
}
