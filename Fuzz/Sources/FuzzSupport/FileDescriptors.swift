#if canImport(Glibc)
    import Glibc
#endif

/// Catches fd leaks: the fds open before an input, compared with those open after it. Per input, not
/// once at start: libFuzzer and the sanitizers open pipes of their own along the way.
public struct OpenFileDescriptors: Sendable {
    static let range: Int32 = 512
    private let atStart: Set<Int32>

    public init() {
        self.atStart = Self.open()
    }

    private static func open() -> Set<Int32> {
        Set((0..<range).filter { fcntl($0, F_GETFD) >= 0 })
    }

    /// Fails the input when it left an fd open.
    public func checkNoneLeaked() {
        let leaked = Self.open().subtracting(atStart)
        fuzzCheck(leaked.isEmpty, "fds left open: \(leaked.sorted().map { "\($0) (\(Self.describe($0)))" })")
    }

    private static func describe(_ fd: Int32) -> String {
        var target = [CChar](repeating: 0, count: 256)
        let n = readlink("/proc/self/fd/\(fd)", &target, target.count - 1)
        return n > 0 ? String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
    }
}
