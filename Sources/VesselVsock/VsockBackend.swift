// Design (issue 5, hybrid vsock for QEMU without /dev/vhost-vsock):
//
// One thread, one epoll loop (VesselLinux's EpollLoop) serves everything: the vhost-user listener and connection,
// the kick eventfds of both rings, the hybrid listener `<path>`, CONNECT handshakes and every host-side Unix socket
// (edge-triggered). After each batch of events the device fills the rx ring; timers come from the epoll timeout.
//
//  VhostUser.swift         wire codec: 12-byte header, strict payload/fd validation; any error closes the connection
//  VhostUserSession.swift  features (VERSION_1 | PROTOCOL_FEATURES; protocol MQ | CONFIG), memory table, vring
//                          state; starts the device when both rings have num/addr/kick and are enabled, stops it on
//                          SET_VRING_ENABLE(0), GET_VRING_BASE (answered with the ring position), SET_MEM_TABLE, RESET
//  GuestMemory.swift       mmap of the SET_MEM_TABLE fds; guest-physical (descriptors) and QEMU-virtual (rings) lookup
//  Virtqueue.swift         split ring, no EVENT_IDX / indirect; avail->idx acquire load, used->idx release store, a
//                          full fence before reading avail->flags (NO_INTERRUPT); chains validated (bounds, loops);
//                          an avail->idx more than a ring ahead breaks the queue (the device stops until restarted)
//  VsockDevice.swift       connections: REQUEST/RESPONSE/RW/CREDIT/SHUTDOWN/RST, credit both ways (buf_alloc we
//                          advertise bounds what we buffer; CREDIT_UPDATE after each creditUpdateThreshold forwarded),
//                          round robin over ready connections (one packet per turn, control packets first), reads
//                          from host sockets only with guest credit and rx buffers (back-pressure both ways), payload
//                          copied between sockets and guest memory with readv/sendmsg directly (no staging buffer
//                          unless the host reader is slow); at most a ring's worth of chains per call, since a
//                          guest can refill a ring as fast as we drain it
//
// Index accesses use VesselLinux's GuestMemoryAtomics (C11 atomics, inlined): Synchronization.Atomic cannot be
// placed on memory it does not own (the rings live in guest RAM).

import Logging
import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// A vhost-user-vsock device back-end ("hybrid vsock"): QEMU connects to `vhostUserSocketPath`
/// (`-chardev socket,path=… -device vhost-user-vsock-pci,chardev=…`); host clients connect to
/// `hybridSocketPath` and write `CONNECT <port>\n` (reply `OK <hostport>\n`); guest connections to host port P
/// go to a Unix listener at `<hybridSocketPath>_P`.
///
/// Both sockets listen when `init` returns, so QEMU can be started right after. `run()` serves on the calling
/// thread (one epoll loop for the vhost-user socket, kick eventfds and all host sockets) until `stop()` or,
/// with `exitOnDisconnect`, until QEMU disconnects.
public final class VsockBackend: Sendable {
    public struct Options: Sendable {
        public var device = VsockDeviceOptions()
        /// Return from `run()` when the front-end (QEMU) disconnects or sends a malformed message.
        public var exitOnDisconnect = true
        public var logger = Logger(label: "vessel.vsock")
        public init() {}
    }

    public let vhostUserSocketPath: String
    public let hybridSocketPath: String
    public let guestCID: UInt64
    let options: Options
    private let vhostListener: Int32
    private let hybridListener: Int32
    private let stopFd: Int32

    public init(
        vhostUserSocketPath: String, hybridSocketPath: String, guestCID: UInt64, options: Options = Options()
    )
        throws(LinuxError)
    {
        guard guestCID > 2, guestCID < 0xffff_ffff else { throw LinuxError(stage: "guest CID \(guestCID)", errno: EINVAL) }
        self.vhostUserSocketPath = vhostUserSocketPath
        self.hybridSocketPath = hybridSocketPath
        self.guestCID = guestCID
        self.options = options
        let stop = try Linux.eventFD()
        stopFd = stop
        do {
            vhostListener = try Self.listen(vhostUserSocketPath, backlog: 4)
        } catch {
            Linux.close(stop)
            throw error
        }
        do {
            hybridListener = try Self.listen(hybridSocketPath, backlog: 128)
        } catch {
            Linux.close(stop)
            Linux.close(vhostListener)
            unlink(vhostUserSocketPath)
            throw error
        }
    }

    /// A socket file left by a backend that died would make bind fail.
    private static func listen(_ path: String, backlog: Int32) throws(LinuxError) -> Int32 {
        unlink(path)
        return try Linux.listenUnix(path, backlog: backlog, nonBlocking: true)
    }

    deinit {
        Linux.close(vhostListener)
        Linux.close(hybridListener)
        Linux.close(stopFd)
        unlink(vhostUserSocketPath)
        unlink(hybridSocketPath)
    }

    /// Asks `run()` to return (thread-safe).
    public func stop() { Linux.signal(eventFD: stopFd) }

    public enum Exit: Sendable, Equatable {
        case stopped
        /// The front-end disconnected (QEMU exited); `error` when we closed it for a protocol error.
        case frontEndGone(error: String?)
    }

    /// Serves until stopped; call once.
    @discardableResult
    public func run() throws(LinuxError) -> Exit {
        var logger = options.logger
        logger[metadataKey: "cid"] = "\(guestCID)"
        let loop = try EpollLoop()
        let device = VsockDevice(
            guestCID: guestCID, hybridPath: hybridSocketPath, options: options.device, loop: loop,
            logger: logger)
        var exit: Exit?
        var channel: VhostUserChannel?
        var channelToken: UInt64 = 0

        func closeChannel(error: String?) {
            guard let open = channel else { return }
            if let error {
                logger.error("vhost-user connection closed: \(error)")
            } else {
                logger.info("vhost-user front-end disconnected")
            }
            loop.unregister(fd: open.fd, token: channelToken)
            open.session.close()
            device.teardown()
            Linux.close(open.fd)
            channel = nil
            if options.exitOnDisconnect { exit = .frontEndGone(error: error) }
        }

        try loop.register(fd: stopFd, events: .readable) { _ in exit = .stopped }
        try loop.register(fd: hybridListener, events: .readable) { [hybridListener] _ in
            device.acceptHost(listener: hybridListener)
        }
        try loop.register(fd: vhostListener, events: .readable) { [vhostListener] _ in
            while let fd = try? Linux.accept(vhostListener) {
                if channel != nil {
                    logger.warning("second vhost-user front-end rejected")
                    Linux.close(fd)
                    continue
                }
                let accepted = VhostUserChannel(fd: fd, session: VhostUserSession(device: device, loop: loop, logger: logger))
                do {
                    channelToken = try loop.register(fd: fd, events: [.readable, .readHangUp]) { _ in
                        guard let open = channel else { return }
                        do {
                            if try open.readable() == .closed { closeChannel(error: nil) }
                        } catch {
                            closeChannel(error: "\(error)")
                        }
                    }
                    channel = accepted
                    logger.info("vhost-user front-end connected")
                } catch {
                    Linux.close(fd)
                }
            }
        }
        defer {
            channel.map {
                loop.unregister(fd: $0.fd, token: channelToken)
                $0.session.close()
                Linux.close($0.fd)
            }
            device.teardown()
        }
        while exit == nil {
            // Ring work left by a call that used up its budget resumes at once, after the other events.
            loop.runOnce(timeoutMilliseconds: device.hasPendingWork ? 0 : device.nextTimeoutMilliseconds())
            device.handleTimers()
            if device.txPending { device.processTx() }
            device.processRx()
        }
        Linux.drain(eventFD: stopFd)
        return exit!
    }

    /// Runs `run()` on a new thread; `join()` waits for it.
    public func start() -> BackendThread {
        BackendThread { [self] in
            do throws(LinuxError) {
                return .success(try self.run())
            } catch {
                return .failure(error)
            }
        }
    }
}

/// A POSIX thread running a backend; any number of threads may `join()` it, at any time.
public final class BackendThread: @unchecked Sendable {
    private final class State: @unchecked Sendable {
        // @unchecked: `result` is written once under `mutex` and read under it; the rest is immutable.
        let body: @Sendable () -> Result<VsockBackend.Exit, LinuxError>
        var result: Result<VsockBackend.Exit, LinuxError>?
        let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        let finished = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        init(_ body: @escaping @Sendable () -> Result<VsockBackend.Exit, LinuxError>) {
            self.body = body
            pthread_mutex_init(mutex, nil)
            pthread_cond_init(finished, nil)
        }
        deinit {
            pthread_cond_destroy(finished)
            pthread_mutex_destroy(mutex)
            finished.deallocate()
            mutex.deallocate()
        }
    }
    private let state: State

    init(_ body: @escaping @Sendable () -> Result<VsockBackend.Exit, LinuxError>) {
        let state = State(body)
        self.state = state
        Linux.startThread {
            let result = state.body()
            pthread_mutex_lock(state.mutex)
            state.result = result
            pthread_cond_broadcast(state.finished)
            pthread_mutex_unlock(state.mutex)
        }
    }

    /// Waits until the backend has returned.
    @discardableResult
    public func join() -> Result<VsockBackend.Exit, LinuxError> {
        pthread_mutex_lock(state.mutex)
        defer { pthread_mutex_unlock(state.mutex) }
        while state.result == nil { pthread_cond_wait(state.finished, state.mutex) }
        return state.result!
    }
}
