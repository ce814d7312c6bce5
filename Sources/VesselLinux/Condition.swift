#if canImport(Glibc)
    import Glibc
#endif

/// A condition variable for threads outside Swift concurrency (the reaper, the log forwarder, the
/// lifetime thread, the main thread's wait): callers change their state under their own lock,
/// then `signal`; waiters re-check `ready` under this one.
// @unchecked: the pthread objects are only used through their own locking protocol, in allocated
// memory (they must not move).
public final class Condition: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    public init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(cond, nil)
    }

    public func signal() {
        pthread_mutex_lock(mutex)
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(mutex)
    }

    public func wait(until ready: () -> Bool) {
        pthread_mutex_lock(mutex)
        while !ready() { pthread_cond_wait(cond, mutex) }
        pthread_mutex_unlock(mutex)
    }

    /// As `wait(until:)`, giving up after `seconds`; returns whether `ready` held.
    public func wait(seconds: Double, until ready: () -> Bool) -> Bool {
        var deadline = timespec()
        clock_gettime(CLOCK_REALTIME, &deadline)
        let nanoseconds = Int(deadline.tv_nsec) + Int(seconds * 1e9)
        deadline.tv_sec += nanoseconds / 1_000_000_000
        deadline.tv_nsec = nanoseconds % 1_000_000_000
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while !ready() {
            if pthread_cond_timedwait(cond, mutex, &deadline) == ETIMEDOUT { return ready() }
        }
        return true
    }
}
