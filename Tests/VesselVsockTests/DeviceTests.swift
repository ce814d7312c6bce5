import Logging
import Testing
import VesselLinux

@testable import VesselVsock

#if canImport(Glibc)
    import Glibc
#endif

/// The device against a fake driver in memory, single-threaded: the test pumps the event loop.
final class DeviceHarness {
    let dir = TempDir()
    let loop: EpollLoop
    let device: VsockDevice
    let driver = FakeDriver()
    let hybridPath: String
    let hybridListener: Int32
    let guestCID: UInt64 = 3
    private var listeners: [Int32] = []

    init(options: VsockDeviceOptions = VsockDeviceOptions()) throws {
        loop = try EpollLoop()
        hybridPath = dir.path + "/v.sock"
        device = VsockDevice(
            guestCID: 3, hybridPath: hybridPath, options: options, loop: loop,
            logger: Logger(label: "test"))
        let (rq, tq) = try driver.makeQueues(memory: driver.memory)
        device.activate(rx: rq, tx: tq)
        let l = try Linux.listenUnix(hybridPath, nonBlocking: true)
        hybridListener = l
        try loop.register(fd: l, events: .readable) { [device] _ in device.acceptHost(listener: l) }
    }

    deinit {
        device.teardown()
        Linux.close(hybridListener)
        for l in listeners { Linux.close(l) }
    }

    /// A host listener at `<path>_port`.
    func listen(port: UInt32) throws -> Int32 {
        let fd = try Linux.listenUnix("\(hybridPath)_\(port)", nonBlocking: true)
        listeners.append(fd)
        return fd
    }

    /// Lets the device run: events, "kicks" of both queues, timers.
    func pump(_ rounds: Int = 3) {
        for _ in 0..<rounds {
            loop.runOnce(timeoutMilliseconds: 5)
            device.handleTimers()
            device.processTx()
            device.processRx()
            driver.reclaimTx()
        }
    }

    func g(
        _ op: VsockHeader.Op, src: UInt32, dst: UInt32, bufAlloc: UInt32 = 256 * 1024, fwdCnt: UInt32 = 0,
        flags: UInt32 = 0
    ) -> VsockHeader {
        VsockHeader(
            srcCID: guestCID, dstCID: 2, srcPort: src, dstPort: dst, op: op, flags: flags, bufAlloc: bufAlloc,
            fwdCnt: fwdCnt)
    }

    /// A guest-initiated connection guest:src -> host:port; returns the accepted host fd (blocking).
    func guestConnect(src: UInt32, port: UInt32, bufAlloc: UInt32 = 256 * 1024) throws -> Int32 {
        let l = try listen(port: port)
        driver.postRx(8)
        driver.sendTx(g(.request, src: src, dst: port, bufAlloc: bufAlloc))
        pump()
        let pkts = driver.receive()
        #expect(pkts.count == 1)
        #expect(pkts.first?.0.operation == .response)
        #expect(pkts.first?.0.srcPort == port)
        #expect(pkts.first?.0.dstPort == src)
        let fd = try #require(try Linux.accept(l))
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
        return fd
    }

    /// A host-initiated connection to guest port `port`, the guest answering from memory. Returns (client, localPort).
    func hostConnect(port: UInt32, bufAlloc: UInt32 = 256 * 1024) throws -> (Int32, UInt32) {
        let client = try Linux.connectUnix(hybridPath)
        writeAll(client, Array("CONNECT \(port)\n".utf8))
        driver.postRx(8)
        pump()
        let pkts = driver.receive()
        #expect(pkts.count == 1)
        let req = pkts[0].0
        #expect(req.operation == .request)
        #expect(req.dstPort == port)
        #expect(req.dstCID == guestCID)
        #expect(req.srcCID == 2)
        driver.sendTx(g(.response, src: port, dst: req.srcPort, bufAlloc: bufAlloc))
        pump()
        #expect(readLine(client) == "OK \(req.srcPort)")
        return (client, req.srcPort)
    }
}

@Suite(.timeLimit(.minutes(1))) struct HeaderTests {
    @Test func roundTrip() {
        let h = VsockHeader(
            srcCID: 0x1122_3344_5566_7788, dstCID: 2, srcPort: 0xdead_beef, dstPort: 1024, len: 4096,
            op: .rw, flags: 3, bufAlloc: 262144, fwdCnt: 77)
        let b = h.bytes
        #expect(b.count == 44)
        #expect(Array(b[0..<8]) == [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11])
        #expect(Array(b[16..<20]) == [0xef, 0xbe, 0xad, 0xde])
        #expect(b[28] == 1 && b[29] == 0)  // type stream
        #expect(b[30] == 5 && b[31] == 0)  // op RW
        #expect(VsockHeader(bytes: b) == h)
    }

    @Test func parseConnect() {
        #expect(VsockDevice.parseConnect(ArraySlice(Array("CONNECT 1024".utf8)))! == (1024, nil))
        #expect(VsockDevice.parseConnect(ArraySlice(Array("CONNECT 1024 500\r".utf8)))! == (1024, 500))
        #expect(VsockDevice.parseConnect(ArraySlice(Array("CONNECT".utf8))) == nil)
        #expect(VsockDevice.parseConnect(ArraySlice(Array("connect 1".utf8))) == nil)
        #expect(VsockDevice.parseConnect(ArraySlice(Array("CONNECT 99999999999".utf8))) == nil)
    }
}

@Suite(.timeLimit(.minutes(1))) struct VirtqueueTests {
    @Test func chainsAndUsedRing() throws {
        let d = FakeDriver()
        let mem = d.memory
        let (rq, tq) = try d.makeQueues(memory: mem)
        #expect(!tq.hasAvailable)
        d.sendTx(VsockHeader(op: .rw), [1, 2, 3, 4, 5])
        d.sendTx(VsockHeader(op: .rw), [6, 7], split: false)
        var chain = DescriptorChain()
        #expect(tq.peek(into: &chain))
        #expect(chain.valid && chain.readable.count == 2 && chain.readableLength == 49 && chain.writable.isEmpty)
        var five = [UInt8](repeating: 0, count: 5)
        #expect(five.withUnsafeMutableBytes { chain.copyReadable(offset: 44, count: 5, to: $0.baseAddress!) })
        #expect(five == [1, 2, 3, 4, 5])
        tq.commit(chain, written: 0)
        #expect(tq.peek(into: &chain))
        #expect(chain.readable.count == 1 && chain.readableLength == 46)
        tq.commit(chain, written: 0)
        #expect(!tq.peek(into: &chain))
        #expect(d.reclaimTx() == 2)

        d.postRx(1)
        #expect(rq.peek(into: &chain))
        #expect(chain.writable.count == 2 && chain.writableLength == 44 + 4096)
        var h = VsockHeader(srcCID: 2, dstCID: 3, op: .rw)
        h.len = 3
        var bytes = h.bytes + [9, 8, 7]
        #expect(bytes.withUnsafeMutableBytes { chain.copyToWritable(offset: 0, count: 47, from: $0.baseAddress!) })
        rq.commit(chain, written: 47)
        let got = d.receive()
        #expect(got.count == 1 && got[0].0 == h && got[0].1 == [9, 8, 7])
        bytes = []
    }

    @Test func malformedChainsAreConsumedNotFollowed() throws {
        let d = FakeDriver()
        let (_, tq) = try d.makeQueues(memory: d.memory)
        d.publishRawTx(addr: 0x10, len: 44, flags: 0, next: 0)  // outside guest memory
        d.publishRawTx(addr: d.gpaBase, len: 44, flags: 4, next: 0)  // indirect (not negotiated)
        var chain = DescriptorChain()
        #expect(tq.peek(into: &chain) && !chain.valid)
        tq.commit(chain, written: 0)
        #expect(tq.peek(into: &chain) && !chain.valid)
        tq.commit(chain, written: 0)
        #expect(tq.brokenChains == 2)
    }

    @Test func loopingChainIsInvalid() throws {
        let d = FakeDriver()
        let (_, tq) = try d.makeQueues(memory: d.memory)
        // Descriptor 0 (the first one handed out) chains to itself.
        d.publishRawTx(addr: d.gpaBase + 0x20000, len: 44, flags: 1, next: 0)
        var chain = DescriptorChain()
        #expect(tq.peek(into: &chain) && !chain.valid)
    }

    @Test func ringOutsideMemoryIsRejected() {
        let d = FakeDriver()
        #expect(throws: VirtqueueError.self) {
            _ = try SplitVirtqueue(
                memory: d.memory, size: 64, descAddr: 0, availAddr: 0, usedAddr: 0, base: 0,
                ringAddressesAreGuestPhysical: true)
        }
        #expect(throws: VirtqueueError.self) {
            _ = try SplitVirtqueue(
                memory: d.memory, size: 48, descAddr: d.gpaBase, availAddr: d.gpaBase,
                usedAddr: d.gpaBase, base: 0, ringAddressesAreGuestPhysical: true)
        }
    }
}

@Suite(.timeLimit(.minutes(1))) struct DeviceTests {
    @Test func guestInitiatedEcho() throws {
        let t = try DeviceHarness()
        let host = try t.guestConnect(src: 1234, port: 5000)
        defer { close(host) }
        t.driver.sendTx(t.g(.rw, src: 1234, dst: 5000), Array("hello".utf8))
        t.pump()
        #expect(readSome(host) == Array("hello".utf8))
        writeAll(host, Array("world".utf8))
        t.pump()
        let p = t.driver.receive()
        #expect(p.count == 1)
        #expect(p.first?.0.operation == .rw)
        #expect(p.first?.1 == Array("world".utf8))
        #expect(p.first?.0.fwdCnt == 5)
        let ba: UInt32? = p.first?.0.bufAlloc
        #expect(ba == 262_144)
    }

    @Test func refusedAndUnknownGetRst() throws {
        let t = try DeviceHarness()
        t.driver.postRx(8)
        t.driver.sendTx(t.g(.request, src: 1, dst: 5001))
        t.driver.sendTx(t.g(.rw, src: 2, dst: 5002), [1, 2, 3])
        t.driver.sendTx(t.g(.rst, src: 3, dst: 5003))  // RST to nothing: no answer
        var wrongCID = t.g(.request, src: 4, dst: 5004)
        wrongCID.srcCID = 99  // spoofed source: dropped
        t.driver.sendTx(wrongCID)
        t.pump()
        let p = t.driver.receive()
        #expect(p.map(\.0.operation) == [.rst, .rst])
        #expect(p.map(\.0.dstPort) == [1, 2])
        #expect(p.map(\.0.srcPort) == [5001, 5002])
        #expect(t.device.connectionCount == 0)
    }

    @Test func hostInitiatedBothWays() throws {
        let t = try DeviceHarness()
        let (client, local) = try t.hostConnect(port: 1024)
        defer { close(client) }
        #expect(local >= 1 << 30)
        let data = (0..<10000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        writeAll(client, data)
        t.driver.postRx(8)
        t.pump()
        var got: [UInt8] = []
        for (h, payload) in t.driver.receive() {
            #expect(h.operation == .rw && h.srcPort == local && h.dstPort == 1024)
            #expect(payload.count <= 4096)
            got += payload
        }
        #expect(got == data)
        let back = (0..<3000).map { UInt8(truncatingIfNeeded: $0 * 13) }
        t.driver.sendTx(t.g(.rw, src: 1024, dst: local), back, split: false)
        t.pump()
        #expect(readExactly(client, 3000) == back)
    }

    @Test func guestRefusesHostConnect() throws {
        let t = try DeviceHarness()
        let client = try Linux.connectUnix(t.hybridPath)
        defer { close(client) }
        writeAll(client, Array("CONNECT 77\n".utf8))
        t.driver.postRx(4)
        t.pump()
        let req = t.driver.receive()
        #expect(req.count == 1 && req[0].0.operation == .request)
        t.driver.sendTx(t.g(.rst, src: 77, dst: req[0].0.srcPort))
        t.pump()
        #expect(readSome(client) == nil)  // closed, no OK
        #expect(t.device.connectionCount == 0)
    }

    @Test func connectTimesOutWithRst() throws {
        let t = try DeviceHarness()
        let client = try Linux.connectUnix(t.hybridPath)
        defer { close(client) }
        // Pumped until the RST comes, however slowly this host runs the pumps; only then is the
        // time checked: not before the timeout, one request, then the RST.
        let start = nowMilliseconds()
        writeAll(client, Array("CONNECT 78 100\n".utf8))
        t.driver.postRx(4)
        var operations: [VsockHeader.Op] = []
        while !operations.contains(.rst) && nowMilliseconds() - start < 10_000 {
            t.pump(1)
            operations += t.driver.receive().map(\.0.operation)
        }
        let elapsed = nowMilliseconds() - start
        #expect(operations == [.request, .rst])
        #expect(elapsed >= 100, "RST after \(elapsed) ms, before the 100 ms timeout")
        t.pump()
        #expect(readSome(client) == nil)
    }

    @Test func badHandshakeCloses() throws {
        let t = try DeviceHarness()
        let client = try Linux.connectUnix(t.hybridPath)
        defer { close(client) }
        writeAll(client, Array("HELLO 1\n".utf8))
        t.pump()
        #expect(readSome(client) == nil)
    }

    @Test func creditLimitsHostToGuest() throws {
        let t = try DeviceHarness()
        let host = try t.guestConnect(src: 1000, port: 5000, bufAlloc: 8192)
        defer { close(host) }
        let data = (0..<20000).map { UInt8(truncatingIfNeeded: $0) }
        writeAll(host, data)
        t.driver.postRx(16)
        t.pump(5)
        var got = t.driver.receive().flatMap(\.1)
        #expect(got.count == 8192)
        t.driver.sendTx(t.g(.creditUpdate, src: 1000, dst: 5000, bufAlloc: 8192, fwdCnt: 8192))
        t.pump(5)
        got += t.driver.receive().flatMap(\.1)
        #expect(got.count == 16384)
        t.driver.sendTx(t.g(.creditUpdate, src: 1000, dst: 5000, bufAlloc: 8192, fwdCnt: 16384))
        t.pump(5)
        got += t.driver.receive().flatMap(\.1)
        #expect(got == data)
    }

    @Test func roundRobinBetweenConnections() throws {
        let t = try DeviceHarness()
        let a = try t.guestConnect(src: 1000, port: 5000)
        let b = try t.guestConnect(src: 1001, port: 5001)
        defer {
            close(a)
            close(b)
        }
        writeAll(a, [UInt8](repeating: 1, count: 40000))
        writeAll(b, [UInt8](repeating: 2, count: 40000))
        t.pump(1)  // events only; rx ring is empty
        t.driver.postRx(8)
        t.pump(1)
        let p = t.driver.receive()
        #expect(p.count >= 8)
        let order = p.prefix(16).map(\.0.dstPort)
        for i in 1..<order.count { #expect(order[i] != order[i - 1]) }
    }

    @Test func slowHostReaderBackPressuresGuest() throws {
        var opts = VsockDeviceOptions()
        opts.bufferSize = 1 << 20
        opts.creditUpdateThreshold = 64 * 1024
        let t = try DeviceHarness(options: opts)
        let host = try t.guestConnect(src: 1000, port: 5000)
        defer { close(host) }
        let chunk = 60000
        var sent: [UInt8] = []
        // The guest sends its whole credit (1 MiB); the host reads nothing.
        for i in 0..<Int((1 << 20) / chunk) {
            let payload = (0..<chunk).map { UInt8(truncatingIfNeeded: $0 &+ i) }
            sent += payload
            t.driver.sendTx(t.g(.rw, src: 1000, dst: 5000), payload)
            t.pump(1)
        }
        t.driver.postRx(8)
        t.pump(2)
        // Forwarded bytes are reported; more than the socket takes is buffered and not yet credited.
        let early = t.driver.receive().filter { $0.0.operation == .creditUpdate }.map(\.0.fwdCnt).max() ?? 0
        #expect(early < UInt32(sent.count))
        var got: [UInt8] = []
        while got.count < sent.count {
            guard let c = readSome(host, max: 1 << 20, timeoutMs: 200), !c.isEmpty else { break }
            got += c
            t.pump(1)
        }
        #expect(got == sent)
        t.driver.postRx(8)
        t.pump(2)
        let credits = t.driver.receive().filter { $0.0.operation == .creditUpdate }.map(\.0.fwdCnt)
        #expect(credits.last == UInt32(sent.count))
    }

    @Test func guestExceedingCreditIsReset() throws {
        var opts = VsockDeviceOptions()
        opts.bufferSize = 4096
        let t = try DeviceHarness(options: opts)
        let host = try t.guestConnect(src: 1000, port: 5000)
        defer { close(host) }
        // Fill the host socket so that nothing more can be written, then overrun the 4 KiB credit.
        var n = 0
        while n < 64 {
            t.driver.sendTx(t.g(.rw, src: 1000, dst: 5000), [UInt8](repeating: 7, count: 60000))
            t.pump(1)
            n += 1
            if t.device.connectionCount == 0 { break }
        }
        #expect(t.device.connectionCount == 0)
        t.driver.postRx(4)
        t.pump()
        #expect(t.driver.receive().contains { $0.0.operation == .rst })
    }

    @Test func shutdownSequences() throws {
        let t = try DeviceHarness()
        // Guest closes: SHUTDOWN(both) -> host sees EOF, guest gets RST.
        let host = try t.guestConnect(src: 1000, port: 5000)
        t.driver.sendTx(t.g(.rw, src: 1000, dst: 5000), Array("last".utf8))
        t.driver.sendTx(t.g(.shutdown, src: 1000, dst: 5000, flags: 3))
        t.driver.postRx(4)
        t.pump()
        #expect(readSome(host) == Array("last".utf8))
        #expect(readSome(host) == nil)
        #expect(t.driver.receive().map(\.0.operation) == [.rst])
        close(host)

        // Host half-closes: SHUTDOWN(send); the guest can still send; then the host closes: SHUTDOWN(both).
        let (client, local) = try t.hostConnect(port: 1024)
        shutdown(client, Int32(SHUT_WR))
        t.driver.postRx(4)
        t.pump()
        let s1 = t.driver.receive()
        #expect(s1.map(\.0.operation) == [.shutdown])
        #expect(s1.first?.0.flags == VsockHeader.shutdownSend)
        t.driver.sendTx(t.g(.rw, src: 1024, dst: local), Array("reply".utf8))
        t.pump()
        #expect(readExactly(client, 5) == Array("reply".utf8))
        close(client)
        t.pump()
        let s2 = t.driver.receive()
        #expect(s2.map(\.0.operation) == [.shutdown])
        #expect(s2.first?.0.flags == 3)
        t.driver.sendTx(t.g(.rst, src: 1024, dst: local))
        t.pump()
        #expect(t.device.connectionCount == 0)
    }

    @Test func creditRequestIsAnswered() throws {
        let t = try DeviceHarness()
        let host = try t.guestConnect(src: 1000, port: 5000)
        defer { close(host) }
        t.driver.sendTx(t.g(.rw, src: 1000, dst: 5000), [1, 2, 3])
        t.driver.sendTx(t.g(.creditRequest, src: 1000, dst: 5000))
        t.pump()
        let p = t.driver.receive()
        #expect(p.map(\.0.operation) == [.creditUpdate])
        #expect(p.first?.0.fwdCnt == 3)
    }

    @Test func deviceStopDropsConnectionsButKeepsWaitingConnects() throws {
        let t = try DeviceHarness()
        let host = try t.guestConnect(src: 1000, port: 5000)
        defer { close(host) }
        let rxBase = t.device.rxQueue!.lastAvailable
        let txBase = t.device.txQueue!.lastAvailable
        t.device.deactivate()
        #expect(readSome(host) == nil)
        let client = try Linux.connectUnix(t.hybridPath)
        defer { close(client) }
        writeAll(client, Array("CONNECT 1024\n".utf8))
        t.pump()
        #expect(t.device.connectionCount == 1)
        // Driver restart: new rings; the waiting CONNECT goes out.
        let (rq, tq) = try t.driver.makeQueues(memory: t.driver.memory, rxBase: rxBase, txBase: txBase)
        t.device.activate(rx: rq, tx: tq)
        t.pump()
        let p = t.driver.receive()
        #expect(p.contains { $0.0.operation == .request && $0.0.dstPort == 1024 })
    }

    // A guest that publishes an avail index more than a ring ahead of us has garbage in its ring: walking the
    // "entries" would replay stale descriptors thousands of times. The device stops instead, and drops its
    // connections so that host clients are not left waiting on a guest that cannot be reached.
    @Test func availIndexJumpingAheadStopsTheDevice() throws {
        let t = try DeviceHarness()
        let host = try t.guestConnect(src: 1000, port: 5000)
        defer { close(host) }
        let txq = try #require(t.device.txQueue)
        let before = txq.lastAvailable
        t.driver.forceAvailIdx(rx: false, t.driver.tx.availIdx &+ 5000)
        t.pump()
        #expect(txq.lastAvailable == before, "the device walked \(txq.lastAvailable &- before) bogus entries")
        #expect(t.device.connectionCount == 0)
        #expect(readSome(host) == nil)
        // Until the guest resets the device, nothing more is taken from its rings.
        t.driver.forceAvailIdx(rx: false, before)
        t.driver.sendTx(t.g(.request, src: 1001, dst: 5000))
        t.pump()
        #expect(txq.lastAvailable == before)
        // A device start (new rings) works again.
        let (rq, tq) = try t.driver.makeQueues(
            memory: t.driver.memory, rxBase: t.device.rxQueue!.lastAvailable,
            txBase: before)
        t.device.deactivate()
        t.device.activate(rx: rq, tx: tq)
        t.driver.postRx(4)
        t.pump()
        #expect(t.driver.receive().map(\.0.operation) == [.response])
    }

    // A guest vCPU can refill a ring as fast as the backend drains it; one call must still end (a ring's worth at
    // most) so that host sockets, timers and stop() get their turn.
    @Test func aGuestRefillingTheTxRingCannotHoldTheLoop() throws {
        let t = try DeviceHarness()
        // Descriptor 0: a packet from a spoofed CID, dropped at once (and counted).
        var h = t.g(.rw, src: 1, dst: 2)
        h.srcCID = 99
        h.encode(to: t.driver.mem + t.driver.tx.bufOffset)
        t.driver.publishRawTx(addr: t.driver.gpaBase + UInt64(t.driver.tx.bufOffset), len: 44, flags: 0, next: 0)
        let stop = Flag()
        let producer = t.driver.refillForever(rx: false, head: 0, stop: stop, limit: 300_000)
        var most = 0
        let t0 = nowMilliseconds()
        while nowMilliseconds() - t0 < 1500 {
            let before = t.device.droppedPackets
            t.device.processTx()
            most = max(most, t.device.droppedPackets - before)
        }
        stop.set()
        producer.join()
        #expect(most > 0)
        #expect(most <= Int(FakeDriver.queueSize), "one processTx call handled \(most) packets")
    }

    @Test func aGuestRefillingTheRxRingCannotHoldTheLoop() throws {
        let t = try DeviceHarness()
        t.driver.sendTx(t.g(.rw, src: 1, dst: 5002), [1])  // no connection: an RST waits for an rx buffer
        t.device.processTx()
        // Every rx "buffer" lies outside guest memory: each is consumed as broken, none can carry the RST.
        let head = t.driver.rx.free.removeLast()
        let d = t.driver.mem + t.driver.rx.ringOffset + 16 * Int(head)
        d.storeBytes(of: UInt64(0x10).littleEndian, toByteOffset: 0, as: UInt64.self)
        d.storeBytes(of: UInt32(4096).littleEndian, toByteOffset: 8, as: UInt32.self)
        d.storeBytes(of: UInt16(2).littleEndian, toByteOffset: 12, as: UInt16.self)
        let rxq = try #require(t.device.rxQueue)
        let stop = Flag()
        let producer = t.driver.refillForever(rx: true, head: head, stop: stop, limit: 300_000)
        var most = 0
        let t0 = nowMilliseconds()
        while nowMilliseconds() - t0 < 1500 {
            let before = rxq.brokenChains
            t.device.processRx()
            most = max(most, rxq.brokenChains - before)
        }
        stop.set()
        producer.join()
        #expect(most > 0)
        #expect(most <= Int(FakeDriver.queueSize), "one processRx call consumed \(most) buffers")
    }

    // Every stream's buffer is credit the guest was given, but a guest with thousands of streams towards host
    // readers that never read would pin 256 KiB each (1 GiB at the connection cap): with the defaults the device
    // holds at most 32 MiB of receive buffers, and a stream that would need more is reset.
    @Test func receiveBuffersOfAllStreamsAreBounded() throws {
        let t = try DeviceHarness()
        let l = try t.listen(port: 5000)
        var hostFds: [Int32] = []
        defer { for fd in hostFds { close(fd) } }
        let payload = [UInt8](repeating: 0x42, count: 60_000)
        func buffered() -> Int {
            t.device.connections.values.reduce(0) { $0 + ($1.buffer.storage == nil ? 0 : $1.buffer.capacity) }
        }
        var most = 0
        for i in 0..<160 {
            let src = UInt32(10_000 + i)
            t.driver.postRx(2)
            t.driver.sendTx(t.g(.request, src: src, dst: 5000))
            t.device.processTx()
            t.device.processRx()
            _ = t.driver.receive()
            if let fd = try? Linux.accept(l) { hostFds.append(fd) }
            // ~400 KB within the stream's credit; the host side never reads.
            for _ in 0..<7 {
                t.driver.reclaimTx()
                t.driver.sendTx(t.g(.rw, src: src, dst: 5000), payload)
                t.device.processTx()
            }
            t.driver.reclaimTx()
            most = max(most, buffered())
        }
        #expect(hostFds.count == 160)
        #expect(most > 16 << 20, "the streams did buffer")
        #expect(most <= 32 << 20, "\(most >> 20) MiB of receive buffers for \(t.device.connectionCount) streams")
        t.driver.postRx(32)
        t.pump()
        #expect(t.driver.receive().contains { $0.0.operation == .rst }, "the streams beyond the bound are reset")
        // Once the readers catch up the buffers go back to the shared bound.
        for fd in hostFds { setNonBlocking(fd) }
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        for _ in 0..<40 where t.device.bufferedBytes > 0 {
            for fd in hostFds { while buf.withUnsafeMutableBytes({ read(fd, $0.baseAddress, 1 << 16) }) > 0 {} }
            t.driver.postRx(32)
            t.pump(1)
            _ = t.driver.receive()
        }
        #expect(t.device.bufferedBytes == 0)
    }
}
