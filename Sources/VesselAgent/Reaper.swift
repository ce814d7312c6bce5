import Synchronization
import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// Reaps every child of the agent on one dedicated thread and hands exit statuses to whoever waits
/// for that pid. The agent is PID 1 in the guest, so orphans land here too; a process can also exit
/// before its spawner registered it (the exec helper reports the pid after the fact), which is why
/// statuses of unregistered pids are kept for a while.
public final class Reaper: Sendable {
    private struct Entry {
        var status: Int32?
        var waiters: [CheckedContinuation<Int32, Never>] = []
    }

    private struct State {
        var watched: [pid_t: Entry] = [:]
        var unclaimed: [pid_t: Int32] = [:]
        var unclaimedOrder: [pid_t] = []
        var spawnGeneration = 0
    }

    private static let unclaimedLimit = 4096
    private let state = Mutex(State())
    // The reaper thread sleeps on this when there are no children (waitid answers ECHILD).
    private let wakeup = Condition()

    public static let shared = Reaper()

    private init() {
        Linux.startThread { [self] in loop() }
    }

    /// Starts tracking `pid`; call right after creating the child, before anyone waits for it.
    public func watch(_ pid: pid_t) {
        state.withLock { s in
            var entry = Entry()
            if let status = s.unclaimed.removeValue(forKey: pid) {
                entry.status = status
                s.unclaimedOrder.removeAll { $0 == pid }
            }
            s.watched[pid] = entry
            s.spawnGeneration += 1
        }
        wakeup.signal()
    }

    /// The shell-style exit status (code, or 128+signal), once the process has been reaped;
    /// -1 for a pid that was never watched: there is nothing to wait for.
    public func wait(_ pid: pid_t) async -> Int32 {
        await withCheckedContinuation { (continuation: CheckedContinuation<Int32, Never>) in
            let ready: Int32? = state.withLock { s in
                guard var entry = s.watched[pid] else { return -1 }
                if let status = entry.status { return status }
                entry.waiters.append(continuation)
                s.watched[pid] = entry
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    public func exitStatus(_ pid: pid_t) -> Int32? {
        state.withLock { $0.watched[pid]?.status }
    }

    /// Stops tracking a pid whose exit nobody needs any more; whoever still waits gets -1 rather
    /// than waiting forever.
    public func forget(_ pid: pid_t) {
        let waiters = state.withLock { $0.watched.removeValue(forKey: pid)?.waiters ?? [] }
        for waiter in waiters { waiter.resume(returning: -1) }
    }

    private func loop() {
        while true {
            let generation = state.withLock { $0.spawnGeneration }
            switch Result(catching: { () throws(LinuxError) in try Linux.reapAny() }) {
            case .success(let (pid, status)?): deliver(pid, status)
            case .success(nil): wakeup.wait { state.withLock { $0.spawnGeneration } != generation }
            case .failure: continue
            }
        }
    }

    private func deliver(_ pid: pid_t, _ status: Int32) {
        let waiters: [CheckedContinuation<Int32, Never>] = state.withLock { s in
            guard var entry = s.watched[pid] else {
                s.unclaimed[pid] = status
                s.unclaimedOrder.append(pid)
                if s.unclaimedOrder.count > Self.unclaimedLimit {
                    s.unclaimed.removeValue(forKey: s.unclaimedOrder.removeFirst())
                }
                return []
            }
            entry.status = status
            let waiting = entry.waiters
            entry.waiters = []
            s.watched[pid] = entry
            return waiting
        }
        for waiter in waiters { waiter.resume(returning: status) }
    }
}
