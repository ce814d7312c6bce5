import Synchronization

/// The handler Tasks of all connections of one server, so `TTRPCServer.close()` can wait
/// for them. Each Task's last act is to hop onto its connection's event loop; once close()
/// returns, no Task will do that any more and the event loop group may be shut down
/// (scheduling on a shut-down loop is an error NIO plans to make fatal).
final class TTRPCHandlerTasks: Sendable {
    private struct State {
        var nextID: UInt64 = 0
        var running: [UInt64: Task<Void, Never>] = [:]
        /// Tasks that finished before `started` recorded them.
        var finishedEarly: Set<UInt64> = []
    }

    private let state = Mutex(State())

    func reserve() -> UInt64 {
        self.state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
    }

    func started(_ id: UInt64, _ task: Task<Void, Never>) {
        self.state.withLock { state in
            if state.finishedEarly.remove(id) == nil {
                state.running[id] = task
            }
        }
    }

    func finished(_ id: UInt64) {
        self.state.withLock { state in
            if state.running.removeValue(forKey: id) == nil {
                state.finishedEarly.insert(id)
            }
        }
    }

    /// Returns once every Task has finished. Handlers are expected to honour cancellation.
    func drain() async {
        while true {
            let running = self.state.withLock { Array($0.running.values) }
            if running.isEmpty { return }
            for task in running { await task.value }
        }
    }
}
