import CVessel

/// Fenced loads and stores on memory shared with a guest (virtqueue ring indices), done in C:
/// Synchronization.Atomic cannot be placed on memory it does not own. Inlinable, so that a ring
/// access costs what the C inline function costs, once per packet.
public enum GuestMemoryAtomics {
    /// Pairs with the other side's release store: what it wrote before is visible after.
    @inlinable
    public static func loadAcquire(_ address: UnsafeRawPointer) -> UInt16 {
        vessel_load_acquire_u16(address)
    }

    @inlinable
    public static func loadRelaxed(_ address: UnsafeRawPointer) -> UInt16 {
        vessel_load_relaxed_u16(address)
    }

    /// Publishes `value` after everything written before it.
    @inlinable
    public static func storeRelease(_ address: UnsafeMutableRawPointer, _ value: UInt16) {
        vessel_store_release_u16(address, value)
    }

    /// Orders a store before a later load, which acquire and release do not.
    @inlinable
    public static func fullFence() {
        vessel_fence_seq_cst()
    }
}
