import Logging
import Testing
import VesselLinux
import VesselTestSupport

@testable import VesselVsock

#if canImport(Glibc)
    import Glibc
#endif

func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
    var out: [UInt8] = []
    appendLE(&out, v)
    return out
}

/// The QEMU side of a vhost-user connection.
final class FrontEnd {
    let fd: Int32
    init(path: String) {
        // A test without its backend cannot go on.
        fd = try! Linux.connectUnix(path)
    }
    deinit { close(fd) }

    @discardableResult
    func send(_ req: UInt32, _ payload: [UInt8] = [], fds: [Int32] = [], flags: UInt32 = 1) -> Bool {
        let msg = VhostUserMessage.encodeRequest(req, payload: payload, flags: flags)
        let n = try? Linux.send(fd, msg, fds: fds)
        return n == msg.count
    }

    /// Sends and reads the reply's payload.
    func call(_ req: UInt32, _ payload: [UInt8] = []) -> [UInt8]? {
        guard send(req, payload) else { return nil }
        let head = readExactly(fd, 12)
        guard head.count == 12 else { return nil }
        let h = head.withUnsafeBytes { VhostUserHeader(bytes: $0.baseAddress!) }
        #expect(h.request == req)
        #expect(h.flags == 0x5)
        return readExactly(fd, Int(h.size))
    }

    func u64(_ req: UInt32) -> UInt64? {
        guard let p = call(req), p.count == 8 else { return nil }
        return p.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
    }

    /// True when the back-end closed the connection (within 10 s, however much it sends first).
    func closedByPeer(timeoutMs: Int32 = 3000) -> Bool {
        let deadline = nowMilliseconds() + 10_000
        while nowMilliseconds() < deadline {
            guard let b = readSome(fd, timeoutMs: timeoutMs) else { return true }
            if b.isEmpty { return false }
        }
        return false
    }
}

@Suite(.timeLimit(.minutes(1))) struct VhostUserCodecTests {
    func decode(
        _ req: UInt32, _ payload: [UInt8], fds: [Int32] = [], flags: UInt32 = 1
    ) throws(VhostUserError)
        -> VhostUserMessage
    {
        try VhostUserMessage.decode(
            header: VhostUserHeader(request: req, flags: flags, size: UInt32(payload.count)),
            payload: payload, fds: fds)
    }

    @Test func wellFormed() throws {
        #expect(try decode(1, []) == .getFeatures)
        #expect(try decode(2, le(UInt64(1 << 32))) == .setFeatures(1 << 32))
        #expect(try decode(8, le(UInt32(1)) + le(UInt32(128))) == .setVringNum(index: 1, num: 128))
        #expect(try decode(12, le(UInt64(0x100))) == .setVringKick(index: 0, fd: nil))
        #expect(try decode(13, le(UInt64(1)), fds: [42]) == .setVringCall(index: 1, fd: 42))
        #expect(try decode(18, le(UInt32(0)) + le(UInt32(1))) == .setVringEnable(index: 0, enable: true))
        #expect(
            try decode(24, le(UInt32(0)) + le(UInt32(8)) + le(UInt32(0)) + [UInt8](repeating: 0, count: 8))
                == .getConfig(offset: 0, size: 8, flags: 0))
        let region = le(UInt64(0)) + le(UInt64(1 << 28)) + le(UInt64(0x7f00_0000_0000)) + le(UInt64(0))
        #expect(
            try decode(5, le(UInt32(1)) + le(UInt32(0)) + region, fds: [9])
                == .setMemTable(
                    [
                        MemoryRegionInfo(
                            guestPhysAddr: 0, size: 1 << 28, userAddr: 0x7f00_0000_0000,
                            mmapOffset: 0)
                    ], fds: [9]))
        #expect(
            try decode(9, le(UInt32(1)) + le(UInt32(0)) + le(UInt64(1)) + le(UInt64(2)) + le(UInt64(3)) + le(UInt64(4)))
                == .setVringAddr(index: 1, flags: 0, desc: 1, used: 2, avail: 3, log: 4))
    }

    @Test func malformed() {
        #expect(throws: VhostUserError.badVersion(flags: 2)) { try decode(1, [], flags: 2) }
        #expect(throws: VhostUserError.unknownRequest(99)) { try decode(99, []) }
        #expect(throws: VhostUserError.unknownRequest(6)) { try decode(6, le(UInt64(0))) }
        #expect(throws: VhostUserError.badSize(request: 2, size: 4)) { try decode(2, le(UInt32(0))) }
        #expect(throws: VhostUserError.badSize(request: 9, size: 8)) { try decode(9, le(UInt64(0))) }
        #expect(throws: VhostUserError.badQueueIndex(5)) { try decode(8, le(UInt32(5)) + le(UInt32(64))) }
        #expect(throws: VhostUserError.badQueueIndex(2)) { try decode(13, le(UInt64(2)), fds: [3]) }
        #expect(throws: VhostUserError.unexpectedFds(request: 13, count: 0)) { try decode(13, le(UInt64(0))) }
        #expect(throws: VhostUserError.unexpectedFds(request: 12, count: 1)) { try decode(12, le(UInt64(0x100)), fds: [3]) }
        #expect(throws: VhostUserError.unexpectedFds(request: 1, count: 1)) { try decode(1, [], fds: [3]) }
        #expect(throws: VhostUserError.tooManyFds(9)) { try decode(5, le(UInt32(1)), fds: Array(0..<9)) }
        #expect(throws: VhostUserError.self) { try decode(5, le(UInt32(0)) + le(UInt32(0))) }  // no regions
        #expect(throws: VhostUserError.self) { try decode(5, le(UInt32(9)) + le(UInt32(0))) }  // 9 regions
        let region = [UInt8](repeating: 0, count: 32)
        #expect(throws: VhostUserError.unexpectedFds(request: 5, count: 1)) {
            try decode(5, le(UInt32(2)) + le(UInt32(0)) + region + region, fds: [3])
        }
        #expect(throws: VhostUserError.badSize(request: 24, size: 12 + 300)) {
            try decode(24, le(UInt32(0)) + le(UInt32(300)) + le(UInt32(0)) + [UInt8](repeating: 0, count: 300))
        }
        #expect(throws: VhostUserError.payloadTooLarge(5000)) {
            try VhostUserMessage.decode(header: VhostUserHeader(request: 1, flags: 1, size: 5000), payload: [], fds: [])
        }
        #expect(throws: VhostUserError.self) { try decode(18, le(UInt32(0)) + le(UInt32(7))) }
    }
}

@Suite(.timeLimit(.minutes(1)), .serialized) struct VhostUserSocketTests {
    func makeBackend(_ dir: TempDir, exitOnDisconnect: Bool) throws -> VsockBackend {
        var o = VsockBackend.Options()
        o.exitOnDisconnect = exitOnDisconnect
        o.logger.logLevel = .critical
        return try VsockBackend(
            vhostUserSocketPath: dir.path + "/vhost.sock", hybridSocketPath: dir.path + "/v.sock",
            guestCID: 3, options: o)
    }

    @Test func malformedMessagesCloseTheConnectionNotTheBackend() throws {
        let dir = TempDir()
        let backend = try makeBackend(dir, exitOnDisconnect: false)
        let thread = backend.start()
        let path = backend.vhostUserSocketPath
        let efds = try (0..<9).map { _ in try Linux.eventFD() }
        defer { for f in efds { close(f) } }
        let cases: [(String, (FrontEnd) -> Void)] = [
            ("bad version", { $0.send(1, [], flags: 2) }),
            (
                "huge size",
                {
                    $0.send(1, [], flags: 1)
                    _ = $0
                }
            ),
            ("short SET_FEATURES", { $0.send(2, le(UInt32(1))) }),
            ("unknown request", { $0.send(99) }),
            ("nine fds", { $0.send(13, le(UInt64(0)), fds: efds) }),
            ("two fds on SET_VRING_CALL", { $0.send(13, le(UInt64(0)), fds: Array(efds[0..<2])) }),
            ("fd on GET_FEATURES", { $0.send(1, [], fds: [efds[0]]) }),
            ("queue index 5", { $0.send(8, le(UInt32(5)) + le(UInt32(64))) }),
            ("vring size 100", { $0.send(8, le(UInt32(0)) + le(UInt32(100))) }),
            ("unsupported feature", { $0.send(2, le(UInt64(1) << 40)) }),
            ("mem table without fds", { $0.send(5, le(UInt32(1)) + le(UInt32(0)) + [UInt8](repeating: 0, count: 32)) }),
            (
                "mem table with a bad fd",
                {
                    $0.send(
                        5, le(UInt32(1)) + le(UInt32(0)) + le(UInt64(0)) + le(UInt64(4096)) + le(UInt64(0)) + le(UInt64(0)),
                        fds: [efds[0]])
                }
            ),
        ]
        for (name, act) in cases {
            let fe = FrontEnd(path: path)
            if name == "huge size" {
                // A header claiming 1 MiB of payload.
                let h = le(UInt32(1)) + le(UInt32(1)) + le(UInt32(1 << 20))
                _ = h.withUnsafeBytes { write(fe.fd, $0.baseAddress, 12) }
            } else {
                act(fe)
            }
            #expect(fe.closedByPeer(), "\(name): connection should be closed")
        }
        // Half a header, then the front-end goes away.
        do {
            let fe = FrontEnd(path: path)
            _ = [UInt8](repeating: 1, count: 5).withUnsafeBytes { write(fe.fd, $0.baseAddress, 5) }
        }
        // One front-end at a time: until the back-end has seen that one go it turns a new one
        // away, so connect again until one is served.
        var fe = FrontEnd(path: path)
        var features = fe.u64(1)
        waitUntil(timeout: 10, every: 0.02) {
            if features == nil {
                fe = FrontEnd(path: path)
                features = fe.u64(1)
            }
            return features != nil
        }
        #expect(features == VhostFeature.offered)
        #expect(fe.u64(15) == 0x201)
        backend.stop()
        #expect(try thread.join().get() == .stopped)
    }

    @Test func fullProtocolDataPathAndDriverReload() throws {
        let dir = TempDir()
        let backend = try makeBackend(dir, exitOnDisconnect: true)
        let thread = backend.start()
        let memfd = try Linux.memoryFile(name: "guest-ram", size: UInt64(FakeDriver.memSize))
        let map = try Linux.mapShared(memfd, length: FakeDriver.memSize)
        defer {
            Linux.unmap(map, length: FakeDriver.memSize)
            close(memfd)
        }
        let kick = [try Linux.eventFD(), try Linux.eventFD()]
        let call = [try Linux.eventFD(), try Linux.eventFD()]
        defer { for f in kick + call { close(f) } }

        var driver = FakeDriver(mapping: map)
        let f = FrontEnd(path: backend.vhostUserSocketPath)
        // The sequence QEMU 7.2 sends.
        #expect(f.u64(1) == VhostFeature.offered)
        #expect(f.u64(15) == 0x201)
        f.send(16, le(UInt64(0x201)))
        #expect(f.u64(17) == 2)
        f.send(3)
        for q in 0..<2 { f.send(13, le(UInt64(q)), fds: [call[q]]) }
        let cfg = f.call(24, le(UInt32(0)) + le(UInt32(8)) + le(UInt32(0)) + [UInt8](repeating: 0, count: 8))
        #expect(cfg.map { Array($0[12...]) } == le(UInt64(3)))

        func startDevice(rxBase: UInt16, txBase: UInt16) {
            f.send(2, le(VhostFeature.offered))
            let region = le(driver.gpaBase) + le(UInt64(FakeDriver.memSize)) + le(driver.uvaBase) + le(UInt64(0))
            f.send(5, le(UInt32(1)) + le(UInt32(0)) + region, fds: [memfd])
            for q in 0..<2 {
                let a = driver.ringAddrs(q == 0 ? driver.rx : driver.tx, uva: true)
                f.send(8, le(UInt32(q)) + le(UInt32(FakeDriver.queueSize)))
                f.send(10, le(UInt32(q)) + le(UInt32(q == 0 ? rxBase : txBase)))
                f.send(9, le(UInt32(q)) + le(UInt32(0)) + le(a.desc) + le(a.used) + le(a.avail) + le(UInt64(0)))
                f.send(12, le(UInt64(q)), fds: [kick[q]])
            }
            for q in 0..<2 { f.send(18, le(UInt32(q)) + le(UInt32(1))) }
            #expect(f.u64(1) == VhostFeature.offered)  // a barrier: everything before was handled
        }
        startDevice(rxBase: 0, txBase: 0)

        func waitCall(_ q: Int) {
            var p = pollfd(fd: call[q], events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, 500)
            Linux.drain(eventFD: call[q])
        }
        func guestReceive(until: ([(VsockHeader, [UInt8])]) -> Bool) -> [(VsockHeader, [UInt8])] {
            var all: [(VsockHeader, [UInt8])] = []
            for _ in 0..<200 {
                all += driver.receive()
                if until(all) { break }
                driver.postRx(32)
                Linux.signal(eventFD: kick[0])
                waitCall(0)
            }
            return all
        }
        func guestSend(_ h: VsockHeader, _ payload: [UInt8] = []) {
            while driver.tx.free.count < 2 {
                waitCall(1)
                driver.reclaimTx()
            }
            driver.sendTx(h, payload)
            Linux.signal(eventFD: kick[1])
        }

        // Host-initiated connection through the hybrid socket.
        let client = try Linux.connectUnix(backend.hybridSocketPath)
        defer { close(client) }
        writeAll(client, Array("CONNECT 1024\n".utf8))
        driver.postRx(16)
        Linux.signal(eventFD: kick[0])
        let req = guestReceive { $0.contains { $0.0.operation == .request } }.first { $0.0.operation == .request }
        #expect(req != nil)
        let local = req?.0.srcPort ?? 0
        guestSend(VsockHeader(srcCID: 3, dstCID: 2, srcPort: 1024, dstPort: local, op: .response, bufAlloc: 1 << 20))
        #expect(readLine(client) == "OK \(local)")

        // 200 KB host -> guest.
        let up = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        writeAll(client, up)
        let got = guestReceive { $0.reduce(0) { $0 + $1.1.count } >= up.count }.flatMap(\.1)
        #expect(got == up)

        // 200 KB guest -> host.
        let down = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 17 &+ 3) }
        var off = 0
        while off < down.count {
            let n = min(60_000, down.count - off)
            guestSend(
                VsockHeader(srcCID: 3, dstCID: 2, srcPort: 1024, dstPort: local, op: .rw, bufAlloc: 1 << 20),
                Array(down[off..<off + n]))
            off += n
        }
        #expect(readExactly(client, down.count) == down)

        // Device stop: the rings' positions come back, the connection is dropped.
        for q in 0..<2 { f.send(18, le(UInt32(q)) + le(UInt32(0))) }
        let rxBase = f.call(11, le(UInt32(0)) + le(UInt32(0)))
        let txBase = f.call(11, le(UInt32(1)) + le(UInt32(0)))
        #expect(rxBase.map { Array($0[4..<8]) } == le(UInt32(driver.usedIdx(rx: true))))
        #expect(txBase.map { Array($0[4..<8]) } == le(UInt32(driver.tx.availIdx)))
        #expect(readSome(client) == nil)

        // Driver reload: fresh rings (a new driver instance over the same memory) and a new connection.
        driver.reclaimTx()
        driver = FakeDriver(mapping: map)
        map.initializeMemory(as: UInt8.self, repeating: 0, count: 0x8000)
        startDevice(rxBase: 0, txBase: 0)
        let client2 = try Linux.connectUnix(backend.hybridSocketPath)
        defer { close(client2) }
        writeAll(client2, Array("CONNECT 1025\n".utf8))
        driver.postRx(16)
        Linux.signal(eventFD: kick[0])
        let req2 = guestReceive { $0.contains { $0.0.operation == .request } }.first { $0.0.operation == .request }
        #expect(req2?.0.dstPort == 1025)

        // QEMU goes away: run() returns.
        shutdown(f.fd, Int32(SHUT_RDWR))
        #expect(try thread.join().get() == .frontEndGone(error: nil))
    }
}
