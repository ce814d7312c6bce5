import Logging
import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// The back-end state of one vhost-user front-end connection: features, memory table, vring configuration,
/// and when both rings are ready the device is started on them.
final class VhostUserSession {
    struct Vring {
        var num: UInt32 = 0
        var base: UInt16 = 0
        var addr: (desc: UInt64, used: UInt64, avail: UInt64)?
        var kickFd: Int32 = -1
        var kickToken: UInt64 = 0
        var callFd: Int32 = -1
        var errFd: Int32 = -1
        var enabled = false
    }

    let device: VsockDevice
    let loop: EpollLoop
    let logger: Logger
    private(set) var ackedFeatures: UInt64 = 0
    private(set) var protocolFeatures: UInt64 = 0
    private(set) var memory: GuestMemory?
    private(set) var vrings = [Vring(), Vring()]

    init(device: VsockDevice, loop: EpollLoop, logger: Logger) {
        self.device = device
        self.loop = loop
        self.logger = logger
    }

    deinit { close() }

    /// Stops the device and releases every fd and mapping of this session.
    func close() {
        stopDevice()
        for i in vrings.indices {
            setKick(i, nil)
            Linux.close(vrings[i].callFd)
            Linux.close(vrings[i].errFd)
            vrings[i] = Vring()
        }
        memory = nil
    }

    private var protocolFeaturesNegotiated: Bool { ackedFeatures & VhostFeature.protocolFeatures != 0 }

    private func stopDevice() {
        guard device.active else { return }
        if let rx = device.rxQueue { vrings[0].base = rx.lastAvailable }
        if let tx = device.txQueue { vrings[1].base = tx.lastAvailable }
        device.deactivate()
    }

    private func setKick(_ i: Int, _ fd: Int32?) {
        if vrings[i].kickFd >= 0 {
            loop.unregister(fd: vrings[i].kickFd, token: vrings[i].kickToken)
            Linux.close(vrings[i].kickFd)
            vrings[i].kickFd = -1
        }
        guard let fd else { return }
        vrings[i].kickFd = fd
        let queue = i
        do {
            vrings[i].kickToken = try loop.register(fd: fd, events: .readable) { [unowned self] _ in
                Linux.drain(eventFD: fd)
                if queue == 1 { self.device.kickTx() } else { self.device.kickRx() }
            }
        } catch {
            logger.error("cannot watch kick fd: \(error)")
        }
    }

    /// Starts the device when both rings are fully configured and enabled, stops it otherwise.
    private func updateActivation() throws(VhostUserError) {
        let ready =
            memory != nil
            && vrings.allSatisfy {
                $0.addr != nil && $0.kickFd >= 0 && $0.num > 0 && ($0.enabled || !protocolFeaturesNegotiated)
            }
        if !ready {
            stopDevice()
            return
        }
        guard !device.active, let memory else { return }
        var queues: [SplitVirtqueue] = []
        for v in vrings {
            do {
                let q = try SplitVirtqueue(
                    memory: memory, size: v.num, descAddr: v.addr!.desc, availAddr: v.addr!.avail,
                    usedAddr: v.addr!.used, base: v.base)
                q.callFd = v.callFd
                queues.append(q)
            } catch {
                throw .invalid("cannot start vring: \(error)")
            }
        }
        device.activate(rx: queues[0], tx: queues[1])
    }

    /// Handles one decoded message; returns the reply payload's bytes (with header) when one is due.
    func handle(_ msg: VhostUserMessage, request: UInt32) throws(VhostUserError) -> [UInt8]? {
        switch msg {
        case .getFeatures:
            var p: [UInt8] = []
            appendLE(&p, VhostFeature.offered)
            return replyBytes(request: request, payload: p)
        case .setFeatures(let f):
            guard f & ~VhostFeature.offered == 0 else { throw .invalid("unsupported features 0x\(String(f, radix: 16))") }
            ackedFeatures = f
            try updateActivation()
        case .getProtocolFeatures:
            var p: [UInt8] = []
            appendLE(&p, VhostFeature.protocolOffered)
            return replyBytes(request: request, payload: p)
        case .setProtocolFeatures(let f):
            guard f & ~VhostFeature.protocolOffered == 0 else {
                throw .invalid("unsupported protocol features 0x\(String(f, radix: 16))")
            }
            protocolFeatures = f
        case .getQueueNum:
            var p: [UInt8] = []
            appendLE(&p, UInt64(2))
            return replyBytes(request: request, payload: p)
        case .setOwner:
            break
        case .resetOwner:
            close()
            ackedFeatures = 0
        case .setMemTable(let regions, let fds):
            let mem = try GuestMemory(mapping: regions, fds: fds)
            stopDevice()
            memory = mem
            logger.debug("guest memory mapped", metadata: ["regions": "\(regions.count)"])
            try updateActivation()
        case .setVringNum(let i, let num):
            guard num > 0, num <= 32768, num & (num - 1) == 0 else { throw .invalid("bad vring size \(num)") }
            stopDevice()
            vrings[Int(i)].num = num
        case .setVringAddr(let i, _, let desc, let used, let avail, _):
            stopDevice()
            vrings[Int(i)].addr = (desc, used, avail)
            try updateActivation()
        case .setVringBase(let i, let num):
            guard num <= 0xffff else { throw .invalid("bad vring base \(num)") }
            stopDevice()
            vrings[Int(i)].base = UInt16(num)
        case .getVringBase(let i):
            stopDevice()
            setKick(Int(i), nil)  // the ring is stopped; it restarts with the next SET_VRING_KICK
            var p: [UInt8] = []
            appendLE(&p, i)
            appendLE(&p, UInt32(vrings[Int(i)].base))
            return replyBytes(request: request, payload: p)
        case .setVringKick(let i, let fd):
            setKick(Int(i), fd)
            try updateActivation()
        case .setVringCall(let i, let fd):
            let old = vrings[Int(i)].callFd
            vrings[Int(i)].callFd = fd ?? -1
            if i == 0 { device.rxQueue?.callFd = fd ?? -1 } else { device.txQueue?.callFd = fd ?? -1 }
            Linux.close(old)
        case .setVringErr(let i, let fd):
            Linux.close(vrings[Int(i)].errFd)
            vrings[Int(i)].errFd = fd ?? -1
        case .setVringEnable(let i, let enable):
            vrings[Int(i)].enabled = enable
            try updateActivation()
        case .getConfig(let offset, let size, let flags):
            var config: [UInt8] = []
            appendLE(&config, device.guestCID)
            var p: [UInt8] = []
            appendLE(&p, offset)
            appendLE(&p, size)
            appendLE(&p, flags)
            for k in 0..<Int(size) {
                let o = Int(offset) + k
                p.append(o < config.count ? config[o] : 0)
            }
            return replyBytes(request: request, payload: p)
        case .setConfig:
            break  // the vsock config space is read-only
        }
        return nil
    }
}

/// Reads vhost-user messages from a non-blocking socket, collecting fds, and feeds them to a session.
final class VhostUserChannel {
    let fd: Int32
    let session: VhostUserSession
    private var head = [UInt8](repeating: 0, count: VhostUserHeader.size)
    private var headHave = 0
    private var header: VhostUserHeader?
    private var payload: [UInt8] = []
    private var payloadHave = 0
    private var fds: [Int32] = []

    init(fd: Int32, session: VhostUserSession) {
        self.fd = fd
        self.session = session
    }

    deinit { dropFds() }

    private func dropFds() {
        for f in fds { Linux.close(f) }
        fds = []
    }

    enum ReadResult { case more, closed }

    /// Reads and handles every complete message available. Throws on protocol errors (close the connection).
    func readable() throws(VhostUserError) -> ReadResult {
        while true {
            let message: Linux.ReceivedMessage?
            do {
                message = try receive()
            } catch {
                throw .invalid("\(error)")
            }
            guard let message else { return .more }
            let n = message.count
            fds += message.fds
            if message.controlTruncated { throw .truncatedControl }
            if fds.count > VhostUserHeader.maxFds || message.fdsPassed > VhostUserHeader.maxFds {
                throw .tooManyFds(max(fds.count, message.fdsPassed))
            }
            if n == 0 { return .closed }
            if headHave < VhostUserHeader.size {
                headHave += n
                if headHave == VhostUserHeader.size {
                    let h = head.withUnsafeBytes { VhostUserHeader(bytes: $0.baseAddress!) }
                    try h.validate()
                    header = h
                    payload = [UInt8](repeating: 0, count: Int(h.size))
                    payloadHave = 0
                }
            } else {
                payloadHave += n
            }
            guard let h = header, headHave == VhostUserHeader.size, payloadHave == payload.count else { continue }
            let msg = try VhostUserMessage.decode(header: h, payload: payload, fds: fds)
            fds = []  // owned by the message now
            headHave = 0
            header = nil
            payload = []
            if let reply = try session.handle(msg, request: h.request) {
                let sent: Int
                do {
                    sent = try Linux.send(fd, reply)
                } catch {
                    throw .invalid("cannot send reply: \(error)")
                }
                guard sent == reply.count else { throw .invalid("cannot send reply (\(sent) of \(reply.count) bytes)") }
            }
        }
    }

    /// The rest of the header, or of the payload once the header is whole.
    private func receive() throws(LinuxError) -> Linux.ReceivedMessage? {
        func into(_ buffer: UnsafeMutableRawBufferPointer, from offset: Int) -> Result<Linux.ReceivedMessage?, LinuxError> {
            Result { () throws(LinuxError) in
                try Linux.receive(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[offset...]), maxFDs: VhostUserHeader.maxFds)
            }
        }
        let received =
            headHave < VhostUserHeader.size
            ? head.withUnsafeMutableBytes { into($0, from: headHave) }
            : payload.withUnsafeMutableBytes { into($0, from: payloadHave) }
        return try received.get()
    }
}
