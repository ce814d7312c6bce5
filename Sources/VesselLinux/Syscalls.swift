import CVessel

#if canImport(Glibc)
    import Glibc
#endif

public enum Linux {
    /// A wait(2) status as a shell reports it: the exit code, or 128 + the signal.
    public static func shellStatus(_ waitStatus: Int32) -> Int32 {
        (waitStatus & 0x7f) == 0 ? (waitStatus >> 8) & 0xff : 128 + (waitStatus & 0x7f)
    }

    public static func close(_ fd: Int32) {
        if fd >= 0 { _ = Glibc.close(fd) }
    }

    /// A pipe whose both ends are close-on-exec; the spawn routine decides what the child keeps.
    public static func pipe() throws(LinuxError) -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        try cvessel("pipe2") { vessel_pipe2(&fds, O_CLOEXEC) }
        return (fds[0], fds[1])
    }

    /// F_SETPIPE_SZ: the kernel rounds up to a power of two pages.
    public static func setPipeSize(_ fd: Int32, _ bytes: Int) throws(LinuxError) {
        let setPipeSize: Int32 = 1031  // F_LINUX_SPECIFIC_BASE + 7
        try sys("F_SETPIPE_SZ") { fcntl(fd, setPipeSize, Int32(clamping: bytes)) }
    }

    public static func socketPair() throws(LinuxError) -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        try sys("socketpair") { socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) }
        return (fds[0], fds[1])
    }

    /// Runs `body` on a new detached POSIX thread (not a Foundation or cooperative-pool thread:
    /// these loops block in syscalls for the life of the process).
    public static func startThread(_ body: @escaping @Sendable () -> Void) {
        final class Box {
            let body: @Sendable () -> Void
            init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        }
        var thread = pthread_t()
        let rc = pthread_create(
            &thread, nil,
            { arg in
                Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().body()
                return nil
            }, Unmanaged.passRetained(Box(body)).toOpaque())
        precondition(rc == 0, "pthread_create failed: \(rc)")
        pthread_detach(thread)
    }

    /// Runs a blocking call on a thread of its own and awaits it, so that blocking calls never
    /// occupy the cooperative pool.
    public static func blocking<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in startThread { continuation.resume(returning: body()) } }
    }

    private static func unixAddress(_ path: String, stage: String) throws(LinuxError) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw LinuxError(stage: stage, errno: ENAMETOOLONG, detail: path)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        return address
    }

    private static func unixSocket(nonBlocking: Bool) throws(LinuxError) -> Int32 {
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
        return try sys("socket") { socket(AF_UNIX, type, 0) }
    }

    /// A listening, close-on-exec Unix stream socket at `path` (mode 0600). `nonBlocking` for a
    /// listener on an event loop, which accepts until none is waiting.
    public static func listenUnix(_ path: String, backlog: Int32 = 128, nonBlocking: Bool = false) throws(LinuxError) -> Int32 {
        var address = try unixAddress(path, stage: "bind")
        let fd = try unixSocket(nonBlocking: nonBlocking)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 || listen(fd, backlog) != 0 || chmod(path, 0o600) != 0 {
            let error = LinuxError(stage: rc != 0 ? "bind" : "listen", detail: path)
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    /// A connected, close-on-exec Unix stream socket. `nonBlocking` connects without waiting: a
    /// listener whose backlog is full refuses with EAGAIN.
    public static func connectUnix(_ path: String, nonBlocking: Bool = false) throws(LinuxError) -> Int32 {
        var address = try unixAddress(path, stage: "connect")
        let fd = try unixSocket(nonBlocking: nonBlocking)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 {
            let error = LinuxError(stage: "connect", detail: path)
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    public static func openPTY() throws(LinuxError) -> (master: Int32, slave: Int32) {
        var master: Int32 = -1, slave: Int32 = -1
        try cvessel("openpty") { vessel_openpty(&master, &slave) }
        return (master, slave)
    }

    public static func open(_ path: String, _ flags: Int32, _ mode: mode_t = 0) throws(LinuxError) -> Int32 {
        try sys("open", path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
    }

    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws(LinuxError) {
        var offset = 0
        while offset < bytes.count {
            let n = try sys("write") {
                bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            }
            offset += n
        }
    }

    /// Reads exactly `count` bytes; returns nil on EOF before the first byte. With a timeout it
    /// gives up (ETIMEDOUT) once that many milliseconds passed without a byte: for a peer that
    /// may never answer (a guest).
    public static func readExactly(_ fd: Int32, _ count: Int, timeoutMilliseconds: Int32? = nil) throws(LinuxError) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            if let timeoutMilliseconds {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let ready = try sys("poll") { Int(poll(&p, 1, timeoutMilliseconds)) }
                guard ready > 0 else { throw LinuxError(stage: "read", errno: ETIMEDOUT) }
            }
            let n = try sys("read") {
                buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + offset, count - offset) }
            }
            if n == 0 {
                if offset == 0 { return nil }
                throw LinuxError(stage: "read", errno: EPIPE, detail: "(short message)")
            }
            offset += n
        }
        return buffer
    }

    /// Reads `fd` to EOF.
    public static func readAll(_ fd: Int32) throws(LinuxError) -> [UInt8] {
        var out = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        while true {
            let n = try sys("read") { chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) } }
            if n == 0 { return out }
            out.append(contentsOf: chunk[0..<n])
        }
    }

    /// A "Key:  N kB" line of a /proc file (status, smaps_rollup) in KiB; 0 when there is none.
    public static func procKiB(_ key: String, in path: String) -> Int {
        let text = (try? readFile(path)) ?? ""
        let line = text.split(separator: "\n").first { $0.hasPrefix(key + ":") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }

    /// The fields of /proc/PID/stat after the parenthesised command name, which may hold spaces:
    /// [0] is field 3 (the state), [1] field 4 (the parent), [19] field 22 (the start time).
    /// nil when the process is gone.
    public static func statFields(_ pid: Int32) -> [Substring]? {
        guard pid > 0, let stat = try? readFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        return stat[stat.index(after: close)...].split(separator: " ")
    }

    /// Reads a whole small file (procfs, sysfs, cgroupfs).
    public static func readFile(_ path: String) throws(LinuxError) -> String {
        let fd = try open(path, O_RDONLY)
        defer { close(fd) }
        var out = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = try sys("read", path) { chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) } }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func writeFile(_ path: String, _ text: String) throws(LinuxError) {
        let fd = try open(path, O_WRONLY)
        defer { close(fd) }
        try writeAll(fd, Array(text.utf8))
    }

    public static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    public static func mkdirAll(_ path: String, mode: mode_t = 0o755) throws(LinuxError) {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, mode) != 0 && Glibc.errno != EEXIST {
                throw LinuxError(stage: "mkdir", detail: current)
            }
        }
    }

    public static func mount(_ source: String, _ target: String, _ type: String?, _ flags: UInt, _ data: String?) throws(LinuxError) {
        try sys("mount", "\(type ?? "bind") on \(target)") { Glibc.mount(source, target, type, flags, data) }
    }

    /// Sets `attributes` on the mount at `path` and, with `recursive`, on every mount below it.
    public static func setMountAttributes(_ path: String, _ attributes: MountAttributes, recursive: Bool) throws(LinuxError) {
        let atRecursive: UInt32 = 0x8000
        try cvessel("mount_setattr", path) {
            vessel_mount_setattr(AT_FDCWD, path, recursive ? atRecursive : 0, attributes.rawValue, 0)
        }
    }

    public static func kill(_ pid: pid_t, _ signal: Int32) throws(LinuxError) {
        try sys("kill", "\(pid)") { Glibc.kill(pid, signal) }
    }

    /// Writes a length-prefixed message on a stream socket (helper <-> agent).
    public static func sendMessage(_ fd: Int32, _ bytes: [UInt8]) throws(LinuxError) {
        let n = UInt32(bytes.count)
        try writeAll(fd, [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)] + bytes)
    }

    /// Reads one length-prefixed message; nil on a clean EOF.
    public static func receiveMessage(_ fd: Int32, limit: Int = 16 << 20) throws(LinuxError) -> [UInt8]? {
        guard let header = try readExactly(fd, 4) else { return nil }
        let n = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
        if n > limit { throw LinuxError(stage: "receive message", errno: EMSGSIZE) }
        if n == 0 { return [] }
        guard let body = try readExactly(fd, n) else { throw LinuxError(stage: "receive message", errno: EPIPE) }
        return body
    }

    public static var pageSize: Int { Int(sysconf(Int32(_SC_PAGESIZE))) }

    /// An unnamed read-write file in `directory` (O_TMPFILE): gone with its last fd.
    public static func anonymousFile(in directory: String) throws(LinuxError) -> Int32 {
        try sys("open O_TMPFILE", directory) { Glibc.open(directory, VESSEL_O_TMPFILE | O_RDWR | O_CLOEXEC, 0o600) }
    }

    /// Waits for a child of ours (retrying on EINTR); its shell status (exit code, or 128+signal).
    @discardableResult
    public static func reap(_ pid: pid_t) -> Int32 {
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) < 0 && Glibc.errno == EINTR {}
        return shellStatus(raw)
    }

    /// A pidfd (close-on-exec): readable once the process has exited, whoever reaps it.
    public static func pidfdOpen(_ pid: pid_t) throws(LinuxError) -> Int32 {
        try cvessel("pidfd_open", "\(pid)") { vessel_pidfd_open(pid) }
    }

    /// Waits (without polling) until `pid` has exited, up to `timeout` seconds (`.infinity`: no
    /// bound); true when it has (or never existed).
    public static func waitGone(pid: pid_t, timeout: Double) -> Bool {
        guard let fd = try? pidfdOpen(pid) else { return true }
        defer { close(fd) }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let milliseconds = timeout >= Double(Int32.max) / 1000 ? -1 : Int32(max(0, timeout * 1000))
        while true {
            let n = poll(&p, 1, milliseconds)
            if n < 0 && Glibc.errno == EINTR { continue }
            return n > 0
        }
    }
}

/// Converts Swift strings to a NULL-terminated C string array that lives as long as the value.
public final class CStringArray {
    public let pointers: [UnsafeMutablePointer<CChar>?]

    public init(_ strings: [String]) {
        pointers = strings.map { strdup($0) } + [nil]
    }

    deinit {
        for p in pointers { free(p) }
    }

    public func withPointer<R>(_ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) throws -> R) rethrows -> R {
        try pointers.withUnsafeBufferPointer { try body($0.baseAddress!) }
    }
}
