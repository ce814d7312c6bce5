import Synchronization
import Testing
import VesselLinux
import VesselTestSupport

@testable import VesselVsock

#if canImport(Glibc)
    import Glibc
#endif

/// A virtio driver in the test: lays out split rings in a memory buffer, posts buffers, reads used entries.
final class FakeDriver {
    static let queueSize: UInt16 = 64
    static let bufStride = 0x11000  // per-descriptor buffer (fits 64 KiB payloads)
    static let memSize = 0x10000 + 2 * Int(queueSize) * bufStride

    let mem: UnsafeMutableRawPointer
    let gpaBase: UInt64 = 0x4000_0000
    let uvaBase: UInt64
    private let ownsMemory: Bool

    struct Queue {
        var ringOffset: Int  // desc at +0, avail at +0x1000, used at +0x2000
        var bufOffset: Int
        var free: [UInt16]
        var availIdx: UInt16 = 0
        var lastUsed: UInt16 = 0
        var chainOf: [UInt16: [UInt16]] = [:]
    }
    var rx: Queue
    var tx: Queue

    /// Memory owned by the test (nil) or an existing mapping (memfd shared with a backend).
    init(mapping: UnsafeMutableRawPointer? = nil, uvaBase: UInt64 = 0x7f00_0000_0000) {
        if let mapping {
            mem = mapping
            ownsMemory = false
        } else {
            mem = UnsafeMutableRawPointer.allocate(byteCount: FakeDriver.memSize, alignment: 4096)
            mem.initializeMemory(as: UInt8.self, repeating: 0, count: FakeDriver.memSize)
            ownsMemory = true
        }
        self.uvaBase = uvaBase
        let n = Int(FakeDriver.queueSize)
        rx = Queue(ringOffset: 0, bufOffset: 0x10000, free: (0..<UInt16(n)).reversed())
        tx = Queue(ringOffset: 0x4000, bufOffset: 0x10000 + n * FakeDriver.bufStride, free: (0..<UInt16(n)).reversed())
    }

    deinit { if ownsMemory { mem.deallocate() } }

    var memory: GuestMemory {
        GuestMemory(regions: [
            (
                MemoryRegionInfo(
                    guestPhysAddr: gpaBase, size: UInt64(FakeDriver.memSize),
                    userAddr: uvaBase, mmapOffset: 0), mem
            )
        ])
    }

    func ringAddrs(_ q: Queue, uva: Bool) -> (desc: UInt64, avail: UInt64, used: UInt64) {
        let b = (uva ? uvaBase : gpaBase) + UInt64(q.ringOffset)
        return (b, b + 0x1000, b + 0x2000)
    }

    func makeQueues(memory: GuestMemory, rxBase: UInt16 = 0, txBase: UInt16 = 0) throws -> (SplitVirtqueue, SplitVirtqueue) {
        let r = ringAddrs(rx, uva: false)
        let t = ringAddrs(tx, uva: false)
        let rq = try SplitVirtqueue(
            memory: memory, size: UInt32(FakeDriver.queueSize), descAddr: r.desc, availAddr: r.avail,
            usedAddr: r.used, base: rxBase, ringAddressesAreGuestPhysical: true)
        let tq = try SplitVirtqueue(
            memory: memory, size: UInt32(FakeDriver.queueSize), descAddr: t.desc, availAddr: t.avail,
            usedAddr: t.used, base: txBase, ringAddressesAreGuestPhysical: true)
        return (rq, tq)
    }

    private func bufPtr(_ q: Queue, _ d: UInt16) -> UnsafeMutableRawPointer { mem + q.bufOffset + Int(d) * FakeDriver.bufStride }
    private func bufGPA(_ q: Queue, _ d: UInt16) -> UInt64 { gpaBase + UInt64(q.bufOffset + Int(d) * FakeDriver.bufStride) }

    private func writeDesc(_ q: Queue, _ i: UInt16, addr: UInt64, len: UInt32, flags: UInt16, next: UInt16) {
        let d = mem + q.ringOffset + 16 * Int(i)
        d.storeBytes(of: addr.littleEndian, toByteOffset: 0, as: UInt64.self)
        d.storeBytes(of: len.littleEndian, toByteOffset: 8, as: UInt32.self)
        d.storeBytes(of: flags.littleEndian, toByteOffset: 12, as: UInt16.self)
        d.storeBytes(of: next.littleEndian, toByteOffset: 14, as: UInt16.self)
    }

    private func publish(_ q: inout Queue, head: UInt16) {
        let avail = mem + q.ringOffset + 0x1000
        let slot = Int(q.availIdx % FakeDriver.queueSize)
        avail.storeBytes(of: head.littleEndian, toByteOffset: 4 + 2 * slot, as: UInt16.self)
        q.availIdx &+= 1
        GuestMemoryAtomics.storeRelease(avail + 2, q.availIdx.littleEndian)
    }

    /// Sets the raw descriptor `i` of the tx queue and publishes it (malformed-chain tests).
    func publishRawTx(addr: UInt64, len: UInt32, flags: UInt16, next: UInt16) {
        let head = tx.free.removeLast()
        writeDesc(tx, head, addr: addr, len: len, flags: flags, next: next)
        tx.chainOf[head] = [head]
        publish(&tx, head: head)
    }

    /// Publishes `idx` as the available index without posting anything (a driver lying about its ring).
    func forceAvailIdx(rx isRx: Bool, _ idx: UInt16) {
        GuestMemoryAtomics.storeRelease(mem + (isRx ? rx : tx).ringOffset + 0x1000 + 2, idx.littleEndian)
        if isRx { rx.availIdx = idx } else { tx.availIdx = idx }
    }

    /// Keeps a ring full from another thread, as a guest vCPU can: every slot names descriptor `head`, and the
    /// available index follows the used index until `stop` is set or `limit` entries were published.
    func refillForever(rx isRx: Bool, head: UInt16, stop: Flag, limit: Int) -> ThreadRunner {
        let q = isRx ? rx : tx
        let ring = Int(bitPattern: mem + q.ringOffset)
        let start = q.availIdx
        let n = FakeDriver.queueSize
        for slot in 0..<Int(n) {
            (mem + q.ringOffset + 0x1000).storeBytes(of: head.littleEndian, toByteOffset: 4 + 2 * slot, as: UInt16.self)
        }
        return ThreadRunner { [stop] in
            let base = UnsafeMutableRawPointer(bitPattern: ring)!
            var avail = start
            var published = 0
            while !stop.isSet && published < limit {
                let used = UInt16(littleEndian: GuestMemoryAtomics.loadAcquire(base + 0x2000 + 2))
                if avail &- used < n {
                    avail &+= 1
                    published += 1
                    GuestMemoryAtomics.storeRelease(base + 0x1000 + 2, avail.littleEndian)
                }
            }
        }
    }

    /// Posts `count` receive buffers: header and payload in two descriptors (as Linux 6.1 does) or one.
    func postRx(_ count: Int, payload: Int = 4096, split: Bool = true) {
        for _ in 0..<count {
            if split {
                guard rx.free.count >= 2 else { return }
                let a = rx.free.removeLast()
                let b = rx.free.removeLast()
                writeDesc(rx, a, addr: bufGPA(rx, a), len: 44, flags: 3, next: b)
                writeDesc(rx, b, addr: bufGPA(rx, b), len: UInt32(payload), flags: 2, next: 0)
                rx.chainOf[a] = [a, b]
                publish(&rx, head: a)
            } else {
                guard let a = rx.free.popLast() else { return }
                writeDesc(rx, a, addr: bufGPA(rx, a), len: UInt32(44 + payload), flags: 2, next: 0)
                rx.chainOf[a] = [a]
                publish(&rx, head: a)
            }
        }
    }

    /// Sends one packet; `split` puts header and payload in separate descriptors.
    func sendTx(_ h: VsockHeader, _ payload: [UInt8] = [], split: Bool = true) {
        var h = h
        h.len = UInt32(payload.count)
        if split || payload.isEmpty {
            let a = tx.free.removeLast()
            h.encode(to: bufPtr(tx, a))
            if payload.isEmpty {
                writeDesc(tx, a, addr: bufGPA(tx, a), len: 44, flags: 0, next: 0)
                tx.chainOf[a] = [a]
            } else {
                let b = tx.free.removeLast()
                payload.withUnsafeBytes { bufPtr(tx, b).copyMemory(from: $0.baseAddress!, byteCount: payload.count) }
                writeDesc(tx, a, addr: bufGPA(tx, a), len: 44, flags: 1, next: b)
                writeDesc(tx, b, addr: bufGPA(tx, b), len: UInt32(payload.count), flags: 0, next: 0)
                tx.chainOf[a] = [a, b]
            }
            publish(&tx, head: a)
        } else {
            let a = tx.free.removeLast()
            h.encode(to: bufPtr(tx, a))
            payload.withUnsafeBytes { (bufPtr(tx, a) + 44).copyMemory(from: $0.baseAddress!, byteCount: payload.count) }
            writeDesc(tx, a, addr: bufGPA(tx, a), len: UInt32(44 + payload.count), flags: 0, next: 0)
            tx.chainOf[a] = [a]
            publish(&tx, head: a)
        }
    }

    private func usedEntries(_ q: inout Queue) -> [(head: UInt16, len: UInt32)] {
        let used = mem + q.ringOffset + 0x2000
        let idx = UInt16(littleEndian: GuestMemoryAtomics.loadAcquire(used + 2))
        var out: [(UInt16, UInt32)] = []
        while q.lastUsed != idx {
            let slot = Int(q.lastUsed % FakeDriver.queueSize)
            let id = UInt32(littleEndian: used.loadUnaligned(fromByteOffset: 4 + 8 * slot, as: UInt32.self))
            let len = UInt32(littleEndian: used.loadUnaligned(fromByteOffset: 8 + 8 * slot, as: UInt32.self))
            out.append((UInt16(id), len))
            q.lastUsed &+= 1
        }
        return out
    }

    /// The device's published used index.
    func usedIdx(rx: Bool) -> UInt16 {
        UInt16(littleEndian: GuestMemoryAtomics.loadAcquire(mem + (rx ? self.rx : tx).ringOffset + 0x2000 + 2))
    }

    /// Frees used tx chains; returns how many.
    @discardableResult
    func reclaimTx() -> Int {
        let e = usedEntries(&tx)
        for (head, _) in e { tx.free += tx.chainOf.removeValue(forKey: head) ?? [] }
        return e.count
    }

    /// Received packets (header, payload) in order; frees their buffers.
    func receive() -> [(VsockHeader, [UInt8])] {
        var out: [(VsockHeader, [UInt8])] = []
        for (head, len) in usedEntries(&rx) {
            let descs = rx.chainOf.removeValue(forKey: head) ?? []
            var bytes: [UInt8] = []
            for d in descs {
                let dp = mem + rx.ringOffset + 16 * Int(d)
                let l = Int(UInt32(littleEndian: dp.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
                bytes += UnsafeRawBufferPointer(start: bufPtr(rx, d), count: l)
            }
            rx.free += descs
            bytes = Array(bytes.prefix(Int(len)))
            guard bytes.count >= 44 else {
                out.append((VsockHeader(), []))
                continue
            }
            let h = VsockHeader(bytes: bytes)
            out.append((h, Array(bytes[44...])))
        }
        return out
    }
}

/// A flag one thread sets and others poll.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}

/// A temporary directory for sockets (a short prefix: sun_path is 108 bytes), removed with its value.
final class TempDir {
    let path = try! temporaryDirectory("vvs")
    deinit { Linux.removeTree(path) }
}

func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    var off = 0
    while off < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, bytes.count - off) }
        if n < 0 {
            if errno == EINTR || errno == EAGAIN {
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&p, 1, 1000)
                continue
            }
            Issue.record("write failed: \(errno)")
            return
        }
        off += n
    }
}

/// Reads up to `max` bytes, waiting at most `timeoutMs`; nil on EOF, [] on timeout.
func readSome(_ fd: Int32, max: Int = 65536, timeoutMs: Int32 = 2000) -> [UInt8]? {
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    if poll(&p, 1, timeoutMs) <= 0 { return [] }
    var buf = [UInt8](repeating: 0, count: max)
    let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, max) }
    if n <= 0 { return nil }
    return Array(buf.prefix(n))
}

func readExactly(_ fd: Int32, _ count: Int, timeoutMs: Int32 = 5000) -> [UInt8] {
    var out: [UInt8] = []
    while out.count < count {
        guard let chunk = readSome(fd, max: count - out.count, timeoutMs: timeoutMs), !chunk.isEmpty else { break }
        out += chunk
    }
    return out
}

func readLine(_ fd: Int32, timeoutMs: Int32 = 5000) -> String? {
    var out: [UInt8] = []
    while true {
        guard let b = readSome(fd, max: 1, timeoutMs: timeoutMs), let c = b.first else { return nil }
        if c == UInt8(ascii: "\n") { return String(decoding: out, as: UTF8.self) }
        out.append(c)
    }
}

func setNonBlocking(_ fd: Int32) { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
