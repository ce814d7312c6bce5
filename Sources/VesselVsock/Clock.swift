#if canImport(Glibc)
    import Glibc
#endif

/// CLOCK_MONOTONIC, for deadlines and measurements that no change of the wall clock moves.
@inline(__always) func nowNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}

@inline(__always) func nowMilliseconds() -> UInt64 { nowNanoseconds() / 1_000_000 }
