import Synchronization

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
        let status = Mutex<Int32?>(nil)
        let done = Condition()
        Task.detached {
            let value = await body(stream)
            status.withLock { $0 = value }
            done.signal()
        }
        done.wait { status.withLock { $0 } != nil }
        return status.withLock { $0 }!
    }
}
