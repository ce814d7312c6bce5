import Logging
import Synchronization
import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// `agent.log_vport=N`: the agent's log lines also go to the host over a vsock stream the guest
/// opens to CID 2 port N (the hybrid backend hands it to the listener `<socket>_N`). Logging must
/// never wait for the host: lines go into a bounded buffer, the oldest dropped (and counted) when
/// it is full, and one thread of its own connects, drains it and reconnects when the host closes.
/// Lines logged before the kernel command line is read are kept until `start` or `disable`.
final class LogForwarder: Sendable {
    static let shared = LogForwarder()
    static let capacity = 1024
    static let hostCID: UInt32 = 2

    private struct State {
        var lines: [String] = []
        var dropped = 0
        /// nil: not decided yet (early guest init).
        var enabled: Bool?
        var connected = false
        var sending = false
    }

    private let state = Mutex(State())
    private let changed = Condition()

    func append(_ line: String) {
        let wanted = state.withLock { s -> Bool in
            guard s.enabled != false else { return false }
            s.lines.append(line)
            if s.lines.count > Self.capacity {
                s.lines.removeFirst(s.lines.count - Self.capacity)
                s.dropped += 1
            }
            return true
        }
        if wanted { changed.signal() }
    }

    /// Lines waiting and lines dropped so far (for tests).
    var backlog: (lines: [String], dropped: Int) {
        state.withLock { ($0.lines, $0.dropped) }
    }

    func disable() {
        state.withLock { s in
            s.enabled = false
            s.lines = []
        }
    }

    func start(port: UInt32) {
        state.withLock { $0.enabled = true }
        Linux.startThread { [self] in run(port: port) }
    }

    /// Before power-off: gives a connected host up to `seconds` to receive what is buffered.
    func flush(seconds: Double) {
        _ = changed.wait(seconds: seconds) {
            state.withLock { s in !s.connected || (s.lines.isEmpty && !s.sending) }
        }
    }

    private func run(port: UInt32) {
        var retryDelay: useconds_t = 100_000
        while true {
            guard let fd = try? Linux.vsockConnect(cid: Self.hostCID, port: port) else {
                // Nobody listens yet (or any more): keep buffering, try again, slower each time.
                usleep(retryDelay)
                retryDelay = min(retryDelay * 2, 2_000_000)
                continue
            }
            retryDelay = 100_000
            setConnected(true)
            drain(fd)
            setConnected(false)
            Linux.close(fd)
        }
    }

    private func setConnected(_ connected: Bool) {
        state.withLock { $0.connected = connected }
        changed.signal()
    }

    /// Sends until the connection fails; a batch that could not be sent goes back to the front.
    private func drain(_ fd: Int32) {
        while true {
            // The host closing is only noticed on the next write: look for it while idle.
            if !changed.wait(seconds: 1, until: { state.withLock { !$0.lines.isEmpty } }) {
                if peerClosed(fd) { return }
                continue
            }
            let (batch, dropped) = state.withLock { s in
                defer {
                    s.lines = []
                    s.dropped = 0
                    s.sending = true
                }
                return (s.lines, s.dropped)
            }
            var text = dropped > 0 ? "vessel-agent: \(dropped) log lines dropped\n" : ""
            for line in batch { text += line + "\n" }
            let sent = sendAll(fd, Array(text.utf8))
            state.withLock { s in
                s.sending = false
                if !sent {
                    let all = batch + s.lines
                    s.lines = Array(all.suffix(Self.capacity))
                    s.dropped += dropped + max(0, all.count - Self.capacity)
                }
            }
            changed.signal()
            if !sent { return }
        }
    }

    private func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }

    private func peerClosed(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, 0) > 0 else { return false }
        if p.revents & (Int16(POLLHUP) | Int16(POLLERR)) != 0 { return true }
        // The host sends nothing on this stream: readable means EOF, or bytes to discard.
        var buffer = [UInt8](repeating: 0, count: 256)
        return recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT)) == 0
    }
}

/// swift-log's lines for the host; the console keeps StreamLogHandler's format.
struct ForwardingLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        LogForwarder.shared.append("\(event.level) \(label): \(event.message)")
    }
}
