/// The virtio-vsock packet header (`struct virtio_vsock_hdr`, 44 bytes, little-endian) and protocol constants.
public struct VsockHeader: Equatable, Sendable {
    public static let size = 44
    public static let hostCID: UInt64 = 2

    public enum Op: UInt16, Sendable {
        case invalid = 0, request = 1, response = 2, rst = 3, shutdown = 4, rw = 5, creditUpdate = 6, creditRequest = 7
    }
    public static let typeStream: UInt16 = 1
    /// SHUTDOWN flags: the sender will receive no more data / send no more data.
    public static let shutdownRcv: UInt32 = 1
    public static let shutdownSend: UInt32 = 2

    public var srcCID: UInt64 = 0
    public var dstCID: UInt64 = 0
    public var srcPort: UInt32 = 0
    public var dstPort: UInt32 = 0
    public var len: UInt32 = 0
    public var type: UInt16 = VsockHeader.typeStream
    public var op: UInt16 = 0
    public var flags: UInt32 = 0
    public var bufAlloc: UInt32 = 0
    public var fwdCnt: UInt32 = 0

    public init(
        srcCID: UInt64 = 0, dstCID: UInt64 = 0, srcPort: UInt32 = 0, dstPort: UInt32 = 0, len: UInt32 = 0,
        type: UInt16 = VsockHeader.typeStream, op: Op = .invalid, flags: UInt32 = 0, bufAlloc: UInt32 = 0,
        fwdCnt: UInt32 = 0
    ) {
        self.srcCID = srcCID
        self.dstCID = dstCID
        self.srcPort = srcPort
        self.dstPort = dstPort
        self.len = len
        self.type = type
        self.op = op.rawValue
        self.flags = flags
        self.bufAlloc = bufAlloc
        self.fwdCnt = fwdCnt
    }

    public var operation: Op { Op(rawValue: op) ?? .invalid }

    /// Decodes from 44 bytes at `p` (no alignment needed).
    public init(from p: UnsafeRawPointer) {
        srcCID = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        dstCID = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        srcPort = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt32.self))
        dstPort = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 20, as: UInt32.self))
        len = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 24, as: UInt32.self))
        type = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 28, as: UInt16.self))
        op = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 30, as: UInt16.self))
        flags = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 32, as: UInt32.self))
        bufAlloc = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 36, as: UInt32.self))
        fwdCnt = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 40, as: UInt32.self))
    }

    public init(bytes: [UInt8]) {
        precondition(bytes.count >= VsockHeader.size)
        self = bytes.withUnsafeBytes { VsockHeader(from: $0.baseAddress!) }
    }

    /// Encodes 44 bytes at `p`.
    public func encode(to p: UnsafeMutableRawPointer) {
        p.storeBytes(of: srcCID.littleEndian, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: dstCID.littleEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: srcPort.littleEndian, toByteOffset: 16, as: UInt32.self)
        p.storeBytes(of: dstPort.littleEndian, toByteOffset: 20, as: UInt32.self)
        p.storeBytes(of: len.littleEndian, toByteOffset: 24, as: UInt32.self)
        p.storeBytes(of: type.littleEndian, toByteOffset: 28, as: UInt16.self)
        p.storeBytes(of: op.littleEndian, toByteOffset: 30, as: UInt16.self)
        p.storeBytes(of: flags.littleEndian, toByteOffset: 32, as: UInt32.self)
        p.storeBytes(of: bufAlloc.littleEndian, toByteOffset: 36, as: UInt32.self)
        p.storeBytes(of: fwdCnt.littleEndian, toByteOffset: 40, as: UInt32.self)
    }

    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: VsockHeader.size)
        out.withUnsafeMutableBytes { encode(to: $0.baseAddress!) }
        return out
    }
}
