import NIOCore
import NIOPosix
import VesselLinux

#if canImport(Glibc)
    import Glibc
#endif

/// `agent.debug_console`: every connection to the vsock port gets a shell on a fresh pty (busybox's,
/// in an initrd built with `--debug`), bridged byte for byte.
enum DebugConsole {
    static func listen(port: UInt32, exeFD: Int32, group: any EventLoopGroup) async throws -> any Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { socket in
                socket.eventLoop.makeCompletedFuture { try attachShell(to: socket, exeFD: exeFD) }
            }
            .bind(to: VsockAddress(cid: .any, port: .init(rawValue: port))).get()
    }

    private static func attachShell(to socket: any Channel, exeFD: Int32) throws {
        let (master, slave) = try Linux.openPTY()
        defer { Linux.close(slave) }
        let shell: SpawnResult
        do {
            shell = try spawn(
                exeFD: exeFD, arguments: ["vessel-agent", Helper.argument, "console"], environment: [],
                fds: [(slave, 0), (slave, 1), (slave, 2)])
        } catch {
            Linux.close(master)
            throw error
        }
        Reaper.shared.watch(shell.pid)
        let pty = NIOPipeBootstrap(group: socket.eventLoop).takingOwnershipOfDescriptor(inputOutput: master)
        pty.whenSuccess { pty in
            _ = socket.pipeline.addHandler(Bridge(peer: pty))
            _ = pty.pipeline.addHandler(Bridge(peer: socket))
        }
        pty.whenFailure { _ in socket.close(promise: nil) }
        // The shell goes when the client goes (hang-up first, as a terminal would).
        socket.closeFuture.whenComplete { _ in
            kill(shell.pid, SIGHUP)
            kill(shell.pid, SIGKILL)
            Task {
                _ = await Reaper.shared.wait(shell.pid)
                Reaper.shared.forget(shell.pid)
            }
        }
    }

    /// Forwards what one side reads to the other; either side closing closes both.
    private final class Bridge: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let peer: any Channel

        init(peer: any Channel) { self.peer = peer }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            peer.writeAndFlush(unwrapInboundIn(data), promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) { peer.close(promise: nil) }

        func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
    }

    /// Helper mode `console`, in the new process: own session, the pty as controlling terminal, a shell.
    static func execShell() -> Never {
        _ = setsid()
        try? Linux.setControllingTerminal(0)
        for shell in ["/bin/sh", "/bin/busybox"] where access(shell, X_OK) == 0 {
            let argv = CStringArray(["sh"])
            let envp = CStringArray(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=vt100", "HOME=/root"])
            _ = argv.withPointer { a in envp.withPointer { e in execve(shell == "/bin/sh" ? shell : "/bin/busybox", a, e) } }
        }
        printError("vessel-agent: no shell in this image (build the initrd with --debug)")
        exit(1)
    }
}
