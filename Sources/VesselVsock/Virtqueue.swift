import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// A contiguous piece of a descriptor chain, already translated to local memory.
struct Segment {
    var base: UnsafeMutableRawPointer
    var len: Int
}

/// A descriptor chain popped from the available ring: driver-readable segments then driver-writable ones.
struct DescriptorChain {
    var head: UInt16 = 0
    var readable: [Segment] = []
    var writable: [Segment] = []
    var readableLength = 0
    var writableLength = 0
    var valid = true

    init() {
        readable.reserveCapacity(8)
        writable.reserveCapacity(8)
    }

    mutating func reset(head: UInt16) {
        self.head = head
        readable.removeAll(keepingCapacity: true)
        writable.removeAll(keepingCapacity: true)
        readableLength = 0
        writableLength = 0
        valid = true
    }

    /// Copies `count` bytes starting at `offset` of the readable part to `dst`; false when too short.
    func copyReadable(offset: Int, count: Int, to dst: UnsafeMutableRawPointer) -> Bool {
        guard offset + count <= readableLength else { return false }
        return Self.forEachSpan(readable, offset: offset, count: count) { base, done, n in
            (dst + done).copyMemory(from: base, byteCount: n)
        } == count
    }

    /// Copies `count` bytes from `src` into the writable part at `offset`; false when too short.
    func copyToWritable(offset: Int, count: Int, from src: UnsafeRawPointer) -> Bool {
        guard offset + count <= writableLength else { return false }
        return Self.forEachSpan(writable, offset: offset, count: count) { base, done, n in
            base.copyMemory(from: src + done, byteCount: n)
        } == count
    }

    /// Appends iovecs for `[offset, offset+count)` of the given segments.
    static func iovecs(_ segs: [Segment], offset: Int, count: Int, into out: inout [iovec]) {
        out.removeAll(keepingCapacity: true)
        _ = forEachSpan(segs, offset: offset, count: count) { base, _, n in
            out.append(iovec(iov_base: base, iov_len: n))
        }
    }

    /// Walks `[offset, offset+count)` across the segments, handing each contiguous piece (its start,
    /// how many bytes came before it, its length) to `body`; returns the bytes covered.
    private static func forEachSpan(
        _ segs: [Segment], offset: Int, count: Int,
        _ body: (UnsafeMutableRawPointer, _ done: Int, _ n: Int) -> Void
    ) -> Int {
        var skip = offset
        var done = 0
        for s in segs where done < count {
            if skip >= s.len {
                skip -= s.len
                continue
            }
            let n = min(s.len - skip, count - done)
            body(s.base + skip, done, n)
            done += n
            skip = 0
        }
        return done
    }
}

enum VirtqueueError: Error, Equatable {
    case badSize(UInt32)
    case unmapped(String)
}

/// A split virtqueue (virtio 1.x, no EVENT_IDX, no indirect descriptors) over mapped guest memory.
/// Index reads from the driver use acquire loads; our used index is published with a release store.
final class SplitVirtqueue {
    static let descFNext: UInt16 = 1
    static let descFWrite: UInt16 = 2
    static let descFIndirect: UInt16 = 4
    static let availFNoInterrupt: UInt16 = 1

    let size: UInt16
    let desc: UnsafeMutableRawPointer
    let avail: UnsafeMutableRawPointer
    let used: UnsafeMutableRawPointer
    let memory: GuestMemory
    private(set) var lastAvailable: UInt16
    private(set) var usedIndex: UInt16
    /// The eventfd to signal the driver (-1: none). Not owned.
    var callFd: Int32 = -1
    private var pendingNotify = false
    private(set) var brokenChains = 0
    /// The driver published more entries than the ring holds: its index is garbage, and walking the "entries"
    /// would replay stale descriptors, so nothing more is taken from this queue (a device start makes a new one).
    private(set) var broken = false

    /// `translate` maps ring addresses (QEMU-virtual for vhost-user, guest-physical in tests).
    init(
        memory: GuestMemory, size: UInt32, descAddr: UInt64, availAddr: UInt64, usedAddr: UInt64,
        base: UInt16, ringAddressesAreGuestPhysical: Bool = false
    ) throws(VirtqueueError) {
        guard size > 0, size <= 32768, size & (size - 1) == 0 else { throw .badSize(size) }
        let n = UInt64(size)
        func translate(_ address: UInt64, _ length: UInt64) -> UnsafeMutableRawPointer? {
            ringAddressesAreGuestPhysical
                ? memory.translateGPA(address, length: length) : memory.translateUVA(address, length: length)
        }
        guard let d = translate(descAddr, 16 * n) else { throw .unmapped("descriptor table") }
        guard let a = translate(availAddr, 6 + 2 * n) else { throw .unmapped("available ring") }
        guard let u = translate(usedAddr, 6 + 8 * n) else { throw .unmapped("used ring") }
        self.size = UInt16(size)
        self.desc = d
        self.avail = a
        self.used = u
        self.memory = memory
        self.lastAvailable = base
        self.usedIndex = UInt16(littleEndian: GuestMemoryAtomics.loadAcquire(u + 2))
    }

    @inline(__always) var availableIndex: UInt16 { UInt16(littleEndian: GuestMemoryAtomics.loadAcquire(avail + 2)) }

    var hasAvailable: Bool { !broken && availableIndex != lastAvailable }

    /// Reads the chain at the next available slot without consuming it. Returns false when the ring is empty
    /// or `broken`. A malformed chain is returned with `valid == false` (consume it with length 0).
    func peek(into chain: inout DescriptorChain) -> Bool {
        guard !broken else { return false }
        let published = availableIndex
        if published == lastAvailable { return false }
        if UInt16(published &- lastAvailable) > size {
            broken = true
            return false
        }
        let slot = Int(lastAvailable % size)
        let head = UInt16(littleEndian: avail.loadUnaligned(fromByteOffset: 4 + 2 * slot, as: UInt16.self))
        chain.reset(head: head)
        var idx = head
        var count: UInt16 = 0
        while true {
            guard idx < size, count < size else {
                chain.valid = false
                break
            }
            count += 1
            let d = desc + 16 * Int(idx)
            let addr = UInt64(littleEndian: d.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
            let len = UInt32(littleEndian: d.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            let flags = UInt16(littleEndian: d.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
            let next = UInt16(littleEndian: d.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
            if flags & SplitVirtqueue.descFIndirect != 0 {
                chain.valid = false
                break
            }
            if len > 0 {
                guard let p = memory.translateGPA(addr, length: UInt64(len)) else {
                    chain.valid = false
                    break
                }
                if flags & SplitVirtqueue.descFWrite != 0 {
                    chain.writable.append(Segment(base: p, len: Int(len)))
                    chain.writableLength += Int(len)
                } else {
                    if !chain.writable.isEmpty {  // readable after writable is a driver bug
                        chain.valid = false
                        break
                    }
                    chain.readable.append(Segment(base: p, len: Int(len)))
                    chain.readableLength += Int(len)
                }
            }
            if flags & SplitVirtqueue.descFNext == 0 { break }
            idx = next
        }
        return true
    }

    /// Consumes the peeked chain and publishes it as used with `len` bytes written.
    func commit(_ chain: DescriptorChain, written len: UInt32) {
        if !chain.valid { brokenChains += 1 }
        let slot = Int(usedIndex % size)
        used.storeBytes(of: UInt32(chain.head).littleEndian, toByteOffset: 4 + 8 * slot, as: UInt32.self)
        used.storeBytes(of: len.littleEndian, toByteOffset: 8 + 8 * slot, as: UInt32.self)
        usedIndex &+= 1
        GuestMemoryAtomics.storeRelease(used + 2, usedIndex.littleEndian)
        lastAvailable &+= 1
        pendingNotify = true
    }

    /// Signals the call eventfd if anything was used since the last call and the driver did not suppress
    /// interrupts.
    func notifyIfNeeded() {
        guard pendingNotify else { return }
        pendingNotify = false
        GuestMemoryAtomics.fullFence()
        let flags = UInt16(littleEndian: GuestMemoryAtomics.loadRelaxed(avail))
        if flags & SplitVirtqueue.availFNoInterrupt == 0, callFd >= 0 {
            Linux.signal(eventFD: callFd)
        }
    }
}
