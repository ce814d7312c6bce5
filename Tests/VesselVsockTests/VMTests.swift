import Synchronization
import Testing
import VesselLinux
import VesselTestSupport

@testable import VesselVsock

#if canImport(Glibc)
    import Glibc
#endif

/// Runs a program to its end; stdout and stderr go to `output` when given. Returns the exit
/// status (-1: it could not start). One still running after `timeout` s is killed and fails the
/// test instead of stalling it.
@discardableResult
func runProgram(_ argv: [String], output: String? = nil, timeout: Double = 300) -> Int32 {
    do {
        return try runCommand(argv, stdoutFile: output, mergingErrors: true, timeout: timeout).status
    } catch let timedOut as CommandTimedOut {
        Issue.record("\(timedOut)")
        return timedOut.result.status
    } catch {
        return -1
    }
}

/// QEMU (or any long-running program) with its console, stdout and stderr, in `output`; it dies with the test run.
func startProgram(_ argv: [String], output: String) throws -> ChildProcess {
    try ChildProcess(argv, stdout: .file(output), stderr: .stdout)
}

func readFile(_ path: String) -> String { (try? Linux.readFile(path)) ?? "" }

final class ThreadRunner: @unchecked Sendable {
    private var tid = pthread_t()
    private final class Box {
        let body: @Sendable () -> Void
        init(_ b: @escaping @Sendable () -> Void) { body = b }
    }
    init(_ body: @escaping @Sendable () -> Void) {
        let arg = Unmanaged.passRetained(Box(body)).toOpaque()
        pthread_create(
            &tid, nil,
            { a in
                Unmanaged<Box>.fromOpaque(a!).takeRetainedValue().body()
                return nil
            }, arg)
    }
    func join() { pthread_join(tid, nil) }
}

/// The backend's exit, or nil when it has not returned within `timeoutMs`: a backend that hangs
/// fails its test instead of stalling the run (the waiting thread is left behind, blocked).
func join(_ thread: BackendThread, timeoutMs: UInt64) -> Result<VsockBackend.Exit, LinuxError>? {
    let box = Mutex<Result<VsockBackend.Exit, LinuxError>?>(nil)
    let waiter = ThreadRunner {
        let r = thread.join()
        box.withLock { $0 = r }
    }
    guard waitUntil(timeout: Double(timeoutMs) / 1000, every: 0.02, { box.withLock { $0 } != nil }) else { return nil }
    waiter.join()
    return box.withLock { $0 }
}

/// Connects through the hybrid socket; returns the fd after `OK`, or nil.
func hybridConnect(_ path: String, port: UInt32) -> Int32? {
    guard let fd = try? Linux.connectUnix(path) else { return nil }
    writeAll(fd, Array("CONNECT \(port)\n".utf8))
    guard let line = readLine(fd, timeoutMs: 20000), line.hasPrefix("OK ") else {
        close(fd)
        return nil
    }
    return fd
}

/// Writes `data` and reads the echo concurrently (poll loop); true when the echo is byte-exact.
func echoCheck(_ fd: Int32, _ data: [UInt8]) -> Bool {
    setNonBlocking(fd)
    var sent = 0
    var got: [UInt8] = []
    got.reserveCapacity(data.count)
    var buf = [UInt8](repeating: 0, count: 65536)
    while got.count < data.count {
        var p = pollfd(fd: fd, events: Int16(POLLIN) | (sent < data.count ? Int16(POLLOUT) : 0), revents: 0)
        if poll(&p, 1, 30000) <= 0 { return false }
        if p.revents & Int16(POLLOUT) != 0 && sent < data.count {
            let n = data.withUnsafeBytes { write(fd, $0.baseAddress! + sent, min(65536, data.count - sent)) }
            if n > 0 { sent += n }
        }
        if p.revents & Int16(POLLIN | POLLHUP) != 0 {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, 65536) }
            if n == 0 { return false }
            if n > 0 { got += buf.prefix(n) }
        }
    }
    return got == data
}

func pattern(_ n: Int, seed: Int) -> [UInt8] {
    var x = UInt32(truncatingIfNeeded: seed &* 2654435761 | 1)
    return (0..<n).map { _ in
        x ^= x << 13
        x ^= x >> 17
        x ^= x << 5
        return UInt8(truncatingIfNeeded: x)
    }
}

func fmt1(_ d: Double) -> String { String(Double(Int(d * 10)) / 10) }

@Suite(.timeLimit(.minutes(1)))
struct GuestVM {
    static var kernelPath: String? { TestGuest.kernel }
    static var available: Bool {
        kernelPath != nil && access("/usr/bin/qemu-system-x86_64", X_OK) == 0 && access("/usr/bin/gcc", X_OK) == 0
    }
}

@Suite(.timeLimit(.minutes(10)), .serialized) struct VMTests {
    @Test(
        .enabled(
            if: GuestVM.available, "needs a guest kernel (/var/cache/vessel/kernel/*/bzImage or VESSEL_KERNEL), qemu-system-x86_64 and gcc")
    )
    func guestEndToEnd() throws {
        let dir = TempDir()
        let kernel = GuestVM.kernelPath!
        // The guest: a static /init, packed as newc cpio.
        let csrc = try guestSource("guest-init.c")
        try #require(runProgram(["gcc", "-static", "-O2", "-o", dir.path + "/init", csrc], output: dir.path + "/gcc.log") == 0)
        try #require(
            runProgram([
                "sh", "-c",
                "cd \(dir.path) && mkdir -p root/dev root/proc root/sys && mv init root/init && cd root && find . | cpio -o -H newc > ../initrd 2>/dev/null",
            ]) == 0)

        var options = VsockBackend.Options()
        options.logger.logLevel = .warning
        let backend = try VsockBackend(
            vhostUserSocketPath: dir.path + "/vhost.sock", hybridSocketPath: dir.path + "/v.sock",
            guestCID: 3, options: options)
        let thread = backend.start()
        let console = dir.path + "/console.log"
        let qemu = try startProgram(
            [
                "qemu-system-x86_64", "-accel", "tcg", "-machine", "q35,memory-backend=mem",
                "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-m", "256M", "-smp", "1", "-nographic",
                "-no-reboot", "-kernel", kernel, "-initrd", dir.path + "/initrd", "-append", "console=ttyS0 panic=-1 quiet",
                "-chardev", "socket,id=vu0,path=\(backend.vhostUserSocketPath)", "-device", "vhost-user-vsock-pci,chardev=vu0",
            ], output: console)
        defer {
            qemu.kill()
            backend.stop()
            thread.join()
        }
        let ready = waitUntil(timeout: 120, every: 0.1) { readFile(console).contains("GUEST: READY") }
        try #require(ready, "guest did not come up: \(readFile(console).suffix(2000))")
        #expect(readFile(console).contains("GUEST: READY cid=3"))
        let hp = backend.hybridSocketPath

        // Guest-initiated: the guest connects to host port 2000 (retrying) and echoes.
        let l = try Linux.listenUnix(hp + "_2000", nonBlocking: true)
        defer { close(l) }
        var pl = pollfd(fd: l, events: Int16(POLLIN), revents: 0)
        #expect(poll(&pl, 1, 20000) == 1)
        let g = try #require(try Linux.accept(l))
        _ = fcntl(g, F_SETFL, fcntl(g, F_GETFL) & ~O_NONBLOCK)
        #expect(readLine(g) == "hello from guest")
        #expect(echoCheck(g, pattern(100_000, seed: 99)))
        close(g)
        let rstSeen = waitUntil(timeout: 10, every: 0.1) { readFile(console).contains("GUEST: connect 2001: Connection reset by peer") }
        #expect(rstSeen, "no RST for a port without host listener: \(readFile(console).suffix(500))")

        // Host-initiated to a closed guest port: closed promptly, no OK.
        let t0 = nowMilliseconds()
        #expect(hybridConnect(hp, port: 4444) == nil)
        #expect(nowMilliseconds() - t0 < 5000)

        // Echo, then 8 parallel streams with byte-exact integrity both ways.
        let e = try #require(hybridConnect(hp, port: 1024))
        #expect(echoCheck(e, Array("ping".utf8)))
        close(e)
        let results = UnsafeMutablePointer<Bool>.allocate(capacity: 8)
        results.initialize(repeating: false, count: 8)
        defer { results.deallocate() }
        let resultsAddr = Int(bitPattern: results)
        let threads = (0..<8).map { i in
            ThreadRunner {
                guard let fd = hybridConnect(hp, port: 1024) else { return }
                let ok = echoCheck(fd, pattern(2 << 20, seed: i))
                close(fd)
                UnsafeMutablePointer<Bool>(bitPattern: resultsAddr)![i] = ok
            }
        }
        for t in threads { t.join() }
        #expect((0..<8).allSatisfy { results[$0] }, "parallel streams: \((0..<8).map { results[$0] })")

        // Large transfers: host -> guest (sink) and guest -> host (source).
        let big = 64 << 20
        let s = try #require(hybridConnect(hp, port: 1025))
        let chunk = pattern(1 << 20, seed: 5)
        writeAll(s, [UInt8(ascii: "S")])
        var tStart = nowNanoseconds()
        for _ in 0..<(big >> 20) { writeAll(s, chunk) }
        shutdown(s, Int32(SHUT_WR))
        let count = readExactly(s, 8, timeoutMs: 60000)
        let upSecs = Double(nowNanoseconds() - tStart) / 1e9
        close(s)
        #expect(count == le(UInt64(big)))

        let src = try #require(hybridConnect(hp, port: 1025))
        // A guest that stops sending ends the read below (short) instead of blocking it forever.
        var stall = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(src, SOL_SOCKET, SO_RCVTIMEO, &stall, socklen_t(MemoryLayout<timeval>.size))
        writeAll(src, [UInt8(ascii: "G")] + le(UInt64(big)))
        tStart = nowNanoseconds()
        var received = 0
        var patternOK = true
        // The guest repeats a 64 KiB block; compare with memcmp against two copies of it (debug builds are slow).
        let block = (0..<(2 * 65536)).map { UInt8(truncatingIfNeeded: ($0 % 65536) * 7 + 3) }
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(src, $0.baseAddress, 65536) }
            if n <= 0 { break }
            let same = buf.withUnsafeBytes { b in
                block.withUnsafeBytes { memcmp(b.baseAddress!, $0.baseAddress! + received % 65536, n) == 0 }
            }
            if !same { patternOK = false }
            received += n
        }
        let downSecs = Double(nowNanoseconds() - tStart) / 1e9
        close(src)
        #expect(received == big)
        #expect(patternOK)

        // Round-trip latency (64-byte messages): each of the 2000 round trips must come back
        // whole and byte-exact, or the numbers measure something other than an echo. Every
        // message differs, so a stale, lost or reordered reply cannot pass for the right one.
        let lat = try #require(hybridConnect(hp, port: 1024))
        var rtts: [Double] = []
        for i in 0..<2000 {
            let msg = pattern(64, seed: 1000 + i)
            let a = nowNanoseconds()
            writeAll(lat, msg)
            let r = readExactly(lat, 64)
            let rtt = Double(nowNanoseconds() - a) / 1000
            guard r == msg else {
                Issue.record("round trip \(i): \(r.count) bytes back\(r.count == 64 ? ", not the ones sent" : "")")
                break
            }
            rtts.append(rtt)
        }
        close(lat)
        #expect(rtts.count == 2000)
        rtts.sort()
        if !rtts.isEmpty {
            let p50 = rtts[rtts.count / 2]
            let p99 = rtts[rtts.count * 99 / 100]
            let upRate = Double(big) / upSecs / 1e6
            let downRate = Double(big) / downSecs / 1e6
            print(
                "VSOCK-BENCH backend: RTT p50 \(fmt1(p50)) us p99 \(fmt1(p99)) us; host->guest \(fmt1(upRate)) MB/s; guest->host \(fmt1(downRate)) MB/s"
            )
        }

        // Driver reload in the guest (device stop/start): the back-end re-maps the rings; new connections work.
        let r = try #require(hybridConnect(hp, port: 1026))
        #expect(readLine(r) == "R")
        close(r)
        let reloaded = waitUntil(timeout: 10, every: 0.1) { readFile(console).contains("GUEST: reloaded virtio") }
        #expect(reloaded, "\(readFile(console).suffix(500))")
        var again: Int32?
        waitUntil(timeout: 30, every: 0.1) {
            again = hybridConnect(hp, port: 1024)
            return again != nil
        }
        let e2 = try #require(again, "no connection after driver reload: \(readFile(console).suffix(800))")
        #expect(echoCheck(e2, pattern(300_000, seed: 42)))
        close(e2)

        // Backend survives; QEMU exits -> run() returns.
        qemu.kill()
        let ended = join(thread, timeoutMs: 30_000)
        #expect(ended != nil, "the backend still ran 30 s after QEMU was gone")
        #expect(try ended?.get() == .frontEndGone(error: nil))
    }
}

/// The ceiling for the numbers above: the same measurements over a Unix socketpair on the host.
@Suite(.timeLimit(.minutes(10)), .serialized) struct SocketpairCeiling {
    @Test func socketpairNumbers() throws {
        var fds: [Int32] = [0, 0]
        (fds[0], fds[1]) = try Linux.socketPair()
        let peer = fds[1]
        let echo = ThreadRunner {
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buf.withUnsafeMutableBytes { read(peer, $0.baseAddress, 65536) }
                if n <= 0 { break }
                writeAll(peer, Array(buf.prefix(n)))
            }
        }
        let msg = [UInt8](repeating: 0x5a, count: 64)
        var rtts: [Double] = []
        for _ in 0..<2000 {
            let a = nowNanoseconds()
            writeAll(fds[0], msg)
            _ = readExactly(fds[0], 64)
            rtts.append(Double(nowNanoseconds() - a) / 1000)
        }
        shutdown(fds[0], Int32(SHUT_WR))
        echo.join()
        close(fds[0])
        close(fds[1])
        rtts.sort()

        let big = 64 << 20
        (fds[0], fds[1]) = try Linux.socketPair()
        let a = fds[0]
        let b = fds[1]
        let sink = ThreadRunner {
            var buf = [UInt8](repeating: 0, count: 65536)
            while buf.withUnsafeMutableBytes({ read(b, $0.baseAddress, 65536) }) > 0 {}
        }
        let chunk = [UInt8](repeating: 1, count: 1 << 20)
        var t = nowNanoseconds()
        for _ in 0..<(big >> 20) { writeAll(a, chunk) }
        shutdown(a, Int32(SHUT_WR))
        sink.join()
        let upSecs = Double(nowNanoseconds() - t) / 1e9
        let source = ThreadRunner {
            let c = [UInt8](repeating: 2, count: 65536)
            for _ in 0..<(big >> 16) { writeAll(b, c) }
            shutdown(b, Int32(SHUT_WR))
        }
        t = nowNanoseconds()
        var buf = [UInt8](repeating: 0, count: 65536)
        var total = 0
        while true {
            let n = buf.withUnsafeMutableBytes { read(a, $0.baseAddress, 65536) }
            if n <= 0 { break }
            total += n
        }
        let downSecs = Double(nowNanoseconds() - t) / 1e9
        source.join()
        close(a)
        close(b)
        #expect(total == big)
        print(
            "VSOCK-BENCH socketpair: RTT p50 \(fmt1(rtts[1000])) us p99 \(fmt1(rtts[1980])) us; a->b \(fmt1(Double(big) / upSecs / 1e6)) MB/s; b->a \(fmt1(Double(big) / downSecs / 1e6)) MB/s"
        )
    }
}
