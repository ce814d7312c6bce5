import Foundation
import Testing
import VesselLinux
import VesselTestSupport

/// The rtnetlink codec against the real kernel, in a network namespace of the test's own.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct NetlinkTests {
    /// `ip netns add` (the test's own namespace, removed after); returns an fd to it.
    func withNamespace(_ body: (String, Int32) throws -> Void) throws {
        let name = "vessel-nl-\(getpid())"
        #expect(shell("ip netns add \(name)") == 0)
        defer { _ = shell("ip netns del \(name)") }
        let fd = open("/run/netns/" + name, O_RDONLY | O_CLOEXEC)
        try #require(fd >= 0)
        defer { close(fd) }
        try body(name, fd)
    }

    @Test func linksAddressesRoutesInANamespace() throws {
        try withNamespace { _, namespace in
            let netlink = try RouteNetlink(namespace: namespace)
            let lo = try #require(try netlink.links().first { $0.isLoopback })
            #expect(lo.name == "lo" && !lo.isUp)
            try netlink.setLink(lo.index, up: true)
            #expect(try netlink.links().first { $0.isLoopback }?.isUp == true)
            let tap = try Linux.inNetworkNamespace(namespace) { () throws(LinuxError) -> Int32 in try Linux.openTap("vtap9") }
            defer { close(tap) }
            let link = try #require(try netlink.links().first { $0.name == "vtap9" })
            #expect(link.kind == "tun" && link.mac.count == 6)
            try netlink.setLink(link.index, up: true, mtu: 1400)
            try netlink.addAddress(NetworkAddress(index: link.index, family: UInt8(AF_INET), address: [10, 99, 0, 2], prefixLength: 24))
            #expect(try netlink.addresses().contains { $0.index == link.index && $0.address == [10, 99, 0, 2] && $0.prefixLength == 24 })
            #expect(try netlink.links().first { $0.index == link.index }?.mtu == 1400)
            var route = NetworkRoute()
            (route.destination, route.destinationLength, route.outputIndex, route.gateway) = (
                [10, 98, 0, 0], 16, link.index, [10, 99, 0, 1]
            )
            try netlink.addRoute(route)
            #expect(
                try netlink.routes().contains {
                    $0.destination == [10, 98, 0, 0] && $0.gateway == [10, 99, 0, 1] && $0.outputIndex == link.index
                })
            try netlink.addNeighbour(
                NetworkNeighbour(
                    index: link.index, family: UInt8(AF_INET), address: [10, 99, 0, 7],
                    mac: [2, 0, 0, 0, 0, 7], state: 0x80))
            #expect(try netlink.neighbours().contains { $0.address == [10, 99, 0, 7] && $0.mac == [2, 0, 0, 0, 0, 7] })
            // The kernel's errors come back as LinuxError with its errno.
            #expect(throws: LinuxError.self) { try netlink.setLink(99_999, up: true) }
        }
    }

    /// What arrives on the veth leaves through the tap (Kata's tcfilter): an ARP request sent
    /// from the veth's peer is read from the tap's fd.
    @Test func ingressRedirectCarriesFramesToTheTap() throws {
        try withNamespace { name, namespace in
            #expect(
                shell(
                    "ip -n \(name) link add v0 type veth peer name v1 && ip -n \(name) link set v0 up && ip -n \(name) link set v1 up "
                        + "&& ip -n \(name) addr add 10.77.0.1/24 dev v1") == 0)
            let netlink = try RouteNetlink(namespace: namespace)
            let tap = try Linux.inNetworkNamespace(namespace) { () throws(LinuxError) -> Int32 in try Linux.openTap("vtap0") }
            defer { close(tap) }
            let links = try netlink.links()
            let veth = try #require(links.first { $0.name == "v0" }), tapLink = try #require(links.first { $0.name == "vtap0" })
            #expect(veth.kind == "veth")
            try netlink.setLink(tapLink.index, up: true)
            try netlink.addIngressQdisc(veth.index)
            try netlink.redirectIngress(from: veth.index, to: tapLink.index)
            let filters = command("tc -n \(name) filter show dev v0 ingress")
            #expect(filters.contains("mirred (Egress Redirect to device vtap0)"), "\(filters)")
            _ = shell("ip netns exec \(name) /bin/busybox ping -c 1 -W 1 10.77.0.2 >/dev/null 2>&1")
            var frame = [UInt8](repeating: 0, count: 2048)
            var p = pollfd(fd: tap, events: Int16(POLLIN), revents: 0)
            var sawARP = false
            while !sawARP && poll(&p, 1, 2000) > 0 {
                let n = read(tap, &frame, frame.count)
                // After the 10-byte virtio-net header: the Ethernet header, ethertype at 12.
                sawARP = n > 24 && frame[10 + 12] == 0x08 && frame[10 + 13] == 0x06
            }
            #expect(sawARP, "the veth's ARP request never came out of the tap")
            try netlink.deleteIngressQdisc(veth.index)
            #expect(!command("tc -n \(name) qdisc show dev v0").contains("ingress"))
        }
    }

    /// Bytes from the kernel are bounded by their own lengths: truncated or lying input yields
    /// what is whole and nothing else.
    @Test func malformedMessagesAreCutShort() {
        #expect(NetlinkMessage.split([1, 2, 3][...]).isEmpty)
        #expect(NetlinkMessage.split((NetlinkBytes.u32(4000) + [UInt8](repeating: 0, count: 28))[...]).isEmpty)
        let good =
            NetlinkBytes.u32(20) + NetlinkBytes.u16(16) + NetlinkBytes.u16(0) + NetlinkBytes.u32(7) + NetlinkBytes.u32(0) + [1, 2, 3, 4]
        let messages = NetlinkMessage.split((good + NetlinkBytes.u32(99) + [0, 0])[...])
        #expect(messages.count == 1 && messages[0].type == 16 && messages[0].body == [1, 2, 3, 4])
        let attributes = NetlinkAttribute.decode(
            (NetlinkAttribute.encode([NetlinkAttribute(3, string: "eth0")]) + NetlinkBytes.u16(200) + [0, 0])[...])
        #expect(attributes.count == 1 && attributes[0].string == "eth0")
        #expect(NetlinkAttribute.decode((NetlinkBytes.u16(2) + NetlinkBytes.u16(1))[...]).isEmpty)
    }
}

@discardableResult
func shell(_ line: String) -> Int32 {
    runShell(line).status
}

func command(_ line: String) -> String {
    runShell(line + " 2>&1").output
}

/// `sh -c line` and its stdout; one still running after `timeout` s is killed and fails the test (status -1).
func runShell(_ line: String, timeout: Double = 60) -> (status: Int32, output: String) {
    do {
        let result = try runCommand(["/bin/sh", "-c", line], timeout: timeout)
        return (result.status, result.output)
    } catch {
        Issue.record("sh -c \(line): \(error)")
        return (-1, "")
    }
}
