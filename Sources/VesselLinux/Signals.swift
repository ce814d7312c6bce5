#if canImport(Glibc)
import Glibc
#endif

extension Linux {
    /// Signals taken synchronously: blocked in the calling thread (call it before any other thread
    /// exists, so that every thread inherits the mask) and delivered, in order, to the stream by a
    /// sigwait thread of their own. Children spawned by `spawn` start with nothing blocked.
    public static func signals(_ signals: [Int32]) -> AsyncStream<Int32> {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        let (stream, continuation) = AsyncStream.makeStream(of: Int32.self)
        let blocked = set
        startThread {
            var set = blocked
            var signal: Int32 = 0
            while sigwait(&set, &signal) == 0 { continuation.yield(signal) }
        }
        return stream
    }
}

extension Linux {
    /// The entry point of a threaded process: `signals` are blocked right here, on the main thread
    /// before any other thread exists (a top-level `await` would run this on a dispatch worker,
    /// and the main thread would keep taking the signals), then `body` runs as a detached task
    /// while the main thread waits; returns `body`'s status.
    public static func runMain(takingSignals signals: [Int32], _ body: @escaping @Sendable (AsyncStream<Int32>?) async -> Int32) -> Int32 {
        let stream = signals.isEmpty ? nil : Linux.signals(signals)
        let done = MainResult()
        Task.detached { done.set(await body(stream)) }
        return done.wait()
    }
}

/// The main thread's wait for the async body (pthread objects in allocated memory: they must not move).
private final class MainResult: @unchecked Sendable {
    // @unchecked: `status` is only touched with `mutex` held.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var status: Int32?

    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(cond, nil)
    }

    func set(_ value: Int32) {
        pthread_mutex_lock(mutex)
        status = value
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(mutex)
    }

    func wait() -> Int32 {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while status == nil { pthread_cond_wait(cond, mutex) }
        return status!
    }
}
