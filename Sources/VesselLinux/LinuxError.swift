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

    public var description: String {
        let reason = String(cString: strerror(errno))
        return detail.isEmpty ? "\(stage): \(reason)" : "\(stage) \(detail): \(reason)"
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
