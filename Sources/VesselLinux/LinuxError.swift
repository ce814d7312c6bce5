#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A failed system call: which stage of the work failed, the errno, and what it was operating on.
public struct LinuxError: Error, Sendable, CustomStringConvertible, Equatable {
    public var stage: String
    public var errno: Int32
    public var detail: String

    public init(stage: String, errno: Int32 = Glibc.errno, detail: String = "") {
        self.stage = stage
        self.errno = errno
        self.detail = detail
    }

    /// errno 0 marks a failure that is not a system call's (a hook's exit status): no strerror then.
    public var description: String {
        let what = detail.isEmpty ? stage : "\(stage) \(detail)"
        return errno == 0 ? what : "\(what): \(String(cString: strerror(errno)))"
    }
}

/// Runs a syscall wrapper that returns -1 with errno on failure, retrying on EINTR.
@discardableResult
public func sys<T: BinaryInteger>(_ stage: String, _ detail: @autoclosure () -> String = "", _ call: () -> T) throws(LinuxError) -> T {
    while true {
        let rc = call()
        if rc >= 0 { return rc }
        let err = Glibc.errno
        if err == EINTR { continue }
        throw LinuxError(stage: stage, errno: err, detail: detail())
    }
}

/// Runs a CVessel call, which returns -errno on failure (errno itself is never read), retrying on
/// EINTR.
@discardableResult
func cvessel<T: SignedInteger>(_ stage: String, _ detail: @autoclosure () -> String = "", _ call: () -> T) throws(LinuxError) -> T {
    while true {
        let rc = call()
        if rc >= 0 { return rc }
        let err = Int32(truncatingIfNeeded: -rc)
        if err == EINTR { continue }
        throw LinuxError(stage: stage, errno: err, detail: detail())
    }
}

/// A call on a non-blocking fd, retrying on EINTR: nil when it would block (EAGAIN), which is an
/// answer, so no error is made for it. `returnsErrno`: a CVessel call's -errno, else Glibc's -1 and
/// errno. Not generic, and no thrown EAGAIN: it runs for every packet, debug builds too.
func nonBlocking(_ stage: String, returnsErrno: Bool = false, _ call: () -> Int) throws(LinuxError) -> Int? {
    while true {
        let rc = call()
        if rc >= 0 { return rc }
        let err = returnsErrno ? Int32(truncatingIfNeeded: -rc) : Glibc.errno
        if err == EAGAIN { return nil }
        if err != EINTR { throw LinuxError(stage: stage, errno: err) }
    }
}
