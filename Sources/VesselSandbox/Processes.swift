import Foundation
import SwiftProtobuf
import Synchronization
import VesselCore
import VesselProtocol

/// Resolves every waiter of one process once, with its exit; a waiter whose request is cancelled
/// (its connection closed) stops waiting.
final class ExitSignal: Sendable {
    struct Exit: Sendable {
        var status: Int32
        var time: Date
    }

    private struct State {
        var exit: Exit?
        var waiters: [UInt64: CheckedContinuation<Exit?, Never>] = [:]
        var next: UInt64 = 0
    }

    private let state = Mutex(State())

    func fire(_ exit: Exit) {
        let waiters = state.withLock { state -> [CheckedContinuation<Exit?, Never>] in
            guard state.exit == nil else { return [] }
            state.exit = exit
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume(returning: exit) }
    }

    func wait() async throws(RuntimeError) -> Exit {
        let key = state.withLock { state in
            state.next += 1
            return state.next
        }
        let exit = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Exit?, Never>) in
                let now = state.withLock { state -> Exit?? in
                    if let exit = state.exit { return .some(exit) }
                    if Task.isCancelled { return .some(nil) }
                    state.waiters[key] = continuation
                    return nil
                }
                if let now { continuation.resume(returning: now) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: key) }
            waiter?.resume(returning: nil)
        }
        guard let exit else { throw RuntimeError("wait cancelled", kind: .unavailable) }
        return exit
    }
}

/// A container's init or one of its execs, as the owner tracks it.
final class OwnedProcess {
    let execID: String
    var lifecycle = Lifecycle()
    let stdio: StdioPaths
    /// Exec only: the process to run at Start.
    let spec: Grpc_Process?
    var session: ProcessSession?
    /// The pid the host sees for it: the OCI CLI's monitor, else QEMU (as Kata reports).
    var hostPid: Int32
    let exit = ExitSignal()

    init(execID: String, stdio: StdioPaths, spec: Grpc_Process?, hostPid: Int32) {
        self.execID = execID
        self.stdio = stdio
        self.spec = spec
        self.hostPid = hostPid
    }

    var exitStatus: UInt32 { UInt32(bitPattern: lifecycle.exitStatus ?? 0) }
    var exitedAt: Google_Protobuf_Timestamp? { lifecycle.exitedAt.map { Google_Protobuf_Timestamp(date: $0) } }

    var deleteResponse: Containerd_Task_V2_DeleteResponse {
        .with {
            $0.pid = UInt32(bitPattern: hostPid)
            $0.exitStatus = exitStatus
            if let time = exitedAt { $0.exitedAt = time }
        }
    }
}

/// One container of the sandbox: its record (persisted on every change), its processes and the
/// host mounts made for it.
final class OwnedContainer {
    var record: ContainerRecord
    let bundle: GuestBundle
    let initProcess: OwnedProcess
    var execs: [String: OwnedProcess] = [:]
    /// Shares into the 9p directory, then containerd's rootfs mounts (released in reverse).
    var mounts: [String] = []
    /// Whether the guest has the container (so RemoveContainer is owed).
    var inGuest = false

    init(record: ContainerRecord, bundle: GuestBundle, initProcess: OwnedProcess) {
        self.record = record
        self.bundle = bundle
        self.initProcess = initProcess
    }

    var id: String { record.id }

    func process(_ execID: String) throws(RuntimeError) -> OwnedProcess {
        if execID.isEmpty || execID == id { return initProcess }
        guard let process = execs[execID] else { throw .notFound("exec \(execID) not found in container \(id)") }
        return process
    }
}
