import Testing
import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// fd passing and the epoll loop, on socketpairs and eventfds of this process only.
@Suite(.timeLimit(.minutes(1)))
struct SocketTests {
    private func openFDs() -> Int {
        (0..<Int32(1024)).filter { fcntl($0, F_GETFD) >= 0 }.count
    }

    /// Both ends of a socketpair and a memfd of `size` bytes to pass over it, closed after `body`.
    private func withPair(passing size: UInt64, _ body: (Int32, Int32, Int32) throws -> Void) throws {
        let (a, b) = try Linux.socketPair()
        let memory = try Linux.memoryFile(name: "passed", size: size)
        defer {
            for fd in [a, b, memory] { Linux.close(fd) }
        }
        try body(a, b, memory)
    }

    @Test func fdsPassedBeyondWhatIsTakenAreCountedAndClosed() throws {
        try withPair(passing: 4096) { a, b, memory in
            #expect(try Linux.send(a, Array("fds".utf8), fds: [memory, memory, memory]) == 3)
            let before = openFDs()
            var bytes = [UInt8](repeating: 0, count: 16)
            let message = try #require(
                try bytes.withUnsafeMutableBytes { buffer in try Linux.receive(b, into: buffer, maxFDs: 1) })
            #expect(message.count == 3 && bytes.prefix(3) == Array("fds".utf8)[...])
            #expect(message.fdsPassed == 3 && message.fds.count == 1 && !message.controlTruncated)
            let received = try #require(message.fds.first)
            var st = stat()
            #expect(fstat(received, &st) == 0 && st.st_size == 4096)
            #expect(fcntl(received, F_GETFD) & FD_CLOEXEC != 0)
            Linux.close(received)
            #expect(openFDs() == before, "the two fds not taken were left open")
            let nothing = try bytes.withUnsafeMutableBytes { buffer in try Linux.receive(b, into: buffer, maxFDs: 1) }
            #expect(nothing == nil)
        }
    }

    @Test func consoleProtocolRoundTrip() throws {
        try withPair(passing: 0) { a, b, memory in
            try Linux.sendFD(a, name: "/dev/ptmx", memory)
            let fd = try Linux.receiveFD(b, nameLength: "/dev/ptmx".utf8.count)
            #expect(fd >= 0 && fd != memory)
            Linux.close(fd)
        }
    }

    @Test func unregisteredHandlersAreNotRun() throws {
        let loop = try EpollLoop()
        let event = try Linux.eventFD()
        defer { Linux.close(event) }
        var seen: [EpollEvents] = []
        let token = try loop.register(fd: event, events: .readable) { seen.append($0) }
        #expect(loop.runOnce(timeoutMilliseconds: 0) == 0)
        Linux.signal(eventFD: event)
        #expect(loop.runOnce(timeoutMilliseconds: 1000) == 1)
        #expect(seen == [.readable])
        Linux.drain(eventFD: event)
        #expect(loop.runOnce(timeoutMilliseconds: 0) == 0)
        loop.unregister(fd: event, token: token)
        Linux.signal(eventFD: event)
        #expect(loop.runOnce(timeoutMilliseconds: 0) == 0)
        #expect(seen.count == 1)
    }
}
