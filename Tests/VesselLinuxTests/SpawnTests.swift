import Foundation
import Testing
import VesselLinux
import VesselTestSupport

@Suite(.timeLimit(.minutes(1)))
struct SpawnTests {
    /// The kernel sends PR_SET_PDEATHSIG when the forking thread exits. A child spawned with a
    /// parent-death signal from a thread that then ends (as dispatch workers do after 5 s idle)
    /// must live on: only the death of this process may kill it.
    @Test func parentDeathSignalOutlivesTheSpawningThread() throws {
        let spawned = ThreadResult()
        var thread = pthread_t()
        let rc = pthread_create(
            &thread, nil,
            { arg in
                let box = Unmanaged<ThreadResult>.fromOpaque(arg!).takeUnretainedValue()
                box.result = Result { () throws(LinuxError) -> SpawnResult in
                    try spawn(
                        exeFD: -1, path: "/bin/sleep", arguments: ["sleep", "30"], environment: [], fds: [],
                        parentDeathSignal: SIGKILL)
                }
                return nil
            }, Unmanaged.passUnretained(spawned).toOpaque())
        #expect(rc == 0)
        pthread_join(thread, nil)
        let child = try #require(try spawned.result?.get())
        #expect(child.execErrno == 0)
        defer {
            kill(child.pid, SIGKILL)
            var ignored: Int32 = 0
            waitpid(child.pid, &ignored, 0)
        }
        // The signal, when it comes, comes as the thread exits; give it time to be delivered.
        usleep(300_000)
        var status: Int32 = 0
        let reaped = waitpid(child.pid, &status, WNOHANG)
        #expect(reaped == 0, "the child died with its spawning thread (wait status \(status))")
    }

    /// Parent-death spawns are handed to one lifetime thread; the caller's closure is borrowed, so
    /// the thread must let go of it before the caller returns. A race there crashed an owner
    /// ("non-escaping closure has escaped") while it started QEMU.
    @Test func concurrentParentDeathSpawnsAllSucceed() async throws {
        let pids = try await withThrowingTaskGroup(of: [Int32].self) { group in
            for _ in 0..<4 {
                group.addTask {
                    try (0..<50).map { _ in
                        let child = try spawn(
                            exeFD: -1, path: "/bin/true", arguments: ["true"], environment: [], fds: [],
                            parentDeathSignal: SIGKILL)
                        #expect(child.execErrno == 0)
                        return child.pid
                    }
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        #expect(pids.count == 200)
        for pid in pids {
            var status: Int32 = 0
            #expect(waitpid(pid, &status, 0) == pid)
            #expect(Linux.shellStatus(status) == 0)
        }
    }

    @Test func execFailureIsReported() throws {
        let spawned = try spawn(
            exeFD: -1, path: "/nonexistent/binary", arguments: ["x"], environment: [], fds: [],
            parentDeathSignal: SIGKILL)
        var status: Int32 = 0
        waitpid(spawned.pid, &status, 0)
        #expect(spawned.execErrno == ENOENT)
        #expect(Linux.shellStatus(status) == 127)
    }
}

private final class ThreadResult: @unchecked Sendable {
    // @unchecked: written by the thread before pthread_join returns, read after.
    var result: Result<SpawnResult, LinuxError>?
}

@Suite(.timeLimit(.minutes(1)))
struct RemoveTreeTests {
    /// A sandbox directory holds bind mounts of the caller's rootfs: removing it must never
    /// delete what the mounts show.
    @Test func mountedDataSurvivesTheRemoval() throws {
        let base = try temporaryDirectory("vessel-removetree")
        let source = base + "/source", tree = base + "/tree"
        defer { _ = Linux.removeTree(base) }
        try Linux.mkdirAll(source + "/bin")
        try Linux.mkdirAll(tree + "/shared/c1/rootfs")
        try Linux.mkdirAll(tree + "/plain/sub")
        _ = FileManager.default.createFile(atPath: source + "/bin/sh", contents: Data("data".utf8))
        _ = FileManager.default.createFile(atPath: tree + "/plain/sub/file", contents: Data())
        try Linux.mount(source, tree + "/shared/c1/rootfs", nil, MountFlags([.bind]).rawValue, nil)
        #expect(Linux.removeTree(tree))
        #expect(!Linux.exists(tree))
        #expect((try? String(contentsOfFile: source + "/bin/sh", encoding: .utf8)) == "data")
        #expect(!((try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? "").contains(tree))
    }
}
