import FuzzSupport
import VesselLinux

@testable import VesselVsock

/// The guest's virtio driver for the fuzzer: split rings of 16 entries in one region, 4 KiB per
/// descriptor buffer. Everything it reads back from the rings is checked before use, because a
/// fuzzed ring layout lets the device write anywhere in the region.
final class Driver {
    static let queueSize: UInt16 = 16
    static let bufSize = 0x1000
    static let memSize = 0x10000 + 2 * Int(queueSize) * bufSize
    static let gpaBase: UInt64 = 0x4000_0000
    static let uvaBase: UInt64 = 0x7f00_0000_0000

    struct Queue {
        let ring: Int  // desc at +0, avail at +0x1000, used at +0x2000
        let buffers: Int
        var free: [UInt16] = (0..<Driver.queueSize).reversed()
        var availIdx: UInt16 = 0
        var lastUsed: UInt16 = 0
        var chainOf: [UInt16: [UInt16]] = [:]
        init(ring: Int, buffers: Int) {
            self.ring = ring
            self.buffers = buffers
        }
    }

    let mem = UnsafeMutableRawPointer.allocate(byteCount: Driver.memSize, alignment: 4096)
    var rx = Queue(ring: 0, buffers: 0x10000)
    var tx = Queue(ring: 0x4000, buffers: 0x10000 + Int(Driver.queueSize) * Driver.bufSize)

    var memory: GuestMemory {
        GuestMemory(regions: [
            (
                MemoryRegionInfo(
                    guestPhysAddr: Driver.gpaBase, size: UInt64(Driver.memSize),
                    userAddr: Driver.uvaBase, mmapOffset: 0), mem
            )
        ])
    }

    func reset() {
        mem.initializeMemory(as: UInt8.self, repeating: 0, count: Driver.memSize)
        rx = Queue(ring: 0, buffers: 0x10000)
        tx = Queue(ring: 0x4000, buffers: 0x10000 + Int(Driver.queueSize) * Driver.bufSize)
    }

    func queue(_ q: Queue, memory: GuestMemory) throws -> SplitVirtqueue {
        let base = Driver.gpaBase + UInt64(q.ring)
        return try SplitVirtqueue(
            memory: memory, size: UInt32(Driver.queueSize), descAddr: base,
            availAddr: base + 0x1000, usedAddr: base + 0x2000, base: 0,
            ringAddressesAreGuestPhysical: true)
    }

    func bufferGPA(_ q: Queue, _ d: UInt16) -> UInt64 { Driver.gpaBase + UInt64(q.buffers + Int(d) * Driver.bufSize) }
    func buffer(_ q: Queue, _ d: UInt16) -> UnsafeMutableRawPointer { mem + q.buffers + Int(d) * Driver.bufSize }

    func writeDesc(_ q: Queue, _ i: UInt16, addr: UInt64, len: UInt32, flags: UInt16, next: UInt16) {
        let d = mem + q.ring + 16 * Int(i)
        d.storeBytes(of: addr.littleEndian, toByteOffset: 0, as: UInt64.self)
        d.storeBytes(of: len.littleEndian, toByteOffset: 8, as: UInt32.self)
        d.storeBytes(of: flags.littleEndian, toByteOffset: 12, as: UInt16.self)
        d.storeBytes(of: next.littleEndian, toByteOffset: 14, as: UInt16.self)
    }

    func publish(_ q: inout Queue, head: UInt16, chain: [UInt16]) {
        q.chainOf[head] = chain
        let avail = mem + q.ring + 0x1000
        let slot = Int(q.availIdx % Driver.queueSize)
        avail.storeBytes(of: head.littleEndian, toByteOffset: 4 + 2 * slot, as: UInt16.self)
        q.availIdx &+= 1
        GuestMemoryAtomics.storeRelease(avail + 2, q.availIdx.littleEndian)
    }

    /// Header and payload in two descriptors (as Linux 6.1 posts them) or one.
    func postRx(split: Bool, payload: Int) {
        if split {
            guard rx.free.count >= 2 else { return }
            let (a, b) = (rx.free.removeLast(), rx.free.removeLast())
            writeDesc(rx, a, addr: bufferGPA(rx, a), len: 44, flags: 3, next: b)
            writeDesc(rx, b, addr: bufferGPA(rx, b), len: UInt32(payload), flags: 2, next: 0)
            publish(&rx, head: a, chain: [a, b])
        } else {
            guard let a = rx.free.popLast() else { return }
            writeDesc(rx, a, addr: bufferGPA(rx, a), len: UInt32(min(44 + payload, Driver.bufSize)), flags: 2, next: 0)
            publish(&rx, head: a, chain: [a])
        }
    }

    /// One packet: `header` as given (its len field may lie), payload in the header's descriptor or the next.
    func sendTx(_ header: VsockHeader, _ payload: [UInt8], split: Bool) {
        let needed = split && !payload.isEmpty ? 2 : 1
        guard tx.free.count >= needed else { return }
        let a = tx.free.removeLast()
        header.encode(to: buffer(tx, a))
        if needed == 2 {
            let b = tx.free.removeLast()
            payload.withUnsafeBytes { buffer(tx, b).copyMemory(from: $0.baseAddress!, byteCount: payload.count) }
            writeDesc(tx, a, addr: bufferGPA(tx, a), len: 44, flags: 1, next: b)
            writeDesc(tx, b, addr: bufferGPA(tx, b), len: UInt32(payload.count), flags: 0, next: 0)
            publish(&tx, head: a, chain: [a, b])
        } else {
            let n = min(payload.count, Driver.bufSize - 44)
            payload.withUnsafeBytes { (buffer(tx, a) + 44).copyMemory(from: $0.baseAddress!, byteCount: n) }
            writeDesc(tx, a, addr: bufferGPA(tx, a), len: UInt32(44 + n), flags: 0, next: 0)
            publish(&tx, head: a, chain: [a])
        }
    }

    /// A descriptor as the fuzzer wrote it (bad addresses, lengths, flags, loops).
    func sendRawTx(addr: UInt64, len: UInt32, flags: UInt16, next: UInt16) {
        guard let a = tx.free.popLast() else { return }
        writeDesc(tx, a, addr: addr, len: len, flags: flags, next: next)
        publish(&tx, head: a, chain: [a])
    }

    private func used(_ q: inout Queue) -> [(head: UInt16, len: UInt32)] {
        let used = mem + q.ring + 0x2000
        let idx = UInt16(littleEndian: GuestMemoryAtomics.loadAcquire(used + 2))
        var out: [(UInt16, UInt32)] = []
        var guardCount = 0
        while q.lastUsed != idx, guardCount < Int(Driver.queueSize) {
            let slot = Int(q.lastUsed % Driver.queueSize)
            let id = UInt32(littleEndian: used.loadUnaligned(fromByteOffset: 4 + 8 * slot, as: UInt32.self))
            let len = UInt32(littleEndian: used.loadUnaligned(fromByteOffset: 8 + 8 * slot, as: UInt32.self))
            out.append((UInt16(truncatingIfNeeded: id), len))
            q.lastUsed &+= 1
            guardCount += 1
        }
        return out
    }

    func reclaimTx() {
        for (head, _) in used(&tx) { tx.free += tx.chainOf.removeValue(forKey: head) ?? [] }
    }

    /// Packets the device put on the rx ring: (header, used length), with the buffers reposted to the free list.
    func receive() -> [(VsockHeader, UInt32)] {
        var out: [(VsockHeader, UInt32)] = []
        for (head, len) in used(&rx) {
            guard let descs = rx.chainOf.removeValue(forKey: head) else { continue }
            rx.free += descs
            if len >= 44 { out.append((VsockHeader(from: buffer(rx, descs[0])), len)) }
        }
        return out
    }
}
