import CVesselVsock
import Logging
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// Tunables of the vsock device.
public struct VsockDeviceOptions: Sendable {
    /// Per-connection receive buffer (guest to host) advertised as buf_alloc; the most we ever buffer per connection.
    public var bufferSize: UInt32 = 256 * 1024
    /// Send an unsolicited CREDIT_UPDATE once this many bytes were forwarded since the last report.
    public var creditUpdateThreshold: UInt32 = 64 * 1024
    /// How long a CONNECT waits for the guest driver and the guest's RESPONSE.
    public var connectTimeoutMs: UInt64 = 10_000
    /// How long a connection waits for the guest's RST after a full SHUTDOWN, or to drain after the guest's.
    public var closeTimeoutMs: UInt64 = 5_000
    public var maxConnections = 4096
    /// Bound on queued control packets (RSTs to connections that no longer exist).
    public var maxControlPackets = 4096
    /// Bound on the receive buffers of all connections together. Each is credit the guest was given, but thousands
    /// of connections towards host readers that do not read would add up to gigabytes; a connection that needs
    /// a buffer beyond this is reset.
    public var maxBufferedBytes = 32 << 20
    public init() {}
}

struct ConnKey: Hashable {
    /// Host-side port (our `<path>_P` port for guest-initiated connections, the allocated port otherwise).
    var local: UInt32
    /// Guest-side port.
    var peer: UInt32
}

/// Bytes from the guest waiting for a slow host reader; bounded by the credit we advertise.
struct ByteRing {
    private(set) var storage: UnsafeMutableRawPointer?
    let capacity: Int
    private(set) var head = 0
    private(set) var count = 0

    init(capacity: Int) { self.capacity = capacity }

    var isEmpty: Bool { count == 0 }
    var free: Int { capacity - count }

    mutating func append(from segs: [Segment], offset: Int, count n: Int) {
        precondition(n <= free)
        if storage == nil { storage = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16) }
        var iov: [iovec] = []
        DescriptorChain.iovecs(segs, offset: offset, count: n, into: &iov)
        for v in iov {
            var src = UnsafeRawPointer(v.iov_base!)
            var left = v.iov_len
            while left > 0 {
                let tail = (head + count) % capacity
                let chunk = min(left, capacity - tail)
                (storage! + tail).copyMemory(from: src, byteCount: chunk)
                count += chunk
                left -= chunk
                src += chunk
            }
        }
    }

    /// Up to two iovecs covering the buffered bytes in order.
    func readable(into out: inout [iovec]) {
        out.removeAll(keepingCapacity: true)
        guard count > 0, let s = storage else { return }
        let first = min(count, capacity - head)
        out.append(iovec(iov_base: s + head, iov_len: first))
        if count > first { out.append(iovec(iov_base: s, iov_len: count - first)) }
    }

    mutating func consume(_ n: Int) {
        head = (head + n) % capacity
        count -= n
        if count == 0 { head = 0 }
    }

    mutating func release() {
        storage?.deallocate()
        storage = nil
        head = 0
        count = 0
    }
}

final class Connection {
    enum State { case connecting, requestSent, established }

    let key: ConnKey
    let hostInitiated: Bool
    var fd: Int32
    var token: UInt64 = 0
    var state: State
    var dead = false
    var inRR = false

    var pendingRequest = false
    var pendingResponse = false
    var pendingCredit = false
    var pendingShutdown: UInt32 = 0
    var sentShutdown: UInt32 = 0
    var peerShutdown: UInt32 = 0

    /// Host socket flags (edge-triggered epoll: set by events, cleared on EAGAIN).
    var readable = false
    var hup = false
    var localEOF = false
    var shutWr = false

    /// Host to guest: bytes sent, and the guest's advertised buffer.
    var rxCnt: UInt32 = 0
    var peerBufAlloc: UInt32 = 0
    var peerFwdCnt: UInt32 = 0
    /// Guest to host: bytes forwarded to the host socket, last value reported to the guest.
    var fwdCnt: UInt32 = 0
    var lastReportedFwd: UInt32 = 0
    var buf: ByteRing
    var deadline: UInt64?

    init(key: ConnKey, fd: Int32, hostInitiated: Bool, state: State, bufferSize: Int) {
        self.key = key
        self.fd = fd
        self.hostInitiated = hostInitiated
        self.state = state
        self.buf = ByteRing(capacity: bufferSize)
    }

    deinit { buf.release() }

    var peerCredit: UInt32 {
        let inFlight = rxCnt &- peerFwdCnt
        return inFlight >= peerBufAlloc ? 0 : peerBufAlloc - inFlight
    }
}

/// The vsock device proper: guest packets from the tx queue, host data and control packets into the rx queue,
/// host-side Unix sockets. Runs on one thread with the event loop.
final class VsockDevice {
    let guestCID: UInt64
    let hybridPath: String
    let options: VsockDeviceOptions
    let loop: EventLoop
    var logger: Logger

    private(set) var rxq: SplitVirtqueue?
    private(set) var txq: SplitVirtqueue?
    var active: Bool { rxq != nil && txq != nil }

    private(set) var conns: [ConnKey: Connection] = [:]
    private var rr = CircularBuffer<Connection>(initialCapacity: 64)
    private var control = CircularBuffer<VsockHeader>(initialCapacity: 16)
    private var timed: Set<ConnKey> = []
    private var handshakes: [UInt64: Int32] = [:]
    private var nextLocalPort: UInt32 = 1 << 30
    private var chain = DescriptorChain()
    private var iov: [iovec] = []
    private let scratch = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 16)

    /// Counters (tests, diagnostics).
    private(set) var droppedPackets = 0
    private(set) var droppedControl = 0
    /// Receive buffers currently allocated (`maxBufferedBytes`), and connections reset for want of one.
    private(set) var bufferedBytes = 0
    private(set) var bufferResets = 0

    /// A guest can refill a ring as fast as we drain it, so one call takes at most a ring's worth and the event
    /// loop comes back at once (`hasPendingWork`) after host sockets, timers and stop() had their turn.
    private(set) var txPending = false
    private(set) var rxPending = false
    var hasPendingWork: Bool { txPending || rxPending }
    /// The guest broke a ring (`SplitVirtqueue.broken`): nothing is done until the device is started again.
    private(set) var broken = false

    init(guestCID: UInt64, hybridPath: String, options: VsockDeviceOptions, loop: EventLoop, logger: Logger) {
        self.guestCID = guestCID
        self.hybridPath = hybridPath
        self.options = options
        self.loop = loop
        self.logger = logger
        iov.reserveCapacity(16)
    }

    deinit {
        teardown()
        scratch.deallocate()
    }

    // MARK: Lifecycle

    func activate(rx: SplitVirtqueue, tx: SplitVirtqueue) {
        rxq = rx
        txq = tx
        broken = false
        logger.debug("vsock device started", metadata: ["rx": "\(rx.size)", "tx": "\(tx.size)"])
        for c in conns.values { schedule(c) }
        processTx()
    }

    /// Device stop (driver reset or unload): the guest forgets all connections, so drop them. CONNECTs whose
    /// REQUEST was not sent yet keep waiting for the next start.
    func deactivate() {
        guard active else { return }
        rxq = nil
        txq = nil
        txPending = false
        rxPending = false
        for c in Array(conns.values) where !(c.hostInitiated && c.state == .connecting) {
            kill(c, rst: false)
        }
        control.removeAll()
        logger.debug("vsock device stopped")
    }

    /// As a stop, but the rings stay (their positions are still asked for by GET_VRING_BASE): the guest cannot
    /// be reached until it resets the device, so its connections end now rather than hang their host peers.
    private func ringBroken(_ name: String) {
        guard !broken else { return }
        broken = true
        txPending = false
        rxPending = false
        logger.error(
            "guest published an avail index more than a ring ahead: vsock device stopped until it resets it",
            metadata: ["queue": "\(name)"])
        for c in Array(conns.values) where !(c.hostInitiated && c.state == .connecting) {
            kill(c, rst: false)
        }
        control.removeAll()
    }

    /// Closes every host socket.
    func teardown() {
        rxq = nil
        txq = nil
        for c in Array(conns.values) { kill(c, rst: false) }
        for (token, fd) in handshakes {
            loop.unregister(fd: fd, token: token)
            closeFd(fd)
        }
        handshakes = [:]
        control.removeAll()
    }

    var connectionCount: Int { conns.count }

    // MARK: Host side: CONNECT handshake on <path>

    func acceptHost(listener: Int32) {
        while true {
            let fd = cvv_accept(listener)
            if fd < 0 { return }
            if handshakes.count + conns.count >= options.maxConnections {
                closeFd(fd)
                continue
            }
            var token: UInt64 = 0
            do {
                token = try loop.register(fd: fd, events: CVV_EV_IN | CVV_EV_RDHUP | CVV_EV_ET) { [unowned self] _ in
                    self.handshakeReadable(fd: fd, token: token)
                }
            } catch {
                closeFd(fd)
                continue
            }
            handshakes[token] = fd
            handshakeReadable(fd: fd, token: token)
        }
    }

    private func dropHandshake(fd: Int32, token: UInt64) {
        loop.unregister(fd: fd, token: token)
        handshakes[token] = nil
        closeFd(fd)
    }

    private func handshakeReadable(fd: Int32, token: UInt64) {
        guard handshakes[token] == fd else { return }
        var line = [UInt8](repeating: 0, count: 64)
        let n = line.withUnsafeMutableBytes { cvv_peek(fd, $0.baseAddress, 64) }
        if n == -Int(EAGAIN) { return }
        if n <= 0 {
            dropHandshake(fd: fd, token: token)
            return
        }
        guard let nl = line[0..<n].firstIndex(of: UInt8(ascii: "\n")) else {
            if n >= 64 { dropHandshake(fd: fd, token: token) }
            return
        }
        _ = line.withUnsafeMutableBytes { cvv_read(fd, $0.baseAddress, nl + 1) }
        guard let (port, timeout) = VsockDevice.parseConnect(line[0..<nl]) else {
            logger.debug("bad hybrid vsock handshake")
            dropHandshake(fd: fd, token: token)
            return
        }
        loop.unregister(fd: fd, token: token)
        handshakes[token] = nil
        hostConnect(fd: fd, port: port, timeoutMs: timeout ?? options.connectTimeoutMs)
    }

    /// `CONNECT <port>` with an optional third field: a timeout in milliseconds (a Vessel extension).
    static func parseConnect(_ bytes: ArraySlice<UInt8>) -> (UInt32, UInt64?)? {
        var s = String(decoding: bytes, as: UTF8.self)
        if s.hasSuffix("\r") { s.removeLast() }
        let parts = s.split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count == 2 || parts.count == 3, parts[0] == "CONNECT", let port = UInt32(parts[1]) else { return nil }
        if parts.count == 3 {
            guard let t = UInt64(parts[2]), t <= 3_600_000 else { return nil }
            return (port, t)
        }
        return (port, nil)
    }

    private func allocateLocalPort() -> UInt32? {
        for _ in 0..<1024 {
            let p = nextLocalPort
            nextLocalPort = nextLocalPort == UInt32.max ? 1 << 30 : nextLocalPort + 1
            if !conns.keys.contains(where: { $0.local == p }) { return p }
        }
        return nil
    }

    /// A host client asked for guest port `port`; `fd` is its socket.
    func hostConnect(fd: Int32, port: UInt32, timeoutMs: UInt64) {
        guard conns.count < options.maxConnections, let local = allocateLocalPort() else {
            closeFd(fd)
            return
        }
        let c = Connection(
            key: ConnKey(local: local, peer: port), fd: fd, hostInitiated: true, state: .connecting,
            bufferSize: Int(options.bufferSize))
        c.pendingRequest = true
        c.deadline = nowMs() + timeoutMs
        guard register(c) else { return }
        conns[c.key] = c
        timed.insert(c.key)
        schedule(c)
    }

    private func register(_ c: Connection) -> Bool {
        do {
            c.token = try loop.register(fd: c.fd, events: CVV_EV_IN | CVV_EV_OUT | CVV_EV_RDHUP | CVV_EV_ET) {
                [unowned self, c] ev in
                self.hostEvent(c, ev)
            }
            return true
        } catch {
            closeFd(c.fd)
            c.fd = -1
            c.dead = true
            return false
        }
    }

    private func hostEvent(_ c: Connection, _ ev: UInt32) {
        guard !c.dead else { return }
        if ev & (CVV_EV_IN | CVV_EV_RDHUP | CVV_EV_HUP | CVV_EV_ERR) != 0 { c.readable = true }
        if ev & (CVV_EV_HUP | CVV_EV_ERR) != 0 {
            c.hup = true
            if c.state != .established {
                kill(c, rst: c.state == .requestSent)
                return
            }
            if c.localEOF && c.sentShutdown != 3 { c.pendingShutdown = 3 }
            if c.peerShutdown & VsockHeader.shutdownRcv != 0 && !c.localEOF {
                c.localEOF = true
                c.pendingShutdown = 3
            }
        }
        if ev & CVV_EV_OUT != 0 && !c.buf.isEmpty {
            flush(c)
            if c.dead { return }
        }
        schedule(c)
    }

    // MARK: Timers

    func nextTimeoutMs() -> Int32 {
        var earliest: UInt64?
        for k in timed {
            guard let c = conns[k], let d = c.deadline else { continue }
            earliest = min(earliest ?? d, d)
        }
        guard let e = earliest else { return -1 }
        let now = nowMs()
        return e <= now ? 0 : Int32(min(e - now, 60_000))
    }

    func handleTimers() {
        guard !timed.isEmpty else { return }
        let now = nowMs()
        for k in Array(timed) {
            guard let c = conns[k] else {
                timed.remove(k)
                continue
            }
            guard let d = c.deadline else {
                timed.remove(k)
                continue
            }
            if d <= now {
                logger.debug("vsock connection timed out", metadata: ["local": "\(k.local)", "peer": "\(k.peer)"])
                kill(c, rst: c.state != .connecting)
            }
        }
    }

    private func setDeadline(_ c: Connection, _ ms: UInt64?) {
        c.deadline = ms.map { nowMs() + $0 }
        if ms != nil { timed.insert(c.key) } else { timed.remove(c.key) }
    }

    // MARK: Connections

    private func kill(_ c: Connection, rst: Bool) {
        guard !c.dead else { return }
        c.dead = true
        if c.fd >= 0 {
            loop.unregister(fd: c.fd, token: c.token)
            closeFd(c.fd)
            c.fd = -1
        }
        releaseBuffer(c)
        conns[c.key] = nil
        timed.remove(c.key)
        if rst { enqueueControl(header(for: c, op: .rst)) }
    }

    private func enqueueControl(_ h: VsockHeader) {
        guard active, !broken, control.count < options.maxControlPackets else {
            droppedControl += 1
            return
        }
        control.append(h)
    }

    private func header(for c: Connection, op: VsockHeader.Op) -> VsockHeader {
        VsockHeader(
            srcCID: VsockHeader.hostCID, dstCID: guestCID, srcPort: c.key.local, dstPort: c.key.peer,
            op: op, bufAlloc: options.bufferSize, fwdCnt: c.fwdCnt)
    }

    private func schedule(_ c: Connection) {
        guard !c.dead, !c.inRR, wantsRx(c) else { return }
        c.inRR = true
        rr.append(c)
    }

    private func wantsRx(_ c: Connection) -> Bool {
        switch c.state {
        case .connecting: return c.pendingRequest
        case .requestSent: return false
        case .established:
            if c.pendingResponse || c.pendingShutdown != 0 || c.pendingCredit { return true }
            return c.readable && !c.localEOF && c.peerShutdown & VsockHeader.shutdownRcv == 0 && c.peerCredit > 0
        }
    }

    // MARK: Guest to host (tx queue)

    func kickTx() { processTx() }

    func processTx() {
        txPending = false
        guard let txq, active, !broken else { return }
        var budget = Int(txq.size)
        while txq.peek(into: &chain) {
            guard budget > 0 else {
                txPending = true
                break
            }
            budget -= 1
            if chain.valid, chain.readableLength >= VsockHeader.size,
                chain.copyReadable(offset: 0, count: VsockHeader.size, to: scratch)
            {
                let h = VsockHeader(from: scratch)
                if Int(h.len) <= chain.readableLength - VsockHeader.size {
                    handleGuestPacket(h)
                } else {
                    droppedPackets += 1
                }
            } else {
                droppedPackets += 1
            }
            txq.commit(chain, written: 0)
        }
        txq.notifyIfNeeded()
        if txq.broken { ringBroken("tx") }
    }

    private func rstReply(_ h: VsockHeader) {
        enqueueControl(
            VsockHeader(
                srcCID: VsockHeader.hostCID, dstCID: guestCID, srcPort: h.dstPort,
                dstPort: h.srcPort, type: h.type, op: .rst, bufAlloc: options.bufferSize))
    }

    /// Handles one packet from the guest; its payload is `chain`'s readable bytes after the header.
    private func handleGuestPacket(_ h: VsockHeader) {
        guard h.srcCID == guestCID, h.dstCID == VsockHeader.hostCID else {
            droppedPackets += 1
            return
        }
        let op = h.operation
        guard h.type == VsockHeader.typeStream else {
            if op != .rst { rstReply(h) }
            return
        }
        let key = ConnKey(local: h.dstPort, peer: h.srcPort)
        guard let c = conns[key] else {
            switch op {
            case .request: guestConnect(h)
            case .rst: break
            default: rstReply(h)
            }
            return
        }
        c.peerBufAlloc = h.bufAlloc
        c.peerFwdCnt = h.fwdCnt
        switch op {
        case .request:
            kill(c, rst: true)
        case .response:
            guard c.state == .requestSent else {
                kill(c, rst: true)
                return
            }
            c.state = .established
            setDeadline(c, nil)
            let ok = Array("OK \(c.key.local)\n".utf8)
            let sent = ok.withUnsafeBytes { cvv_send_with_fds(c.fd, $0.baseAddress, ok.count, nil, 0) }
            if sent != ok.count {
                kill(c, rst: true)
                return
            }
            schedule(c)
        case .rw:
            guard c.state == .established, c.peerShutdown & VsockHeader.shutdownSend == 0, !c.shutWr else {
                kill(c, rst: true)
                return
            }
            if h.len > 0 { writeToHost(c, count: Int(h.len)) }
            if !c.dead { schedule(c) }
        case .creditUpdate:
            schedule(c)
        case .creditRequest:
            c.pendingCredit = true
            schedule(c)
        case .shutdown:
            c.peerShutdown |= h.flags & 3
            if c.state != .established {
                kill(c, rst: true)
                return
            }
            if c.peerShutdown & VsockHeader.shutdownRcv != 0 && c.hup && !c.localEOF {
                c.localEOF = true
            }
            checkPeerShutdown(c)
            if !c.dead { schedule(c) }
        case .rst:
            kill(c, rst: false)
        case .invalid:
            kill(c, rst: true)
        }
    }

    private func guestConnect(_ h: VsockHeader) {
        guard active, conns.count < options.maxConnections else {
            rstReply(h)
            return
        }
        let fd = unixConnect("\(hybridPath)_\(h.dstPort)")
        guard fd >= 0 else {
            logger.debug("guest connect refused", metadata: ["port": "\(h.dstPort)", "errno": "\(-fd)"])
            rstReply(h)
            return
        }
        let c = Connection(
            key: ConnKey(local: h.dstPort, peer: h.srcPort), fd: fd, hostInitiated: false,
            state: .established, bufferSize: Int(options.bufferSize))
        c.peerBufAlloc = h.bufAlloc
        c.peerFwdCnt = h.fwdCnt
        c.pendingResponse = true
        guard register(c) else {
            rstReply(h)
            return
        }
        conns[c.key] = c
        schedule(c)
    }

    /// Forwards `count` payload bytes of the current tx chain to the host socket, buffering what does not fit.
    private func writeToHost(_ c: Connection, count: Int) {
        var written = 0
        if c.buf.isEmpty {
            DescriptorChain.iovecs(chain.readable, offset: VsockHeader.size, count: count, into: &iov)
            let n = iov.withUnsafeBufferPointer { cvv_sendv(c.fd, $0.baseAddress, Int32($0.count)) }
            if n >= 0 {
                written = n
            } else if n != -Int(EAGAIN) {
                kill(c, rst: true)
                return
            }
        }
        c.fwdCnt &+= UInt32(written)
        let rest = count - written
        if rest > 0 {
            guard rest <= c.buf.free else {
                logger.warning("guest exceeded its credit", metadata: ["local": "\(c.key.local)"])
                kill(c, rst: true)
                return
            }
            if c.buf.storage == nil {  // append allocates it
                guard bufferedBytes + c.buf.capacity <= options.maxBufferedBytes else {
                    // A guest can cause one per connection: the log grows with the logarithm of that.
                    bufferResets += 1
                    if bufferResets & (bufferResets - 1) == 0 {
                        logger.warning(
                            "vsock receive buffers exhausted: connection reset",
                            metadata: ["local": "\(c.key.local)", "resets": "\(bufferResets)"])
                    }
                    kill(c, rst: true)
                    return
                }
                bufferedBytes += c.buf.capacity
            }
            c.buf.append(from: chain.readable, offset: VsockHeader.size + written, count: rest)
        }
        maybeCreditUpdate(c)
    }

    private func flush(_ c: Connection) {
        while !c.buf.isEmpty {
            c.buf.readable(into: &iov)
            let n = iov.withUnsafeBufferPointer { cvv_sendv(c.fd, $0.baseAddress, Int32($0.count)) }
            if n > 0 {
                c.buf.consume(n)
                c.fwdCnt &+= UInt32(n)
            } else if n == -Int(EAGAIN) {
                break
            } else {
                kill(c, rst: true)
                return
            }
        }
        if c.buf.isEmpty { releaseBuffer(c) }  // back to the shared bound while the reader keeps up
        maybeCreditUpdate(c)
        checkPeerShutdown(c)
    }

    private func releaseBuffer(_ c: Connection) {
        if c.buf.storage != nil { bufferedBytes -= c.buf.capacity }
        c.buf.release()
    }

    private func maybeCreditUpdate(_ c: Connection) {
        if c.fwdCnt &- c.lastReportedFwd >= options.creditUpdateThreshold {
            c.pendingCredit = true
        }
    }

    /// Acts on the guest's SHUTDOWN once everything it sent reached the host socket.
    private func checkPeerShutdown(_ c: Connection) {
        guard !c.dead, c.peerShutdown != 0 else { return }
        guard c.buf.isEmpty else {
            if c.peerShutdown == 3, c.deadline == nil { setDeadline(c, options.closeTimeoutMs) }
            return
        }
        if c.peerShutdown & VsockHeader.shutdownSend != 0 && !c.shutWr {
            c.shutWr = true
            _ = cvv_shutdown_write(c.fd)
        }
        if c.peerShutdown == 3 { kill(c, rst: true) }
    }

    // MARK: Host to guest (rx queue)

    func kickRx() {}

    private func nextReady() -> Connection? {
        while let c = rr.popFirst() {
            c.inRR = false
            if !c.dead && wantsRx(c) { return c }
        }
        return nil
    }

    /// Fills rx buffers round-robin: control packets first, then one packet per ready connection in turn.
    func processRx() {
        rxPending = false
        guard let rxq, active, !broken else { return }
        var budget = Int(rxq.size)
        while !control.isEmpty || !rr.isEmpty {
            guard rxq.peek(into: &chain) else { break }
            guard budget > 0 else {
                rxPending = true
                break
            }
            budget -= 1
            if !chain.valid || chain.writableLength <= VsockHeader.size {
                rxq.commit(chain, written: 0)
                continue
            }
            if let h = control.popFirst() {
                h.encode(to: scratch)
                _ = chain.copyToWritable(offset: 0, count: VsockHeader.size, from: scratch)
                rxq.commit(chain, written: UInt32(VsockHeader.size))
                continue
            }
            guard let c = nextReady() else { break }
            fill(c, rxq)
            schedule(c)
        }
        rxq.notifyIfNeeded()
        if rxq.broken { ringBroken("rx") }
    }

    /// Builds one packet for `c` in the peeked chain (consuming it), or leaves the chain when there is nothing.
    private func fill(_ c: Connection, _ rxq: SplitVirtqueue) {
        var h = header(for: c, op: .invalid)
        var payload = 0
        if c.state == .connecting && c.pendingRequest {
            h.op = VsockHeader.Op.request.rawValue
            c.pendingRequest = false
            c.state = .requestSent
        } else if c.pendingResponse {
            h.op = VsockHeader.Op.response.rawValue
            c.pendingResponse = false
        } else if c.pendingShutdown != 0 {
            h.op = VsockHeader.Op.shutdown.rawValue
            h.flags = c.pendingShutdown
            sentShutdown(c, c.pendingShutdown)
        } else if c.readable && !c.localEOF && c.peerShutdown & VsockHeader.shutdownRcv == 0 && c.peerCredit > 0 {
            let room = min(chain.writableLength - VsockHeader.size, Int(c.peerCredit), 64 * 1024)
            DescriptorChain.iovecs(chain.writable, offset: VsockHeader.size, count: room, into: &iov)
            let n = iov.withUnsafeBufferPointer { cvv_readv(c.fd, $0.baseAddress, Int32($0.count)) }
            if n > 0 {
                h.op = VsockHeader.Op.rw.rawValue
                h.len = UInt32(n)
                payload = n
                c.rxCnt &+= UInt32(n)
            } else if n == -Int(EAGAIN) {
                c.readable = false
                guard c.pendingCredit else { return }
                h.op = VsockHeader.Op.creditUpdate.rawValue
            } else {
                // EOF (or a reset): no more data from the host; a full close when the peer is gone.
                c.localEOF = true
                h.op = VsockHeader.Op.shutdown.rawValue
                h.flags = (c.hup || n < 0) ? 3 : VsockHeader.shutdownSend
                sentShutdown(c, h.flags)
            }
        } else if c.pendingCredit {
            h.op = VsockHeader.Op.creditUpdate.rawValue
        } else {
            return
        }
        c.pendingCredit = false
        c.lastReportedFwd = c.fwdCnt
        h.encode(to: scratch)
        _ = chain.copyToWritable(offset: 0, count: VsockHeader.size, from: scratch)
        rxq.commit(chain, written: UInt32(VsockHeader.size + payload))
    }

    private func sentShutdown(_ c: Connection, _ flags: UInt32) {
        c.pendingShutdown = 0
        c.sentShutdown |= flags
        if c.sentShutdown == 3 && c.deadline == nil { setDeadline(c, options.closeTimeoutMs) }
    }
}
