import Dispatch

/// libFuzzer calls its entry point synchronously; the NIO test channels are async. The input is
/// done only when `body` is, so nothing of one input runs into the next.
public func runBlocking(_ body: @escaping @Sendable () async -> Void) {
    let done = DispatchSemaphore(value: 0)
    Task {
        await body()
        done.signal()
    }
    done.wait()
}
