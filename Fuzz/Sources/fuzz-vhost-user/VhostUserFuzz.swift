import FuzzSupport
import Logging
import VesselLinux

@testable import VesselVsock

#if canImport(Glibc)
    import Glibc
#endif

// The vhost-user front-end (QEMU, which a guest may have taken over) as a script of messages sent
// over a socketpair to the real back-end reader, session and device. Each record: one byte for the
// fds to attach (low nibble: how many, 0-15; bit 4: eventfds, else dups of a 1 MiB memfd that
// stands for guest RAM), then the 12-byte header and as many payload bytes as its size says (fewer
// when the input ends: a truncated message). Invariants: every reply is a well-formed reply to the
// request that asked for one, and no fd outlives the connection.

let logger: Logger = {
    var logger = Logger(label: "fuzz.vhost-user")
    logger.logLevel = .critical
    return logger
}()
let guestRAM: UInt64 = 1 << 20

/// Requests that are answered (GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_VRING_BASE, GET_CONFIG).
let answered: Set<UInt32> = [1, 11, 15, 17, 24]

func send(_ socket: Int32, _ bytes: [UInt8], fds: [Int32]) {
    _ = try? Linux.send(socket, bytes, fds: fds)
}

/// Replies read off the front-end's end; each must be a whole reply to an answered request.
func checkReplies(_ socket: Int32, _ pending: inout [UInt8], asked: inout [UInt32]) {
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if n <= 0 { break }
        pending += buffer[0..<n]
    }
    while pending.count >= VhostUserHeader.size {
        let header = pending.withUnsafeBytes { VhostUserHeader(bytes: $0.baseAddress!) }
        guard pending.count >= VhostUserHeader.size + Int(header.size) else { return }
        fuzzCheck(header.flags == VhostUserHeader.version | VhostUserHeader.replyFlag, "reply flags \(header.flags)")
        fuzzCheck(!asked.isEmpty && asked.removeFirst() == header.request, "reply to request \(header.request)")
        fuzzCheck(header.size <= VhostUserHeader.maxPayload, "reply of \(header.size) bytes")
        pending.removeFirst(VhostUserHeader.size + Int(header.size))
    }
}

/// Globals are lazy: set them up (and take the fd baseline) before the first input.
@_cdecl("LLVMFuzzerInitialize")
public func initialize(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>
) -> CInt {
    _ = logger
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let openBefore = OpenFileDescriptors()
    var input = FuzzInput(data, size)
    guard let (frontEnd, backEnd) = try? Linux.socketPair() else { fatalError("socketpair") }
    _ = fcntl(backEnd, F_SETFL, fcntl(backEnd, F_GETFL) | O_NONBLOCK)
    guard let memfd = try? Linux.memoryFile(name: "guest-ram", size: guestRAM) else { fatalError("memfd") }

    do {
        let loop = try EpollLoop()
        let device = VsockDevice(
            guestCID: 3, hybridPath: "/nonexistent/vessel-fuzz", options: VsockDeviceOptions(),
            loop: loop, logger: logger)
        let session = VhostUserSession(device: device, loop: loop, logger: logger)
        var channel: VhostUserChannel? = VhostUserChannel(fd: backEnd, session: session)
        var replies: [UInt8] = []
        var asked: [UInt32] = []
        while !input.isEmpty, let reader = channel {
            let spec = input.u8()
            let head = input.take(VhostUserHeader.size)
            let header =
                head.count == VhostUserHeader.size
                ? head.withUnsafeBytes { VhostUserHeader(bytes: $0.baseAddress!) } : nil
            let payload = input.take(Int(min(header?.size ?? 0, 1 << 16)))
            let attached = (0..<Int(spec & 0x0f)).map { _ in spec & 0x10 != 0 ? (try? Linux.eventFD()) ?? -1 : dup(memfd) }
            send(frontEnd, head + payload, fds: attached)
            for fd in attached { close(fd) }  // in flight, the socket holds its own references
            if let header, answered.contains(header.request), header.size == payload.count {
                asked.append(header.request)
            }
            do {
                if try reader.readable() == .closed { channel = nil }
            } catch {
                channel = nil  // a protocol error closes the connection, as the backend does
            }
            // Kicks and timers as the backend's loop would run them.
            loop.runOnce(timeoutMilliseconds: 0)
            device.handleTimers()
            device.processRx()
            checkReplies(frontEnd, &replies, asked: &asked)
        }
        channel = nil
        session.close()
        device.teardown()
    } catch {
        fuzzCheck(false, "setup failed: \(error)")
    }
    close(frontEnd)
    close(backEnd)
    close(memfd)
    openBefore.checkNoneLeaked()
    return 0
}
