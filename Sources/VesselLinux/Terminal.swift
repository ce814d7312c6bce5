import CVessel

#if canImport(Glibc)
    import Glibc
#endif

extension Linux {
    /// A terminal's size, nil when `fd` is not a terminal or has none set.
    public static func windowSize(_ fd: Int32) -> (rows: UInt16, columns: UInt16)? {
        var rows: UInt16 = 0, columns: UInt16 = 0
        guard vessel_get_winsize(fd, &rows, &columns) == 0, rows > 0, columns > 0 else { return nil }
        return (rows, columns)
    }

    public static func setWindowSize(_ fd: Int32, rows: UInt16, columns: UInt16) throws(LinuxError) {
        try cvessel("TIOCSWINSZ") { vessel_set_winsize(fd, rows, columns) }
    }

    /// Makes `fd` the calling session leader's controlling terminal.
    public static func setControllingTerminal(_ fd: Int32) throws(LinuxError) {
        try cvessel("TIOCSCTTY") { vessel_set_ctty(fd) }
    }

    /// Sends `fd` over a Unix socket (one SCM_RIGHTS message carrying `name`, runc's console protocol).
    public static func sendFD(_ socket: Int32, name: String, _ fd: Int32) throws(LinuxError) {
        _ = try send(socket, Array(name.utf8), fds: [fd])
    }

    /// Receives one fd sent by `sendFD` whose name has `nameLength` bytes: no more is read, so
    /// the messages after it stay in the socket.
    public static func receiveFD(_ socket: Int32, nameLength: Int) throws(LinuxError) -> Int32 {
        var name = [UInt8](repeating: 0, count: nameLength)
        let message = name.withUnsafeMutableBytes { buffer in
            Result { () throws(LinuxError) in try receive(socket, into: buffer, maxFDs: 1, blocking: true) }
        }
        guard let fd = try message.get()?.fds.first else { throw LinuxError(stage: "recvmsg SCM_RIGHTS", errno: EBADMSG) }
        return fd
    }

    /// "/dev/pts/N", as the namespace that opened `master` names its slave.
    public static func ptyName(_ master: Int32) throws(LinuxError) -> String {
        var name = [CChar](repeating: 0, count: 128)
        try cvessel("ptsname") { vessel_ptsname(master, &name, name.count) }
        return String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public static func loopbackUp() throws(LinuxError) {
        try cvessel("set lo up") { vessel_loopback_up() }
    }
}
