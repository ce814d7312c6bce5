import Logging
import NIOCore
import VesselLinux

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

struct ConnectionKey: Hashable {
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

    let key: ConnectionKey
    let hostInitiated: Bool
    var fd: Int32
    var token: UInt64 = 0
    var state: State
    var dead = false
    var inRoundRobin = false

    var pendingRequest = false
    var pendingResponse = false
    var pendingCredit = false
    var pendingShutdown: UInt32 = 0
    var sentShutdown: UInt32 = 0
    var peerShutdown: UInt32 = 0

    /// Host socket flags (edge-triggered epoll: set by events, cleared on EAGAIN).
    var readable = false
    var hungUp = false
    var localEOF = false
    var writeShutDown = false

    /// Host to guest: bytes sent, and the guest's advertised buffer.
    var bytesSent: UInt32 = 0
    var peerBufferSize: UInt32 = 0
    var peerForwardedBytes: UInt32 = 0
    /// Guest to host: bytes forwarded to the host socket, last value reported to the guest.
    var forwardedBytes: UInt32 = 0
    var lastReportedForwarded: UInt32 = 0
    var buffer: ByteRing
    var deadline: UInt64?

    init(key: ConnectionKey, fd: Int32, hostInitiated: Bool, state: State, bufferSize: Int) {
        self.key = key
        self.fd = fd
        self.hostInitiated = hostInitiated
        self.state = state
        self.buffer = ByteRing(capacity: bufferSize)
    }

    deinit { buffer.release() }

    var peerCredit: UInt32 {
        let inFlight = bytesSent &- peerForwardedBytes
        return inFlight >= peerBufferSize ? 0 : peerBufferSize - inFlight
    }
}

/// The vsock device proper: guest packets from the tx queue, host data and control packets into the rx queue,
/// host-side Unix sockets. Runs on one thread with the event loop.
final class VsockDevice {
    let guestCID: UInt64
    let hybridPath: String
    let options: VsockDeviceOptions
    let loop: EpollLoop
    var logger: Logger

    private(set) var rxQueue: SplitVirtqueue?
    private(set) var txQueue: SplitVirtqueue?
    var active: Bool { rxQueue != nil && txQueue != nil }

    private(set) var connections: [ConnectionKey: Connection] = [:]
    private var roundRobin = CircularBuffer<Connection>(initialCapacity: 64)
    private var control = CircularBuffer<VsockHeader>(initialCapacity: 16)
    private var timed: Set<ConnectionKey> = []
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

    init(guestCID: UInt64, hybridPath: String, options: VsockDeviceOptions, loop: EpollLoop, logger: Logger) {
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
        rxQueue = rx
        txQueue = tx
        broken = false
        logger.debug("vsock device started", metadata: ["rx": "\(rx.size)", "tx": "\(tx.size)"])
        for c in connections.values { schedule(c) }
        processTx()
    }

    /// Device stop (driver reset or unload): the guest forgets all connections, so drop them. CONNECTs whose
    /// REQUEST was not sent yet keep waiting for the next start.
    func deactivate() {
        guard active else { return }
        rxQueue = nil
        txQueue = nil
        txPending = false
        rxPending = false
        for c in Array(connections.values) where !(c.hostInitiated && c.state == .connecting) {
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
        for c in Array(connections.values) where !(c.hostInitiated && c.state == .connecting) {
            kill(c, rst: false)
        }
        control.removeAll()
    }

    /// Closes every host socket.
    func teardown() {
        rxQueue = nil
        txQueue = nil
        for c in Array(connections.values) { kill(c, rst: false) }
        for (token, fd) in handshakes {
            loop.unregister(fd: fd, token: token)
            Linux.close(fd)
        }
        handshakes = [:]
        control.removeAll()
    }

    var connectionCount: Int { connections.count }

    // MARK: Host side: CONNECT handshake on <path>

    func acceptHost(listener: Int32) {
        while let fd = try? Linux.accept(listener) {
            if handshakes.count + connections.count >= options.maxConnections {
                Linux.close(fd)
                continue
            }
            var token: UInt64 = 0
            do {
                token = try loop.register(fd: fd, events: [.readable, .readHangUp, .edgeTriggered]) { [unowned self] _ in
                    self.handshakeReadable(fd: fd, token: token)
                }
            } catch {
                Linux.close(fd)
                continue
            }
            handshakes[token] = fd
            handshakeReadable(fd: fd, token: token)
        }
    }

    private func dropHandshake(fd: Int32, token: UInt64) {
        loop.unregister(fd: fd, token: token)
        handshakes[token] = nil
        Linux.close(fd)
    }

    private func handshakeReadable(fd: Int32, token: UInt64) {
        guard handshakes[token] == fd else { return }
        let line: [UInt8]
        do {
            guard let peeked = try Linux.peek(fd, upTo: 64) else { return }
            line = peeked
        } catch {
            line = []
        }
        if line.isEmpty {
            dropHandshake(fd: fd, token: token)
            return
        }
        guard let newline = line.firstIndex(of: UInt8(ascii: "\n")) else {
            if line.count >= 64 { dropHandshake(fd: fd, token: token) }
            return
        }
        // Only the line: what follows it is the stream's.
        _ = try? Linux.readExactly(fd, newline + 1)
        guard let (port, timeout) = VsockDevice.parseConnect(line[0..<newline]) else {
            logger.debug("bad hybrid vsock handshake")
            dropHandshake(fd: fd, token: token)
            return
        }
        loop.unregister(fd: fd, token: token)
        handshakes[token] = nil
        hostConnect(fd: fd, port: port, timeoutMilliseconds: timeout ?? options.connectTimeoutMs)
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
            if !connections.keys.contains(where: { $0.local == p }) { return p }
        }
        return nil
    }

    /// A host client asked for guest port `port`; `fd` is its socket.
    func hostConnect(fd: Int32, port: UInt32, timeoutMilliseconds: UInt64) {
        guard connections.count < options.maxConnections, let local = allocateLocalPort() else {
            Linux.close(fd)
            return
        }
        let c = Connection(
            key: ConnectionKey(local: local, peer: port), fd: fd, hostInitiated: true, state: .connecting,
            bufferSize: Int(options.bufferSize))
        c.pendingRequest = true
        c.deadline = nowMilliseconds() + timeoutMilliseconds
        guard register(c) else { return }
        connections[c.key] = c
        timed.insert(c.key)
        schedule(c)
    }

    private func register(_ c: Connection) -> Bool {
        do {
            c.token = try loop.register(fd: c.fd, events: [.readable, .writable, .readHangUp, .edgeTriggered]) {
                [unowned self, c] events in
                self.hostEvent(c, events)
            }
            return true
        } catch {
            Linux.close(c.fd)
            c.fd = -1
            c.dead = true
            return false
        }
    }

    /// Once, not per event: a set from an array literal is an allocation in a debug build.
    private static let readableEvents: EpollEvents = [.readable, .readHangUp, .hangUp, .error]
    private static let goneEvents: EpollEvents = [.hangUp, .error]

    private func hostEvent(_ c: Connection, _ events: EpollEvents) {
        guard !c.dead else { return }
        if !events.isDisjoint(with: Self.readableEvents) { c.readable = true }
        if !events.isDisjoint(with: Self.goneEvents) {
            c.hungUp = true
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
        if events.contains(.writable) && !c.buffer.isEmpty {
            flush(c)
            if c.dead { return }
        }
        schedule(c)
    }

    // MARK: Timers

    func nextTimeoutMilliseconds() -> Int32 {
        var earliest: UInt64?
        for k in timed {
            guard let c = connections[k], let d = c.deadline else { continue }
            earliest = min(earliest ?? d, d)
        }
        guard let e = earliest else { return -1 }
        let now = nowMilliseconds()
        return e <= now ? 0 : Int32(min(e - now, 60_000))
    }

    func handleTimers() {
        guard !timed.isEmpty else { return }
        let now = nowMilliseconds()
        for k in Array(timed) {
            guard let c = connections[k] else {
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

    private func setDeadline(_ c: Connection, _ milliseconds: UInt64?) {
        c.deadline = milliseconds.map { nowMilliseconds() + $0 }
        if milliseconds != nil { timed.insert(c.key) } else { timed.remove(c.key) }
    }

    // MARK: Connections

    private func kill(_ c: Connection, rst: Bool) {
        guard !c.dead else { return }
        c.dead = true
        if c.fd >= 0 {
            loop.unregister(fd: c.fd, token: c.token)
            Linux.close(c.fd)
            c.fd = -1
        }
        releaseBuffer(c)
        connections[c.key] = nil
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
            op: op, bufAlloc: options.bufferSize, fwdCnt: c.forwardedBytes)
    }

    private func schedule(_ c: Connection) {
        guard !c.dead, !c.inRoundRobin, wantsRx(c) else { return }
        c.inRoundRobin = true
        roundRobin.append(c)
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
        guard let txQueue, active, !broken else { return }
        var budget = Int(txQueue.size)
        while txQueue.peek(into: &chain) {
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
            txQueue.commit(chain, written: 0)
        }
        txQueue.notifyIfNeeded()
        if txQueue.broken { ringBroken("tx") }
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
        let key = ConnectionKey(local: h.dstPort, peer: h.srcPort)
        guard let c = connections[key] else {
            switch op {
            case .request: guestConnect(h)
            case .rst: break
            default: rstReply(h)
            }
            return
        }
        c.peerBufferSize = h.bufAlloc
        c.peerForwardedBytes = h.fwdCnt
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
            let sent = try? Linux.send(c.fd, ok)
            if sent != ok.count {
                kill(c, rst: true)
                return
            }
            schedule(c)
        case .rw:
            guard c.state == .established, c.peerShutdown & VsockHeader.shutdownSend == 0, !c.writeShutDown else {
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
            if c.peerShutdown & VsockHeader.shutdownRcv != 0 && c.hungUp && !c.localEOF {
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
        guard active, connections.count < options.maxConnections else {
            rstReply(h)
            return
        }
        let fd: Int32
        do {
            fd = try Linux.connectUnix("\(hybridPath)_\(h.dstPort)", nonBlocking: true)
        } catch {
            logger.debug("guest connect refused", metadata: ["port": "\(h.dstPort)", "errno": "\(error.errno)"])
            rstReply(h)
            return
        }
        let c = Connection(
            key: ConnectionKey(local: h.dstPort, peer: h.srcPort), fd: fd, hostInitiated: false,
            state: .established, bufferSize: Int(options.bufferSize))
        c.peerBufferSize = h.bufAlloc
        c.peerForwardedBytes = h.fwdCnt
        c.pendingResponse = true
        guard register(c) else {
            rstReply(h)
            return
        }
        connections[c.key] = c
        schedule(c)
    }

    /// Forwards `count` payload bytes of the current tx chain to the host socket, buffering what does not fit.
    private func writeToHost(_ c: Connection, count: Int) {
        var written = 0
        if c.buffer.isEmpty {
            DescriptorChain.iovecs(chain.readable, offset: VsockHeader.size, count: count, into: &iov)
            do {
                written = try Linux.send(c.fd, vectors: iov) ?? 0
            } catch {
                kill(c, rst: true)
                return
            }
        }
        c.forwardedBytes &+= UInt32(written)
        let rest = count - written
        if rest > 0 {
            guard rest <= c.buffer.free else {
                logger.warning("guest exceeded its credit", metadata: ["local": "\(c.key.local)"])
                kill(c, rst: true)
                return
            }
            if c.buffer.storage == nil {  // append allocates it
                guard bufferedBytes + c.buffer.capacity <= options.maxBufferedBytes else {
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
                bufferedBytes += c.buffer.capacity
            }
            c.buffer.append(from: chain.readable, offset: VsockHeader.size + written, count: rest)
        }
        maybeCreditUpdate(c)
    }

    private func flush(_ c: Connection) {
        while !c.buffer.isEmpty {
            c.buffer.readable(into: &iov)
            let sent: Int?
            do {
                sent = try Linux.send(c.fd, vectors: iov)
            } catch {
                kill(c, rst: true)
                return
            }
            guard let sent, sent > 0 else { break }
            c.buffer.consume(sent)
            c.forwardedBytes &+= UInt32(sent)
        }
        if c.buffer.isEmpty { releaseBuffer(c) }  // back to the shared bound while the reader keeps up
        maybeCreditUpdate(c)
        checkPeerShutdown(c)
    }

    private func releaseBuffer(_ c: Connection) {
        if c.buffer.storage != nil { bufferedBytes -= c.buffer.capacity }
        c.buffer.release()
    }

    private func maybeCreditUpdate(_ c: Connection) {
        if c.forwardedBytes &- c.lastReportedForwarded >= options.creditUpdateThreshold {
            c.pendingCredit = true
        }
    }

    /// Acts on the guest's SHUTDOWN once everything it sent reached the host socket.
    private func checkPeerShutdown(_ c: Connection) {
        guard !c.dead, c.peerShutdown != 0 else { return }
        guard c.buffer.isEmpty else {
            if c.peerShutdown == 3, c.deadline == nil { setDeadline(c, options.closeTimeoutMs) }
            return
        }
        if c.peerShutdown & VsockHeader.shutdownSend != 0 && !c.writeShutDown {
            c.writeShutDown = true
            shutdown(c.fd, Int32(SHUT_WR))
        }
        if c.peerShutdown == 3 { kill(c, rst: true) }
    }

    // MARK: Host to guest (rx queue)

    func kickRx() {}

    private func nextReady() -> Connection? {
        while let c = roundRobin.popFirst() {
            c.inRoundRobin = false
            if !c.dead && wantsRx(c) { return c }
        }
        return nil
    }

    /// Fills rx buffers round-robin: control packets first, then one packet per ready connection in turn.
    func processRx() {
        rxPending = false
        guard let rxQueue, active, !broken else { return }
        var budget = Int(rxQueue.size)
        while !control.isEmpty || !roundRobin.isEmpty {
            guard rxQueue.peek(into: &chain) else { break }
            guard budget > 0 else {
                rxPending = true
                break
            }
            budget -= 1
            if !chain.valid || chain.writableLength <= VsockHeader.size {
                rxQueue.commit(chain, written: 0)
                continue
            }
            if let h = control.popFirst() {
                h.encode(to: scratch)
                _ = chain.copyToWritable(offset: 0, count: VsockHeader.size, from: scratch)
                rxQueue.commit(chain, written: UInt32(VsockHeader.size))
                continue
            }
            guard let c = nextReady() else { break }
            fill(c, rxQueue)
            schedule(c)
        }
        rxQueue.notifyIfNeeded()
        if rxQueue.broken { ringBroken("rx") }
    }

    /// Builds one packet for `c` in the peeked chain (consuming it), or leaves the chain when there is nothing.
    private func fill(_ c: Connection, _ rxQueue: SplitVirtqueue) {
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
            let received: Int?
            var reset = false
            do {
                received = try Linux.read(c.fd, vectors: iov)
            } catch {
                received = 0
                reset = true
            }
            if let n = received, n > 0 {
                h.op = VsockHeader.Op.rw.rawValue
                h.len = UInt32(n)
                payload = n
                c.bytesSent &+= UInt32(n)
            } else if received == nil {
                c.readable = false
                guard c.pendingCredit else { return }
                h.op = VsockHeader.Op.creditUpdate.rawValue
            } else {
                // EOF (or a reset): no more data from the host; a full close when the peer is gone.
                c.localEOF = true
                h.op = VsockHeader.Op.shutdown.rawValue
                h.flags = (c.hungUp || reset) ? 3 : VsockHeader.shutdownSend
                sentShutdown(c, h.flags)
            }
        } else if c.pendingCredit {
            h.op = VsockHeader.Op.creditUpdate.rawValue
        } else {
            return
        }
        c.pendingCredit = false
        c.lastReportedForwarded = c.forwardedBytes
        h.encode(to: scratch)
        _ = chain.copyToWritable(offset: 0, count: VsockHeader.size, from: scratch)
        rxQueue.commit(chain, written: UInt32(VsockHeader.size + payload))
    }

    private func sentShutdown(_ c: Connection, _ flags: UInt32) {
        c.pendingShutdown = 0
        c.sentShutdown |= flags
        if c.sentShutdown == 3 && c.deadline == nil { setDeadline(c, options.closeTimeoutMs) }
    }
}
