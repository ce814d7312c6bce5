#if canImport(Glibc)
    import Glibc
#endif

/// A netlink attribute (rtattr): a type and its payload, or nested attributes.
public struct NetlinkAttribute: Sendable, Equatable {
    public var type: UInt16
    public var data: [UInt8]

    public init(_ type: UInt16, _ data: [UInt8]) {
        self.type = type
        self.data = data
    }

    public init(_ type: UInt16, string: String) { self.init(type, Array(string.utf8) + [0]) }
    public init(_ type: UInt16, u32: UInt32) { self.init(type, NetlinkBytes.u32(u32)) }
    public init(_ type: UInt16, nested: [NetlinkAttribute]) { self.init(type, NetlinkAttribute.encode(nested)) }

    /// Each attribute padded to 4 bytes, as the kernel lays them out.
    public static func encode(_ attributes: [NetlinkAttribute]) -> [UInt8] {
        var out: [UInt8] = []
        for attribute in attributes {
            out += NetlinkBytes.u16(UInt16(4 + attribute.data.count)) + NetlinkBytes.u16(attribute.type) + attribute.data
            out += [UInt8](repeating: 0, count: NetlinkBytes.padding(out.count))
        }
        return out
    }

    /// Malformed tails (a length that runs past the end) end the list: the kernel's data is
    /// trusted no further than its own lengths say.
    public static func decode(_ bytes: ArraySlice<UInt8>) -> [NetlinkAttribute] {
        var out: [NetlinkAttribute] = []
        var offset = bytes.startIndex
        while offset + 4 <= bytes.endIndex {
            let length = Int(NetlinkBytes.readU16(bytes, offset))
            let type = NetlinkBytes.readU16(bytes, offset + 2) & 0x3fff
            guard length >= 4, offset + length <= bytes.endIndex else { break }
            out.append(NetlinkAttribute(type, Array(bytes[(offset + 4)..<(offset + length)])))
            offset += length + NetlinkBytes.padding(length)
        }
        return out
    }

    public var u32: UInt32? { data.count >= 4 ? NetlinkBytes.readU32(data[...], 0) : nil }
    public var string: String { String(decoding: data.prefix { $0 != 0 }, as: UTF8.self) }
    public var nested: [NetlinkAttribute] { Self.decode(data[...]) }
}

/// Host byte order, as netlink's headers are.
public enum NetlinkBytes {
    public static func u16(_ value: UInt16) -> [UInt8] { withUnsafeBytes(of: value.littleEndian, Array.init) }
    public static func u32(_ value: UInt32) -> [UInt8] { withUnsafeBytes(of: value.littleEndian, Array.init) }
    public static func i32(_ value: Int32) -> [UInt8] { u32(UInt32(bitPattern: value)) }
    public static func padding(_ count: Int) -> Int { (4 - count % 4) % 4 }

    public static func readU16(_ bytes: ArraySlice<UInt8>, _ offset: Int) -> UInt16 {
        UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8
    }

    public static func readU32(_ bytes: ArraySlice<UInt8>, _ offset: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[offset + $1]) << (8 * UInt32($1)) }
    }
}

/// One netlink message as received: its type and the bytes after the 16-byte header.
public struct NetlinkMessage: Sendable {
    public var type: UInt16
    public var flags: UInt16
    public var sequence: UInt32
    public var body: [UInt8]

    /// Splits a datagram into messages; a length the buffer does not hold ends it.
    public static func split(_ buffer: ArraySlice<UInt8>) -> [NetlinkMessage] {
        var out: [NetlinkMessage] = []
        var offset = buffer.startIndex
        while offset + 16 <= buffer.endIndex {
            let length = Int(NetlinkBytes.readU32(buffer, offset))
            guard length >= 16, offset + length <= buffer.endIndex else { break }
            out.append(
                NetlinkMessage(
                    type: NetlinkBytes.readU16(buffer, offset + 4), flags: NetlinkBytes.readU16(buffer, offset + 6),
                    sequence: NetlinkBytes.readU32(buffer, offset + 8),
                    body: Array(buffer[(offset + 16)..<(offset + length)])))
            offset += length + NetlinkBytes.padding(length)
        }
        return out
    }

    /// The attributes after a fixed family header of `headerSize` bytes.
    public func attributes(after headerSize: Int) -> [NetlinkAttribute] {
        body.count >= headerSize ? NetlinkAttribute.decode(body[headerSize...]) : []
    }
}
