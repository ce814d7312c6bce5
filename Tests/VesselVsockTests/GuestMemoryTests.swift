import Testing
import VesselLinux

@testable import VesselVsock

/// SET_MEM_TABLE regions against the fds they map; found by fuzzing (Fuzz/, fuzz-vhost-user).
@Suite(.timeLimit(.minutes(1)))
struct GuestMemoryTests {
    func region(size: UInt64, offset: UInt64 = 0) -> MemoryRegionInfo {
        MemoryRegionInfo(guestPhysAddr: 0, size: size, userAddr: 0x7f00_0000_0000, mmapOffset: offset)
    }

    /// A region larger than its memfd mapped, and the first ring access past the end was a SIGBUS
    /// (Fuzz/Corpus/vhost-user/crash-region-past-end-of-fd).
    @Test func regionPastTheEndOfItsFdIsRefused() throws {
        for info in [region(size: 1 << 20), region(size: 1 << 16, offset: 4096)] {
            let fd = try Linux.memoryFile(name: "guest-ram", size: 1 << 16)
            #expect(throws: VhostUserError.self) { _ = try GuestMemory(mapping: [info], fds: [fd]) }
        }
        let fd = try Linux.memoryFile(name: "guest-ram", size: 1 << 16)
        let memory = try GuestMemory(mapping: [region(size: 1 << 15, offset: 1 << 15)], fds: [fd])
        let p = try #require(memory.translateUVA(0x7f00_0000_0000 + (1 << 15) - 2, length: 2))
        p.storeBytes(of: 7, as: UInt16.self)
        #expect(p.load(as: UInt16.self) == 7)
    }
}
