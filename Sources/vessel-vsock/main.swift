import Glibc
import VesselVsock

// The hybrid-vsock backend for one VM: QEMU's vhost-user-vsock-pci connects to VHOST_SOCK;
// host clients reach guest ports through HYBRID_SOCK ("CONNECT <port>\n").
func fail(_ line: String, status: Int32) -> Never {
    let text = line + "\n"
    _ = text.withCString { write(2, $0, strlen($0)) }
    exit(status)
}

let arguments = CommandLine.arguments
guard arguments.count == 4, let cid = UInt64(arguments[3]), cid > 2 else {
    fail("usage: vessel-vsock VHOST_USER_SOCKET HYBRID_SOCKET GUEST_CID (CID > 2)", status: 2)
}
do {
    let reason = try VsockBackend(vhostUserSocketPath: arguments[1], hybridSocketPath: arguments[2], guestCID: cid).run()
    exit(reason == .frontEndGone(error: nil) ? 0 : 1)
} catch {
    fail("vessel-vsock: \(error)", status: 1)
}
