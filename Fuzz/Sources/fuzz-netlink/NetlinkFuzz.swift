import FuzzSupport

@testable import VesselLinux

// A kernel answer (or anything else a peer in the pod's network namespace can send to our port)
// as one datagram: split into messages, answers collected as `request` does, and each decoded as
// links, addresses, routes and neighbours read it.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let sequence = UInt32(input.u8())
    let dump = input.bool()
    let datagram = input.rest()

    var answers: [NetlinkMessage] = []
    _ = try? RouteNetlink.collect(datagram[...], sequence: sequence, dump: dump, what: "fuzz", into: &answers)

    for message in NetlinkMessage.split(datagram[...]) + answers {
        fuzzCheck(message.body.count + 16 <= datagram.count, "message body larger than the datagram")
        _ = RouteNetlink.link(message)
        _ = RouteNetlink.address(message)
        _ = RouteNetlink.route(message)
        _ = RouteNetlink.neighbour(message)
        for header in [0, 4, 8, 12, 16] {
            for attribute in message.attributes(after: header) {
                fuzzCheck(attribute.data.count <= message.body.count, "attribute larger than its message")
                _ = attribute.u32
                _ = attribute.string
                for inner in attribute.nested {
                    _ = inner.nested.map(\.string)
                }
            }
        }
    }

    // Attributes the way the encoder writes them decode back to themselves.
    let attributes = NetlinkAttribute.decode(datagram[...]).filter { $0.data.count <= 0xfffb }
    fuzzCheck(
        NetlinkAttribute.decode(NetlinkAttribute.encode(attributes)[...]) == attributes,
        "encode/decode round trip changed the attributes")
    return 0
}
