import FuzzSupport

@testable import VesselVsock

// A split virtqueue over guest memory the guest controls entirely: one or two regions (each its own
// allocation of exactly its size, so AddressSanitizer sees any access outside a region), fuzzed
// guest-physical and QEMU-virtual bases, ring addresses, queue size, starting index and contents.
// The queue is walked the way the device walks it: peek, copy the header in and out, commit.
//
// Input: size selector (bit 7: a raw u16 size, else 2^(b % 16)), flags (bit 0: two regions, bit 1:
// ring addresses are guest-physical, bit 2: ring addresses are raw u64s, else offsets from region 0),
// per region: u16 size, u64 guest-physical base, u64 QEMU-virtual base; desc/avail/used addresses,
// u16 base index, then the regions' contents (zeros where the input ends).

struct Region {
    let base: UnsafeMutableRawPointer
    let size: Int
    func contains(_ p: UnsafeMutableRawPointer, _ length: Int) -> Bool {
        let offset = base.distance(to: p)
        return offset >= 0 && length <= size && offset <= size - length
    }
}

// Only the fuzzer thread uses it.
nonisolated(unsafe) let scratch = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 16)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let sizeSelector = input.u8()
    let queueSize = sizeSelector & 0x80 != 0 ? UInt32(input.u16()) : UInt32(1) << (sizeSelector % 16)
    let flags = input.u8()
    var infos: [MemoryRegionInfo] = []
    for _ in 0..<(flags & 1 == 0 ? 1 : 2) {
        let length = UInt64(input.u16()) + 1
        infos.append(MemoryRegionInfo(guestPhysAddr: input.u64(), size: length, userAddr: input.u64(), mmapOffset: 0))
    }
    let physical = flags & 2 != 0
    func address() -> UInt64 {
        if flags & 4 != 0 { return input.u64() }
        return (physical ? infos[0].guestPhysAddr : infos[0].userAddr) &+ UInt64(input.u16())
    }
    let (descAddr, availAddr, usedAddr) = (address(), address(), address())
    let base = input.u16()

    let regions = infos.map { info in
        let p = UnsafeMutableRawPointer.allocate(byteCount: Int(info.size), alignment: 8)
        let contents = input.take(Int(info.size))
        p.initializeMemory(as: UInt8.self, repeating: 0, count: Int(info.size))
        contents.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: contents.count) }
        return Region(base: p, size: Int(info.size))
    }
    defer { for r in regions { r.base.deallocate() } }
    let memory = GuestMemory(regions: zip(infos, regions).map { ($0, $1.base) })

    guard
        let queue = try? SplitVirtqueue(
            memory: memory, size: queueSize, descAddr: descAddr, availAddr: availAddr,
            usedAddr: usedAddr, base: base, ringAddressesAreGuestPhysical: physical)
    else { return 0 }
    fuzzCheck(regions.contains { $0.contains(queue.desc, 16 * Int(queueSize)) }, "descriptor table outside memory")
    fuzzCheck(regions.contains { $0.contains(queue.avail, 6 + 2 * Int(queueSize)) }, "avail ring outside memory")
    fuzzCheck(regions.contains { $0.contains(queue.used, 6 + 8 * Int(queueSize)) }, "used ring outside memory")

    var chain = DescriptorChain()
    // The ring may be rewritten by our own used-ring writes (the guest can make the rings overlap), so
    // this walk is bounded; the device's own loops must bound themselves (fuzz-vsock-device checks).
    for _ in 0..<(4 * Int(queueSize) + 64) {
        guard queue.peek(into: &chain) else { break }
        var written: UInt32 = 0
        if chain.valid {
            for s in chain.readable + chain.writable {
                fuzzCheck(s.len > 0 && regions.contains { $0.contains(s.base, s.len) }, "segment outside memory")
            }
            fuzzCheck(chain.readableLength == chain.readable.reduce(0) { $0 + $1.len }, "readable length")
            fuzzCheck(chain.writableLength == chain.writable.reduce(0) { $0 + $1.len }, "writable length")
            fuzzCheck(chain.readable.count + chain.writable.count <= Int(queueSize), "chain longer than the ring")
            let inCount = min(chain.readableLength, 44)
            let offset = chain.readableLength > 44 ? Int(chain.readableLength % 7) : 0
            let count = min(inCount, chain.readableLength - offset)
            fuzzCheck(chain.copyReadable(offset: offset, count: count, to: scratch), "copy from a long enough chain")
            fuzzCheck(!chain.copyReadable(offset: 0, count: chain.readableLength + 1, to: scratch), "copy past the end")
            let outCount = min(chain.writableLength, 44)
            if chain.copyToWritable(offset: 0, count: outCount, from: scratch) { written = UInt32(outCount) }
            fuzzCheck(
                !chain.copyToWritable(offset: 1, count: chain.writableLength, from: scratch),
                "write past the end")
        }
        queue.commit(chain, written: written)
        queue.notifyIfNeeded()
    }
    return 0
}
