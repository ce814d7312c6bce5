import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A failure of a test's own machinery (not of what it tests), said in one line.
public struct TestSupportError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A fresh directory `<temp>/<prefix>-XXXXXXXX` (mode 0755), removed by the caller. Keep
/// prefixes short where sockets go in: a Unix socket's path has at most 107 bytes.
public func temporaryDirectory(_ prefix: String = "vessel-test") throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// True once `condition` holds, checked at once and then every `interval` seconds for at most
/// `timeout` seconds: a wait for what the test needs, never an unbounded one. (Disfavoured: in
/// async code the async variant below sleeps without holding one of the pool's threads.)
@_disfavoredOverload
@discardableResult
public func waitUntil(timeout: Double, every interval: Double = 0.05, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = ContinuousClock.now + .seconds(timeout)
    while true {
        if try condition() { return true }
        if ContinuousClock.now >= deadline { return false }
        usleep(UInt32(max(0.001, min(interval, 1)) * 1_000_000))
    }
}

/// The same for async conditions, sleeping without holding a thread; a cancelled task (its
/// test's time limit) stops waiting at once.
@discardableResult
public func waitUntil(timeout: Double, every interval: Double = 0.05, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + .seconds(timeout)
    while true {
        if try await condition() { return true }
        if ContinuousClock.now >= deadline || Task.isCancelled { return false }
        try? await Task.sleep(for: .seconds(interval))
    }
}
