import FuzzSupport
import Logging
import VesselLinux

@testable import VesselVsock

#if canImport(Glibc)
    import Glibc
#endif

// The vsock device between a hostile guest (packets with fuzzed headers, ops, CIDs, ports, credit
// and lengths, malformed descriptor chains, ring layouts of its choosing, driver resets) and host
// peers on Unix sockets only: socketpairs for host-initiated connections, listeners at
// `<hybrid>_1024` and `<hybrid>_1025` for guest-initiated ones, and the hybrid listener for the
// CONNECT handshake with fuzzed lines. No AF_VSOCK socket is ever opened.
//
// Input: one options byte (small buffers, zero timeouts, tight limits), then operations until it ends.
// Invariants: every packet the device puts on the rx ring is from the host CID to the guest's, of
// the stream type (or an RST), a known op, its length matching what the device wrote; the device never holds
// more connections than allowed; every pump returns (hangs are caught by -timeout); no fd leaks.

let logger: Logger = {
    var logger = Logger(label: "fuzz.vsock")
    logger.logLevel = .critical
    return logger
}()
let guestCID: UInt64 = 3
let directory: String = {
    var template = Array("/tmp/vessel-fuzz-XXXXXX".utf8CString)
    guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else { fatalError("mkdtemp") }
    return String(cString: p)
}()
let hybridPath = directory + "/v.sock"
let hybridListener = listen(hybridPath)
let portListeners: [UInt32: Int32] = [1024: listen(hybridPath + "_1024"), 1025: listen(hybridPath + "_1025")]
// One buffer for all inputs; only the fuzzer thread touches it.
nonisolated(unsafe) let driver = Driver()

func listen(_ path: String) -> Int32 {
    do {
        return try Linux.listenUnix(path, nonBlocking: true)
    } catch {
        fatalError("listen \(path): \(error)")
    }
}

/// Ports the fuzzer picks from: the listening ones, the first host-side ports the device allocates,
/// a guest port, or any.
func port(_ input: inout FuzzInput) -> UInt32 {
    let choice = input.u8()
    switch choice % 8 {
    case 0: return 1024
    case 1: return 1025
    case 2, 3: return (1 << 30) + UInt32(choice >> 3 & 3)
    case 4, 5: return 5000 + UInt32(choice >> 3 & 1)
    default: return input.u32()
    }
}

final class Harness {
    let loop: EpollLoop
    let device: VsockDevice
    let options: VsockDeviceOptions
    /// The host ends of connections: socketpair halves, accepted guest connections, hybrid clients.
    var hostEnds: [Int32] = []
    /// False once the fuzzer moved the rings: the driver's view of them means nothing then.
    var ringsAreOurs = true

    init(_ options: VsockDeviceOptions) throws {
        self.options = options
        loop = try EpollLoop()
        device = VsockDevice(guestCID: guestCID, hybridPath: hybridPath, options: options, loop: loop, logger: logger)
        driver.reset()
        let memory = driver.memory
        device.activate(
            rx: try driver.queue(driver.rx, memory: memory),
            tx: try driver.queue(driver.tx, memory: memory))
    }

    func pump() {
        loop.runOnce(timeoutMilliseconds: 0)
        device.handleTimers()
        device.processTx()
        device.processRx()
        for l in portListeners.values {
            while let fd = try? Linux.accept(l) { hostEnds.append(fd) }
        }
        fuzzCheck(device.connectionCount <= options.maxConnections, "\(device.connectionCount) connections")
        guard ringsAreOurs else { return }
        driver.reclaimTx()
        for (header, len) in driver.receive() {
            fuzzCheck(header.srcCID == VsockHeader.hostCID && header.dstCID == guestCID, "CIDs \(header)")
            // An RST answers a packet of another type with that type, as Linux does.
            fuzzCheck(
                header.type == VsockHeader.typeStream || header.op == VsockHeader.Op.rst.rawValue,
                "type \(header.type)")
            fuzzCheck((1...7).contains(header.op), "op \(header.op)")
            fuzzCheck(len == UInt32(VsockHeader.size) + header.len, "used length \(len) for \(header)")
            fuzzCheck(header.op == VsockHeader.Op.rw.rawValue || header.len == 0, "payload on a control packet")
        }
    }

    func guestPacket(_ input: inout FuzzInput) {
        let shape = input.u8()
        var header = VsockHeader(
            srcCID: shape & 1 == 0 ? guestCID : input.u64(),
            dstCID: shape & 2 == 0 ? VsockHeader.hostCID : input.u64(),
            srcPort: port(&input), dstPort: port(&input),
            type: shape & 4 == 0 ? VsockHeader.typeStream : input.u16(),
            flags: UInt32(input.u8()), bufAlloc: shape & 8 == 0 ? 256 * 1024 : input.u32(),
            fwdCnt: shape & 16 == 0 ? 0 : input.u32())
        header.op = UInt16(input.u8() % 9)
        let payload = input.take(Int(input.u16()) % (Driver.bufSize - 44))
        header.len = shape & 32 == 0 ? UInt32(payload.count) : input.u32()
        driver.sendTx(header, payload, split: shape & 64 != 0)
    }

    func hostWrite(_ input: inout FuzzInput) {
        guard !hostEnds.isEmpty else { return }
        let fd = hostEnds[Int(input.u8()) % hostEnds.count]
        let bytes = [UInt8](repeating: 0x5a, count: Int(input.u8()) * 64 + 1)
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
    }

    func hostRead(_ input: inout FuzzInput) {
        guard !hostEnds.isEmpty else { return }
        let fd = hostEnds[Int(input.u8()) % hostEnds.count]
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        _ = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
    }

    func hostClose(_ input: inout FuzzInput) {
        guard !hostEnds.isEmpty else { return }
        let how = input.u8()
        let index = Int(how >> 1) % hostEnds.count
        if how & 1 == 0 {
            close(hostEnds.remove(at: index))
        } else {
            shutdown(hostEnds[index], Int32(SHUT_WR))
        }
    }

    func hostConnect(_ input: inout FuzzInput) {
        guard let (deviceEnd, hostEnd) = try? Linux.socketPair() else { return }
        _ = fcntl(deviceEnd, F_SETFL, fcntl(deviceEnd, F_GETFL) | O_NONBLOCK)
        hostEnds.append(hostEnd)
        device.hostConnect(fd: deviceEnd, port: port(&input), timeoutMilliseconds: UInt64(input.u8()) * 1000)
    }

    /// A hybrid client with a fuzzed first line (`CONNECT <port> [timeout]\n` when it behaves).
    func handshake(_ input: inout FuzzInput) {
        guard let fd = try? Linux.connectUnix(hybridPath, nonBlocking: true) else { return }
        hostEnds.append(fd)
        let line = input.take(Int(input.u8() % 80))
        _ = line.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
        device.acceptHost(listener: hybridListener)
    }

    /// The driver resets the device and starts it again on fresh rings (ours, or at fuzzed places).
    func restart(_ input: inout FuzzInput) {
        device.deactivate()
        let how = input.u8()
        let memory = driver.memory
        if how & 1 == 0 {
            driver.reset()
            ringsAreOurs = true
            guard let rx = try? driver.queue(driver.rx, memory: memory),
                let tx = try? driver.queue(driver.tx, memory: memory)
            else { return }
            device.activate(rx: rx, tx: tx)
        } else {
            ringsAreOurs = false
            func ring() -> SplitVirtqueue? {
                let size = UInt32(1) << (input.u8() % 6)
                let (d, a, u) = (UInt64(input.u16()), UInt64(input.u16()), UInt64(input.u16()))
                return try? SplitVirtqueue(
                    memory: memory, size: size, descAddr: Driver.gpaBase + d,
                    availAddr: Driver.gpaBase + a, usedAddr: Driver.gpaBase + u,
                    base: input.u16(), ringAddressesAreGuestPhysical: true)
            }
            guard let rx = ring(), let tx = ring() else { return }
            device.activate(rx: rx, tx: tx)
        }
    }

    func finish() {
        device.teardown()
        for fd in hostEnds { close(fd) }
        hostEnds = []
        // Guest connections the device made but the test never accepted.
        for l in portListeners.values {
            while let fd = try? Linux.accept(l) { close(fd) }
        }
        while let fd = try? Linux.accept(hybridListener) { close(fd) }
    }
}

/// Globals are lazy: set them up (and take the fd baseline) before the first input.
@_cdecl("LLVMFuzzerInitialize")
public func initialize(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>
) -> CInt {
    _ = (hybridListener, portListeners, driver, logger)
    atexit {
        for path in [hybridPath, hybridPath + "_1024", hybridPath + "_1025"] { unlink(path) }
        rmdir(directory)
    }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let openBefore = OpenFileDescriptors()
    var input = FuzzInput(data, size)
    let knobs = input.u8()
    var options = VsockDeviceOptions()
    if knobs & 1 != 0 { options.bufferSize = 4096 }
    if knobs & 2 != 0 { options.creditUpdateThreshold = 512 }
    if knobs & 4 != 0 { (options.connectTimeoutMs, options.closeTimeoutMs) = (0, 0) }
    if knobs & 8 != 0 { (options.maxConnections, options.maxControlPackets) = (2, 2) }
    do {
        let harness = try Harness(options)
        var operations = 0
        while !input.isEmpty, operations < 256 {
            operations += 1
            let op = input.u8()
            switch op % 12 {
            case 0, 1: harness.guestPacket(&input)
            case 2: for _ in 0...(op >> 4) { driver.postRx(split: op & 0x10 == 0, payload: Int(input.u16()) % 4096) }
            case 3: harness.pump()
            case 4: harness.hostWrite(&input)
            case 5: harness.hostRead(&input)
            case 6: harness.hostClose(&input)
            case 7: harness.hostConnect(&input)
            case 8: harness.handshake(&input)
            case 9:
                driver.sendRawTx(
                    addr: input.bool() ? input.u64() : Driver.gpaBase + UInt64(input.u16()) * 4,
                    len: input.u32() % 0x20000, flags: input.u16(), next: input.u16())
            case 10: harness.restart(&input)
            default: harness.pump()
            }
        }
        harness.pump()
        harness.finish()
    } catch {
        fuzzCheck(false, "setup failed: \(error)")
    }
    openBefore.checkNoneLeaked()
    return 0
}
