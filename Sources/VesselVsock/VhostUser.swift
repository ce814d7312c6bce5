/// vhost-user wire format (QEMU docs/interop/vhost-user.rst): a 12-byte header (request, flags, size) then
/// `size` bytes of payload, fds as SCM_RIGHTS on the same message.
public enum VhostUserError: Error, Equatable, CustomStringConvertible {
    case badVersion(flags: UInt32)
    case payloadTooLarge(UInt32)
    case badSize(request: UInt32, size: Int)
    case unknownRequest(UInt32)
    case tooManyFds(Int)
    case unexpectedFds(request: UInt32, count: Int)
    case badQueueIndex(UInt32)
    case truncatedControl
    case invalid(String)

    public var description: String {
        switch self {
        case .badVersion(let f): return "bad vhost-user version in flags 0x\(String(f, radix: 16))"
        case .payloadTooLarge(let s): return "payload of \(s) bytes is too large"
        case .badSize(let r, let s): return "request \(r): payload size \(s) is wrong"
        case .unknownRequest(let r): return "unknown or unsupported request \(r)"
        case .tooManyFds(let n): return "\(n) fds attached (too many)"
        case .unexpectedFds(let r, let n): return "request \(r): \(n) fds attached, not the expected number"
        case .badQueueIndex(let i): return "bad queue index \(i)"
        case .truncatedControl: return "ancillary data truncated"
        case .invalid(let s): return s
        }
    }
}

enum VhostUserRequest: UInt32 {
    case getFeatures = 1
    case setFeatures = 2
    case setOwner = 3
    case resetOwner = 4
    case setMemTable = 5
    case setLogBase = 6
    case setLogFd = 7
    case setVringNum = 8
    case setVringAddr = 9
    case setVringBase = 10
    case getVringBase = 11
    case setVringKick = 12
    case setVringCall = 13
    case setVringErr = 14
    case getProtocolFeatures = 15
    case setProtocolFeatures = 16
    case getQueueNum = 17
    case setVringEnable = 18
    case getConfig = 24
    case setConfig = 25
}

struct VhostUserHeader: Equatable {
    static let size = 12
    static let version: UInt32 = 0x1
    static let versionMask: UInt32 = 0x3
    static let replyFlag: UInt32 = 0x4
    static let needReplyFlag: UInt32 = 0x8
    /// Largest payload we accept: SET_MEM_TABLE with 8 regions is 264 bytes, GET_CONFIG at most 12 + 256.
    static let maxPayload: UInt32 = 4096
    static let maxFds = 8

    var request: UInt32
    var flags: UInt32
    var size: UInt32

    init(request: UInt32, flags: UInt32, size: UInt32) {
        self.request = request
        self.flags = flags
        self.size = size
    }

    init(bytes p: UnsafeRawPointer) {
        request = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        flags = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        size = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
    }

    func validate() throws(VhostUserError) {
        guard flags & VhostUserHeader.versionMask == VhostUserHeader.version else { throw .badVersion(flags: flags) }
        guard size <= VhostUserHeader.maxPayload else { throw .payloadTooLarge(size) }
    }
}

/// Feature bits.
enum VhostFeature {
    static let versionOne: UInt64 = 1 << 32
    static let protocolFeatures: UInt64 = 1 << 30
    static let offered: UInt64 = versionOne | protocolFeatures

    static let protocolMQ: UInt64 = 1 << 0
    static let protocolConfig: UInt64 = 1 << 9
    /// QEMU's vhost-user-vsock requires CONFIG (the CID comes from GET_CONFIG); MQ as in the feasibility run.
    static let protocolOffered: UInt64 = protocolMQ | protocolConfig
}

enum VhostUserMessage: Equatable {
    case getFeatures
    case setFeatures(UInt64)
    case setOwner
    case resetOwner
    case setMemTable([MemoryRegionInfo], fds: [Int32])
    case setVringNum(index: UInt32, num: UInt32)
    case setVringAddr(index: UInt32, flags: UInt32, desc: UInt64, used: UInt64, avail: UInt64, log: UInt64)
    case setVringBase(index: UInt32, num: UInt32)
    case getVringBase(index: UInt32)
    case setVringKick(index: UInt32, fd: Int32?)
    case setVringCall(index: UInt32, fd: Int32?)
    case setVringErr(index: UInt32, fd: Int32?)
    case getProtocolFeatures
    case setProtocolFeatures(UInt64)
    case getQueueNum
    case setVringEnable(index: UInt32, enable: Bool)
    case getConfig(offset: UInt32, size: UInt32, flags: UInt32)
    case setConfig(offset: UInt32, size: UInt32)

    var fds: [Int32] {
        switch self {
        case .setMemTable(_, let fds): return fds
        case .setVringKick(_, let fd), .setVringCall(_, let fd), .setVringErr(_, let fd): return fd.map { [$0] } ?? []
        default: return []
        }
    }

    /// Decodes a complete message. On error the caller still owns (and must close) `fds`.
    static func decode(header: VhostUserHeader, payload: [UInt8], fds: [Int32]) throws(VhostUserError) -> VhostUserMessage {
        try header.validate()
        guard payload.count == Int(header.size) else { throw .badSize(request: header.request, size: payload.count) }
        guard fds.count <= VhostUserHeader.maxFds else { throw .tooManyFds(fds.count) }
        guard let req = VhostUserRequest(rawValue: header.request) else { throw .unknownRequest(header.request) }
        let r = header.request
        func size(_ n: Int) throws(VhostUserError) {
            guard payload.count == n else { throw .badSize(request: r, size: payload.count) }
        }
        func noFds() throws(VhostUserError) {
            guard fds.isEmpty else { throw .unexpectedFds(request: r, count: fds.count) }
        }
        func u32(_ o: Int) -> UInt32 {
            UInt32(payload[o]) | UInt32(payload[o + 1]) << 8 | UInt32(payload[o + 2]) << 16 | UInt32(payload[o + 3]) << 24
        }
        func u64(_ o: Int) -> UInt64 { UInt64(u32(o)) | UInt64(u32(o + 4)) << 32 }
        func queue(_ i: UInt32) throws(VhostUserError) -> UInt32 {
            guard i < 2 else { throw .badQueueIndex(i) }
            return i
        }
        switch req {
        case .getFeatures, .getProtocolFeatures, .getQueueNum, .setOwner, .resetOwner:
            try noFds()
            // Some front-ends send an 8-byte zero payload with GET requests; accept 0 or 8.
            guard payload.isEmpty || payload.count == 8 else { throw .badSize(request: r, size: payload.count) }
            switch req {
            case .getFeatures: return .getFeatures
            case .getProtocolFeatures: return .getProtocolFeatures
            case .getQueueNum: return .getQueueNum
            case .setOwner: return .setOwner
            default: return .resetOwner
            }
        case .setFeatures:
            try noFds()
            try size(8)
            return .setFeatures(u64(0))
        case .setProtocolFeatures:
            try noFds()
            try size(8)
            return .setProtocolFeatures(u64(0))
        case .setMemTable:
            guard payload.count >= 8 else { throw .badSize(request: r, size: payload.count) }
            let n = Int(u32(0))
            guard n >= 1, n <= VhostUserHeader.maxFds else { throw .invalid("SET_MEM_TABLE with \(n) regions") }
            try size(8 + 32 * n)
            guard fds.count == n else { throw .unexpectedFds(request: r, count: fds.count) }
            var regions: [MemoryRegionInfo] = []
            for i in 0..<n {
                let o = 8 + 32 * i
                regions.append(
                    MemoryRegionInfo(
                        guestPhysAddr: u64(o), size: u64(o + 8), userAddr: u64(o + 16),
                        mmapOffset: u64(o + 24)))
            }
            return .setMemTable(regions, fds: fds)
        case .setVringNum, .setVringBase, .getVringBase, .setVringEnable:
            try noFds()
            try size(8)
            let i = try queue(u32(0))
            switch req {
            case .setVringNum: return .setVringNum(index: i, num: u32(4))
            case .setVringBase: return .setVringBase(index: i, num: u32(4))
            case .getVringBase: return .getVringBase(index: i)
            default:
                guard u32(4) <= 1 else { throw .invalid("SET_VRING_ENABLE with \(u32(4))") }
                return .setVringEnable(index: i, enable: u32(4) == 1)
            }
        case .setVringAddr:
            try noFds()
            try size(40)
            let i = try queue(u32(0))
            return .setVringAddr(index: i, flags: u32(4), desc: u64(8), used: u64(16), avail: u64(24), log: u64(32))
        case .setVringKick, .setVringCall, .setVringErr:
            try size(8)
            let v = u64(0)
            guard v & ~UInt64(0x1ff) == 0 else { throw .invalid("bad vring fd payload 0x\(String(v, radix: 16))") }
            let i = try queue(UInt32(v & 0xff))
            let noFd = v & 0x100 != 0
            guard fds.count == (noFd ? 0 : 1) else { throw .unexpectedFds(request: r, count: fds.count) }
            let fd = fds.first
            switch req {
            case .setVringKick: return .setVringKick(index: i, fd: fd)
            case .setVringCall: return .setVringCall(index: i, fd: fd)
            default: return .setVringErr(index: i, fd: fd)
            }
        case .getConfig, .setConfig:
            try noFds()
            guard payload.count >= 12 else { throw .badSize(request: r, size: payload.count) }
            let cfgSize = u32(4)
            guard cfgSize <= 256, payload.count == 12 + Int(cfgSize) else { throw .badSize(request: r, size: payload.count) }
            if req == .getConfig { return .getConfig(offset: u32(0), size: cfgSize, flags: u32(8)) }
            return .setConfig(offset: u32(0), size: cfgSize)
        case .setLogBase, .setLogFd:
            throw .unknownRequest(r)  // LOG_SHMFD is not offered
        }
    }

    /// Encodes a request (the front-end side; used by tests).
    static func encodeRequest(_ request: UInt32, payload: [UInt8] = [], flags: UInt32 = VhostUserHeader.version) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(12 + payload.count)
        appendLE(&out, request)
        appendLE(&out, flags)
        appendLE(&out, UInt32(payload.count))
        out += payload
        return out
    }
}

func appendLE<T: FixedWidthInteger>(_ out: inout [UInt8], _ v: T) {
    var x = v.littleEndian
    withUnsafeBytes(of: &x) { out.append(contentsOf: $0) }
}

func replyBytes(request: UInt32, payload: [UInt8]) -> [UInt8] {
    VhostUserMessage.encodeRequest(request, payload: payload, flags: VhostUserHeader.version | VhostUserHeader.replyFlag)
}
