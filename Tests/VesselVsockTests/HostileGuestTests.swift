import Logging
import Synchronization
import Testing
import VesselLinux
import VesselTestSupport

@testable import VesselVsock

#if canImport(Glibc)
    import Glibc
#endif

/// A hostile guest (`hostile-guest.c`, its own driver for the vsock device) attacks its backend while a
/// well-behaved guest with a backend of its own keeps echoing beside it; the hostile backend must survive (or
/// stop that device with a logged reason), stay responsive and keep its memory bounded. The suite's limit is
/// its longest test's own: where a suite's and a test's limits both apply, the shorter wins.
@Suite(.timeLimit(.minutes(30)), .serialized) struct HostileGuestTests {
    static let skipReason = "needs a guest kernel (VESSEL_KERNEL or the build cache), qemu-system-x86_64 and gcc"
    static var enabled: Bool { GuestVM.available }

    @Test(.enabled(if: enabled, Comment(rawValue: skipReason)), .timeLimit(.minutes(30)))
    func hostileGuestBesideAWellBehavedOne() throws {
        let r = try GuestPair.run(hostile: true)
        // The serial console ends lines with "\r\n", a single Character.
        let lines = r.console.split(whereSeparator: \.isNewline)
        let phases = lines.filter { $0.hasPrefix("HOSTILE: PHASE") && $0.contains(" done in ") }
        for line in lines where line.contains("HOSTILE:") { print(line) }
        for line in r.backendLog { print("hostile backend: \(line)") }
        #expect(r.console.contains("HOSTILE: READY"), "the guest could not take its device: \(r.consoleTail)")
        #expect(r.console.contains("HOSTILE: DONE phases=17"), "\(r.consoleTail)")
        #expect(phases.count == 17)
        #expect(r.console.contains("spoofed packets answered (expect 0)") && r.console.contains("0 of 13 spoofed"))
        #expect(r.console.contains("device works again after reset"), "\(r.consoleTail)")
        #expect(!r.console.contains("walked them all"), "the backend followed a jumped avail index")
        // The decisions the backend took about this guest are logged.
        #expect(r.backendLog.contains { $0.contains("avail index") }, "\(r.backendLog)")
        #expect(r.backendLog.contains { $0.contains("bad vring size 1000") }, "\(r.backendLog)")
        #expect(
            r.hostConnectsHung == 0 && r.hostConnects > 0,
            "\(r.hostConnectsHung) of \(r.hostConnects) host CONNECTs to the hostile guest did not end in 10 s")
        #expect(
            r.neighbourFailures == 0 && r.neighbourEchoes >= 3,
            "neighbour echo: \(r.neighbourEchoes) ok, \(r.neighbourFailures) failed")
        #expect(r.neighbourAfter)
        #expect(r.growthMiB < 64, "peak RSS grew by \(fmt1(r.growthMiB)) MiB")
        let nb = r.neighbourFailures == 0 && r.neighbourAfter ? "neighbour echo ok" : "neighbour echo FAILED"
        print(
            "HOSTILE-GUEST: phases=\(phases.count), peak RSS \(fmt1(r.peakMiB)) MiB (VmHWM, "
                + "+\(fmt1(r.growthMiB)) MiB over \(fmt1(r.startMiB)) MiB at start; "
                + "anon peak +\(fmt1(r.anonGrowthMiB)) MiB, shmem peak \(fmt1(r.shmemPeakMiB)) MiB), "
                + "\(nb) (\(r.neighbourEchoes) echoes during the attack), backend \(r.backendExit), "
                + "log port got \(r.logPortBytes) bytes on \(r.logPortConnections) connections, "
                + "\(r.hostConnects) host CONNECTs settled in at most \(r.slowestConnectMs) ms")
    }

    /// The same with two well-behaved guests: the RSS baseline for the figure above.
    @Test(.enabled(if: enabled, Comment(rawValue: skipReason)), .timeLimit(.minutes(15)))
    func baselineTwoWellBehavedGuests() throws {
        let r = try GuestPair.run(hostile: false)
        #expect(r.neighbourFailures == 0 && r.neighbourAfter)
        print(
            "HOSTILE-GUEST-BASELINE: peak RSS \(fmt1(r.peakMiB)) MiB (VmHWM, +\(fmt1(r.growthMiB)) MiB over "
                + "\(fmt1(r.startMiB)) MiB at start; anon peak +\(fmt1(r.anonGrowthMiB)) MiB, shmem peak "
                + "\(fmt1(r.shmemPeakMiB)) MiB), neighbour \(r.neighbourEchoes) echoes")
    }
}

/// Log lines of one backend (its decisions about a guest must be visible).
final class CapturedLog: Sendable {
    private let lines = Mutex<[String]>([])
    func append(_ s: String) { lines.withLock { if $0.count < 10_000 { $0.append(s) } } }
    var all: [String] { lines.withLock { $0 } }
}

struct CaptureLogHandler: LogHandler {
    let sink: CapturedLog
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        let extra = (event.metadata ?? [:]).merging(metadata) { a, _ in a }
        sink.append("\(event.level) \(event.message)\(extra.isEmpty ? "" : " \(extra)")")
    }
}

/// A Unix listener for guest connections to a host port: drains what arrives (a log reader) or accepts and
/// never reads (a stalled reader). Counters are read after `stop()`.
final class HostPortListener: @unchecked Sendable {
    // @unchecked: the counters are written by the listener thread only and read after `stop()` joined it.
    private let fd: Int32
    private let stopFd: Int32
    private let drain: Bool
    private var held: [Int32] = []
    /// One for all connections: thousands of them stay open.
    private var buffer = [UInt8](repeating: 0, count: 65536)
    private(set) var accepted = 0
    private(set) var bytes = 0
    private(set) var closedByBackend = 0
    private var runner: ThreadRunner?

    init(path: String, drain: Bool) throws {
        fd = try Linux.listenUnix(path, backlog: 4096, nonBlocking: true)
        stopFd = try Linux.eventFD()
        self.drain = drain
        runner = ThreadRunner { [self] in serve() }
    }

    private func serve() {
        guard let loop = try? EpollLoop() else { return }
        var stopped = false
        _ = try? loop.register(fd: stopFd, events: .readable) { _ in stopped = true }
        _ = try? loop.register(fd: fd, events: .readable) { [self, unowned loop] _ in
            while let connection = try? Linux.accept(fd) {
                accepted += 1
                held.append(connection)
                if drain { watch(connection, on: loop) }
            }
        }
        while !stopped { loop.runOnce(timeoutMilliseconds: 500) }
    }

    /// Reads whatever arrives, counting the bytes and the closes.
    private func watch(_ connection: Int32, on loop: EpollLoop) {
        var token: UInt64 = 0
        token =
            (try? loop.register(fd: connection, events: [.readable, .readHangUp]) { [self, unowned loop] _ in
                while true {
                    let r = buffer.withUnsafeMutableBytes { read(connection, $0.baseAddress, 65536) }
                    if r > 0 {
                        bytes += r
                        continue
                    }
                    if r == 0 {
                        closedByBackend += 1
                        loop.unregister(fd: connection, token: token)
                    }
                    break
                }
            }) ?? 0
    }

    func stop() {
        Linux.signal(eventFD: stopFd)
        runner?.join()
        runner = nil
        for c in held { close(c) }
        held = []
        close(fd)
        close(stopFd)
    }
}

/// A QEMU guest with its own backend thread.
final class BackendGuest {
    let dir = TempDir()
    let backend: VsockBackend
    let thread: BackendThread
    let console: String
    private(set) var qemu: ChildProcess?

    init(cid: UInt64, logger: Logger) throws {
        var options = VsockBackend.Options()
        options.logger = logger
        backend = try VsockBackend(
            vhostUserSocketPath: dir.path + "/vhost.sock",
            hybridSocketPath: dir.path + "/v.sock", guestCID: cid, options: options)
        thread = backend.start()
        console = dir.path + "/console.log"
    }

    func boot(initrd: String, kernel: String) throws {
        qemu = try startProgram(
            [
                "qemu-system-x86_64", "-accel", "tcg", "-machine", "q35,memory-backend=mem",
                "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-m", "256M", "-smp", "1", "-nographic",
                "-no-reboot", "-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet",
                "-chardev", "socket,id=vu0,path=\(backend.vhostUserSocketPath)",
                "-device", "vhost-user-vsock-pci,chardev=vu0",
            ], output: console)
    }

    var output: String { readFile(console) }

    /// True once QEMU is gone (reaped), waiting at most `seconds`.
    func exited(within seconds: Double) -> Bool {
        guard let qemu else { return true }
        return qemu.wait(timeout: seconds) != nil
    }

    func kill() { qemu?.kill() }

    /// Stops the backend and waits at most `timeoutMs` for its thread; nil when it did not return (a hang).
    func stopBackend(timeoutMs: Int) -> Result<VsockBackend.Exit, LinuxError>? {
        backend.stop()
        return join(thread, timeoutMs: UInt64(timeoutMs))
    }
}

/// Samples this process's memory while the guests run.
final class RSSSampler: Sendable {
    private let peaks = Mutex<(anon: Int, shmem: Int)>((0, 0))
    private let done = Atomic<Bool>(false)
    private let runner = Mutex<ThreadRunner?>(nil)

    static func status(_ key: String) -> Int { Linux.procKiB(key, in: "/proc/self/status") }

    func start() {
        let r = ThreadRunner { [self] in
            while !done.load(ordering: .relaxed) {
                let a = Self.status("RssAnon")
                let s = Self.status("RssShmem")
                peaks.withLock { $0 = (max($0.anon, a), max($0.shmem, s)) }
                usleep(100_000)
            }
        }
        runner.withLock { $0 = r }
    }

    func stop() -> (anonKiB: Int, shmemKiB: Int) {
        done.store(true, ordering: .relaxed)
        runner.withLock { $0?.join() }
        return peaks.withLock { ($0.anon, $0.shmem) }
    }
}

/// Counters shared with the helper threads of one run.
final class PairCounters: Sendable {
    let stop = Atomic<Bool>(false)
    let echoes = Atomic<Int>(0)
    let echoFailures = Atomic<Int>(0)
    let connects = Atomic<Int>(0)
    let connectsHung = Atomic<Int>(0)
    let slowestConnectMs = Atomic<Int>(0)
}

struct GuestPair {
    var console = ""
    var consoleTail: String { String(console.suffix(3000)) }
    var backendLog: [String] = []
    var backendExit = ""
    var neighbourEchoes = 0
    var neighbourFailures = 0
    var neighbourAfter = false
    var hostConnectsHung = 0
    var hostConnects = 0
    var slowestConnectMs = 0
    var startMiB = 0.0
    var peakMiB = 0.0
    var growthMiB = 0.0
    var anonGrowthMiB = 0.0
    var shmemPeakMiB = 0.0
    var logPortBytes = 0
    var logPortConnections = 0

    static func initrd(source: String, in dir: String) throws -> String {
        try #require(
            runProgram(
                ["gcc", "-static", "-O2", "-o", dir + "/init", source],
                output: dir + "/gcc.log") == 0, "gcc: \(readFile(dir + "/gcc.log"))")
        try #require(
            runProgram([
                "sh", "-c",
                "cd \(dir) && mkdir -p root/dev root/proc root/sys && "
                    + "mv init root/init && cd root && find . | cpio -o -H newc > ../initrd 2>/dev/null",
            ])
                == 0)
        return dir + "/initrd"
    }

    /// Boots the guest under test (hostile, or a well-behaved one for the baseline) and a well-behaved neighbour.
    static func run(hostile: Bool) throws -> GuestPair {
        // As in the sandbox owner: a backend that refuses a client at its connection cap closes it, and a
        // client's write then must fail with EPIPE, not kill the process hosting both backends.
        signal(SIGPIPE, SIG_IGN)
        var out = GuestPair()
        let kernel = try #require(TestGuest.kernel)
        let build = TempDir()
        let goodSource = try guestSource("guest-init.c"), hostileSource = try guestSource("hostile-guest.c")
        try #require(mkdir(build.path + "/a", 0o755) == 0 && mkdir(build.path + "/b", 0o755) == 0)
        let goodInitrd = try initrd(source: goodSource, in: build.path + "/a")
        let testInitrd = hostile ? try initrd(source: hostileSource, in: build.path + "/b") : goodInitrd

        // The peak is measured from here: reset VmHWM to the current RSS.
        let cr = open("/proc/self/clear_refs", O_WRONLY)
        if cr >= 0 {
            _ = write(cr, "5", 1)
            close(cr)
        }
        let startKiB = RSSSampler.status("VmRSS")
        let startAnon = RSSSampler.status("RssAnon")
        let sampler = RSSSampler()
        sampler.start()

        let log = CapturedLog()
        var testLogger = Logger(label: "vessel.vsock.hostile") { _ in CaptureLogHandler(sink: log) }
        testLogger.logLevel = .info
        var quiet = Logger(label: "vessel.vsock.neighbour")
        quiet.logLevel = .warning
        let guest = try BackendGuest(cid: 3, logger: testLogger)
        let neighbour = try BackendGuest(cid: 4, logger: quiet)
        let logPort = try HostPortListener(path: guest.backend.hybridSocketPath + "_1025", drain: true)
        let stalled = try HostPortListener(path: guest.backend.hybridSocketPath + "_1030", drain: false)
        defer {
            guest.kill()
            neighbour.kill()
        }
        try neighbour.boot(initrd: goodInitrd, kernel: kernel)
        try guest.boot(initrd: testInitrd, kernel: kernel)

        func waitFor(_ g: BackendGuest, _ needles: [String], seconds: Int) -> Bool {
            let seen = { needles.contains { g.output.contains($0) } }
            // Until a needle shows up or QEMU is gone (then its last output decides).
            waitUntil(timeout: Double(seconds), every: 0.1) { seen() || g.exited(within: 0) }
            return seen()
        }
        try #require(waitFor(neighbour, ["GUEST: READY"], seconds: 300), "neighbour: \(neighbour.output.suffix(2000))")
        let ready = hostile ? ["HOSTILE: READY", "HOSTILE: DONE"] : ["GUEST: READY"]
        try #require(waitFor(guest, ready, seconds: 300), "guest: \(guest.output.suffix(2000))")

        // Beside the attack: the neighbour echoes; host clients CONNECT to a port the hostile guest never answers.
        let counters = PairCounters()
        let nhp = neighbour.backend.hybridSocketPath
        let ghp = guest.backend.hybridSocketPath
        let echoer = ThreadRunner {
            var i = 0
            while !counters.stop.load(ordering: .relaxed) {
                i += 1
                if let fd = hybridConnect(nhp, port: 1024) {
                    let ok = echoCheck(fd, pattern(16384, seed: i))
                    close(fd)
                    if ok {
                        counters.echoes.add(1, ordering: .relaxed)
                    } else {
                        counters.echoFailures.add(1, ordering: .relaxed)
                    }
                } else {
                    counters.echoFailures.add(1, ordering: .relaxed)
                }
                usleep(300_000)
            }
        }
        let guestConsole = guest.console
        let prober = ThreadRunner {
            // Until the last phase, which may end the backend on purpose (then nobody serves the socket).
            while !counters.stop.load(ordering: .relaxed) && !readFile(guestConsole).contains("HOSTILE: PHASE 17") {
                if let fd = try? Linux.connectUnix(ghp) {
                    // The backend may close at once (its connection cap): EPIPE is an answer too.
                    let line = Array("CONNECT 5555 1500\n".utf8)
                    _ = line.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    let t0 = nowMilliseconds()
                    var answered = false
                    while nowMilliseconds() - t0 < 10_000 {
                        // Refused (closed) or OK: either ends the wait; a hostile guest never sends RESPONSE.
                        if readSome(fd, max: 64, timeoutMs: 500) != [] {
                            answered = true
                            break
                        }
                    }
                    if !answered { counters.connectsHung.add(1, ordering: .relaxed) }
                    counters.slowestConnectMs.max(Int(nowMilliseconds() - t0), ordering: .relaxed)
                    counters.connects.add(1, ordering: .relaxed)
                    close(fd)
                }
                usleep(500_000)
            }
        }

        if hostile {
            #expect(waitFor(guest, ["HOSTILE: DONE"], seconds: 1500), "\(guest.output.suffix(3000))")
        } else {
            usleep(30_000_000)
        }
        counters.stop.store(true, ordering: .relaxed)
        echoer.join()
        prober.join()
        out.neighbourEchoes = counters.echoes.load(ordering: .relaxed)
        out.neighbourFailures = counters.echoFailures.load(ordering: .relaxed)
        out.hostConnectsHung = counters.connectsHung.load(ordering: .relaxed)
        out.hostConnects = counters.connects.load(ordering: .relaxed)
        out.slowestConnectMs = counters.slowestConnectMs.load(ordering: .relaxed)

        if !guest.exited(within: 30) { guest.kill() }
        out.console = guest.output
        switch guest.stopBackend(timeoutMs: 10_000) {
        case .none:
            out.backendExit = "HUNG"
            Issue.record("the hostile guest's backend did not return after stop()")
        case .some(.failure(let e)):
            out.backendExit = "failed: \(e)"
            Issue.record("backend failed: \(e)")
        case .some(.success(let exit)):
            out.backendExit = "\(exit)"
        }
        out.backendLog = log.all

        // The neighbour still works after the attack.
        if let fd = hybridConnect(nhp, port: 1024) {
            out.neighbourAfter = echoCheck(fd, pattern(100_000, seed: 7))
            close(fd)
        }
        neighbour.kill()
        if case .none = neighbour.stopBackend(timeoutMs: 10_000) { Issue.record("the neighbour's backend hung") }
        logPort.stop()
        stalled.stop()
        out.logPortBytes = logPort.bytes
        out.logPortConnections = logPort.accepted

        let (anonPeak, shmemPeak) = sampler.stop()
        let hwm = RSSSampler.status("VmHWM")
        out.startMiB = Double(startKiB) / 1024
        out.peakMiB = Double(hwm) / 1024
        out.growthMiB = Double(hwm - startKiB) / 1024
        out.anonGrowthMiB = Double(anonPeak - startAnon) / 1024
        out.shmemPeakMiB = Double(shmemPeak) / 1024
        return out
    }
}
