import Synchronization

/// A thread that lives as long as the process and runs jobs handed to it, one at a time.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not when the process
/// does. Swift's main actor after a top-level `await`, and the cooperative pool, run on dispatch
/// worker threads that exit after about 5 s idle: a QEMU spawned from one was SIGKILLed by its own
/// parent-death signal while its owner was alive. Spawns that ask for the signal run here.
enum LifetimeThread {
    private final class Queue: Sendable {
        let jobs = Mutex<[@Sendable () -> Void]>([])
        let wakeup = Condition()
        let finished = Condition()

        func loop() -> Never {
            while true {
                var job: (@Sendable () -> Void)?
                wakeup.wait {
                    job = jobs.withLock { $0.isEmpty ? nil : $0.removeFirst() }
                    return job != nil
                }
                job?()
                finished.signal()
            }
        }
    }

    private final class Job<T>: @unchecked Sendable {
        // @unchecked: `body` and `result` are touched on the lifetime thread before `done` is
        // set, and by the caller only after it saw `done`, both under `done`'s lock.
        var body: (() -> T)?
        var result: T?
        let done = Mutex(false)

        init(_ body: @escaping () -> T) { self.body = body }

        func run() {
            result = body?()
            // The caller's closure is only borrowed (`withoutActuallyEscaping`): drop it before
            // the caller returns, or the runtime sees it escape while the loop still holds the job.
            body = nil
            done.withLock { $0 = true }
        }
    }

    private static let queue: Queue = {
        let queue = Queue()
        Linux.startThread { queue.loop() }
        return queue
    }()

    /// Runs `body` on the lifetime thread and waits for it; concurrent callers are served in turn.
    static func run<T>(_ body: () -> T) -> T {
        let queue = queue
        return withoutActuallyEscaping(body) { body in
            let job = Job(body)
            queue.jobs.withLock { $0.append(job.run) }
            queue.wakeup.signal()
            queue.finished.wait { job.done.withLock { $0 } }
            return job.result!
        }
    }
}
