#if canImport(Glibc)
import Glibc
#endif

/// A thread that lives as long as the process and runs jobs handed to it, one at a time.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not when the process
/// does. Swift's main actor after a top-level `await`, and the cooperative pool, run on dispatch
/// worker threads that exit after about 5 s idle: a QEMU spawned from one was SIGKILLed by its own
/// parent-death signal while its owner was alive. Spawns that ask for the signal run here.
enum LifetimeThread {
    /// pthread objects must not move: they live in allocated memory, not in Swift properties.
    private final class Queue: @unchecked Sendable {
        // @unchecked: `jobs` is only touched with `mutex` held.
        let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        let wakeup = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        let finished = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        var jobs: [() -> Void] = []

        init() {
            pthread_mutex_init(mutex, nil)
            pthread_cond_init(wakeup, nil)
            pthread_cond_init(finished, nil)
        }

        func loop() -> Never {
            while true {
                pthread_mutex_lock(mutex)
                while jobs.isEmpty { pthread_cond_wait(wakeup, mutex) }
                let job = jobs.removeFirst()
                pthread_mutex_unlock(mutex)
                job()
            }
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
            var result: T?
            withUnsafeMutablePointer(to: &result) { slot in
                pthread_mutex_lock(queue.mutex)
                queue.jobs.append {
                    let value = body()
                    pthread_mutex_lock(queue.mutex)
                    slot.pointee = value
                    pthread_cond_broadcast(queue.finished)
                    pthread_mutex_unlock(queue.mutex)
                }
                pthread_cond_signal(queue.wakeup)
                while slot.pointee == nil { pthread_cond_wait(queue.finished, queue.mutex) }
                pthread_mutex_unlock(queue.mutex)
            }
            return result!
        }
    }
}
