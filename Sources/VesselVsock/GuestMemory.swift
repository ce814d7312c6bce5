import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// One memory region as described by VHOST_USER_SET_MEM_TABLE.
public struct MemoryRegionInfo: Equatable, Sendable {
    public var guestPhysAddr: UInt64
    public var size: UInt64
    /// The address of the region in QEMU's address space (ring addresses use these).
    public var userAddr: UInt64
    public var mmapOffset: UInt64
    public init(guestPhysAddr: UInt64, size: UInt64, userAddr: UInt64, mmapOffset: UInt64) {
        self.guestPhysAddr = guestPhysAddr
        self.size = size
        self.userAddr = userAddr
        self.mmapOffset = mmapOffset
    }
}

/// Guest RAM as mapped into this process: translates guest-physical (descriptor) and QEMU-virtual (ring)
/// addresses to local pointers with bounds checks.
final class GuestMemory {
    struct Region {
        var info: MemoryRegionInfo
        var base: UnsafeMutableRawPointer
    }
    private(set) var regions: [Region]
    private var mappings: [(address: UnsafeMutableRawPointer, length: Int)] = []

    /// Regions over memory the caller owns (tests).
    init(regions: [(info: MemoryRegionInfo, base: UnsafeMutableRawPointer)]) {
        self.regions = regions.map { Region(info: $0.info, base: $0.base) }
    }

    /// Maps each region's fd (shared); the fds are closed (the mappings keep the memory).
    init(mapping infos: [MemoryRegionInfo], fds: [Int32]) throws(VhostUserError) {
        precondition(infos.count == fds.count)
        regions = []
        defer { for fd in fds { Linux.close(fd) } }
        for (info, fd) in zip(infos, fds) {
            let (total, overflow) = info.size.addingReportingOverflow(info.mmapOffset)
            guard info.size > 0, !overflow, total < (1 << 48),
                info.guestPhysAddr &+ info.size >= info.guestPhysAddr, info.userAddr &+ info.size >= info.userAddr
            else {
                unmapAll()
                throw .invalid("bad memory region \(info)")
            }
            // A region past the end of its file maps fine, then the first access there (a ring, a
            // buffer the guest points at) is a SIGBUS that takes the whole backend down.
            var st = stat()
            guard fstat(fd, &st) == 0, total <= UInt64(max(0, st.st_size)) else {
                unmapAll()
                throw .invalid("memory region \(info) extends past the end of its fd")
            }
            let mapped: UnsafeMutableRawPointer
            do {
                mapped = try Linux.mapShared(fd, length: Int(total))
            } catch {
                unmapAll()
                throw .invalid("guest memory: \(error)")
            }
            mappings.append((mapped, Int(total)))
            regions.append(Region(info: info, base: mapped + Int(info.mmapOffset)))
        }
    }

    private func unmapAll() {
        for mapping in mappings { Linux.unmap(mapping.address, length: mapping.length) }
        mappings = []
        regions = []
    }

    deinit { unmapAll() }

    /// Guest-physical addresses: what descriptors hold.
    @inline(__always)
    func translateGPA(_ addr: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        translate(addr, length: length, start: \.guestPhysAddr)
    }

    /// QEMU's virtual addresses: what SET_VRING_ADDR gives for the rings.
    func translateUVA(_ addr: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        translate(addr, length: length, start: \.userAddr)
    }

    @inline(__always)
    private func translate(_ addr: UInt64, length: UInt64, start: KeyPath<MemoryRegionInfo, UInt64>) -> UnsafeMutableRawPointer? {
        for r in regions {
            let begin = r.info[keyPath: start]
            if addr >= begin, addr - begin < r.info.size, length <= r.info.size - (addr - begin) {
                return r.base + Int(addr - begin)
            }
        }
        return nil
    }
}
