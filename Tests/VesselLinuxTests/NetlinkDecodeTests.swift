import Testing

@testable import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// The rtnetlink answer decoders without a socket, on inputs found by fuzzing (Fuzz/, fuzz-netlink).
@Suite(.timeLimit(.minutes(1)))
struct NetlinkDecodeTests {
    /// An NLMSG_ERROR answering request 7 with `code` as its error, then the echoed request header.
    func errorAnswer(_ code: UInt32) -> [UInt8] {
        NetlinkBytes.u32(36) + NetlinkBytes.u16(2) + NetlinkBytes.u16(0) + NetlinkBytes.u32(7) + NetlinkBytes.u32(0)
            + NetlinkBytes.u32(code) + [UInt8](repeating: 0, count: 16)
    }

    func collect(_ datagram: [UInt8], dump: Bool = false) throws(LinuxError) -> Bool {
        var answers: [NetlinkMessage] = []
        return try RouteNetlink.collect(datagram[...], sequence: 7, dump: dump, what: "test", into: &answers)
    }

    /// Int32.min as the error trapped on its negation (Fuzz/Corpus/netlink/crash-error-code-int32-min).
    @Test func errorThatIsNoErrnoIsEPROTO() throws {
        for code: UInt32 in [0x8000_0000, 5] {
            #expect(throws: LinuxError(stage: "netlink", errno: EPROTO, detail: "test")) {
                try collect(errorAnswer(code))
            }
        }
        #expect(throws: LinuxError(stage: "netlink", errno: ENODEV, detail: "test")) {
            try collect(errorAnswer(UInt32(bitPattern: -ENODEV)))
        }
        #expect(try collect(errorAnswer(0)))
        #expect(try !collect(errorAnswer(0), dump: true))
    }

    @Test func linkFromADumpAnswer() throws {
        let kind = NetlinkAttribute(18, nested: [NetlinkAttribute(1, string: "veth")])
        let body =
            [0, 0] + NetlinkBytes.u16(1) + NetlinkBytes.i32(2) + NetlinkBytes.u32(0x1043) + NetlinkBytes.u32(0)
            + NetlinkAttribute.encode([NetlinkAttribute(3, string: "eth0"), NetlinkAttribute(4, u32: 1500), kind])
        let message = NetlinkMessage(type: 16, flags: 2, sequence: 7, body: body)
        let link = try #require(RouteNetlink.link(message))
        #expect(link.index == 2 && link.name == "eth0" && link.mtu == 1500 && link.kind == "veth" && link.isUp)
        // Too short for its family header: not a link, not a trap.
        #expect(RouteNetlink.link(NetlinkMessage(type: 16, flags: 2, sequence: 7, body: [0, 0, 0])) == nil)
        #expect(RouteNetlink.route(NetlinkMessage(type: 24, flags: 2, sequence: 7, body: [2])) == nil)
    }
}
