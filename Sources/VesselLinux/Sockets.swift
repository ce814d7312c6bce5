import CVessel

#if canImport(Glibc)
    import Glibc
#endif

/// Sockets and shared memory for event-loop code (the vsock backend): the fds are non-blocking, so
/// "would block" is an answer (nil), not an error.
extension Linux {
    /// What one recvmsg brought.
    public struct ReceivedMessage {
        /// Bytes read; 0 when the peer closed.
        public var count: Int
        /// The fds passed with them (close-on-exec), at most the `maxFDs` asked for.
        public var fds: [Int32]
        /// How many fds the peer passed, those beyond `maxFDs` included (closed on arrival).
        public var fdsPassed: Int
        /// The kernel cut the passed fds short.
        public var controlTruncated: Bool
    }

    /// sendmsg of `bytes` with `fds` (at most 32, as SCM_RIGHTS) and no SIGPIPE; the bytes sent.
    public static func send(_ socket: Int32, _ bytes: [UInt8], fds: [Int32] = []) throws(LinuxError) -> Int {
        try cvessel("sendmsg") {
            bytes.withUnsafeBytes { buffer in
                fds.withUnsafeBufferPointer { vessel_send_fds(socket, buffer.baseAddress, buffer.count, $0.baseAddress, Int32($0.count)) }
            }
        }
    }

    /// recvmsg into `buffer` with the fds passed along; nil when a non-blocking receive found nothing.
    public static func receive(
        _ socket: Int32, into buffer: UnsafeMutableRawBufferPointer, maxFDs: Int, blocking: Bool = false
    ) throws(LinuxError) -> ReceivedMessage? {
        var fds = [Int32](repeating: -1, count: maxFDs)
        var passed: Int32 = 0
        var truncated: Int32 = 0
        let flags = blocking ? 0 : Int32(MSG_DONTWAIT)
        let count = try nonBlocking("recvmsg", returnsErrno: true) {
            fds.withUnsafeMutableBufferPointer {
                vessel_recv_fds(socket, buffer.baseAddress, buffer.count, flags, $0.baseAddress, Int32(maxFDs), &passed, &truncated)
            }
        }
        guard let count else { return nil }
        return ReceivedMessage(
            count: count, fds: Array(fds.prefix(min(Int(passed), maxFDs))), fdsPassed: Int(passed),
            controlTruncated: truncated != 0)
    }

    /// sendmsg of `vectors` without SIGPIPE or waiting; nil when the socket has no room.
    public static func send(_ socket: Int32, vectors: [iovec]) throws(LinuxError) -> Int? {
        try nonBlocking("sendmsg") {
            vectors.withUnsafeBufferPointer {
                var message = msghdr()
                message.msg_iov = UnsafeMutablePointer(mutating: $0.baseAddress)
                message.msg_iovlen = $0.count
                return sendmsg(socket, &message, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
        }
    }

    /// readv; 0 at the end of the stream, nil when a non-blocking fd has nothing yet.
    public static func read(_ fd: Int32, vectors: [iovec]) throws(LinuxError) -> Int? {
        try nonBlocking("readv") { vectors.withUnsafeBufferPointer { readv(fd, $0.baseAddress, Int32($0.count)) } }
    }

    /// Up to `limit` bytes a socket holds, left in it: [] at the end of the stream, nil when it holds
    /// nothing yet.
    public static func peek(_ socket: Int32, upTo limit: Int) throws(LinuxError) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: limit)
        let count = try nonBlocking("recv") {
            bytes.withUnsafeMutableBytes { recv(socket, $0.baseAddress, limit, Int32(MSG_PEEK | MSG_DONTWAIT)) }
        }
        return count.map { Array(bytes.prefix($0)) }
    }

    /// accept4: the connection non-blocking and close-on-exec; nil when none is waiting.
    public static func accept(_ listener: Int32) throws(LinuxError) -> Int32? {
        try nonBlocking("accept", returnsErrno: true) { Int(vessel_accept(listener)) }.map { Int32($0) }
    }

    /// A close-on-exec memfd of `size` bytes: memory shared with another process by its fd.
    public static func memoryFile(name: String, size: UInt64) throws(LinuxError) -> Int32 {
        try cvessel("memfd_create", name) { vessel_memfd(name, size) }
    }

    /// `length` bytes of `fd` mapped shared and read-write, without reserving swap: guest RAM, of
    /// which a guest touches a part.
    public static func mapShared(_ fd: Int32, length: Int) throws(LinuxError) -> UnsafeMutableRawPointer {
        let mapped = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0)
        guard let mapped, mapped != UnsafeMutableRawPointer(bitPattern: -1) else { throw LinuxError(stage: "mmap") }
        return mapped
    }

    public static func unmap(_ address: UnsafeMutableRawPointer, length: Int) {
        munmap(address, length)
    }
}
