import VesselLinux

/// The runtime's one error type: a one-line message naming what was wrong, and the exit code the
/// CLI uses (1 like runc, unless a container's own status is being propagated).
public struct RuntimeError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var exitCode: Int32

    public init(_ message: String, exitCode: Int32 = 1) {
        self.message = message
        self.exitCode = exitCode
    }

    public init(stage: String, _ error: LinuxError) {
        self.init("\(stage): \(error)")
    }

    public var description: String { message }
}

/// Wraps failures from the libraries below (Linux, VM, vsock, ttrpc) as a RuntimeError that says
/// what the runtime was doing.
@discardableResult
public func during<T>(_ what: String, _ body: () throws -> T) throws(RuntimeError) -> T {
    do { return try body() } catch let error as RuntimeError { throw error } catch { throw RuntimeError("\(what): \(error)") }
}

@discardableResult
nonisolated(nonsending) public func during<T>(_ what: String, _ body: () async throws -> T) async throws(RuntimeError) -> T {
    do { return try await body() } catch let error as RuntimeError { throw error } catch { throw RuntimeError("\(what): \(error)") }
}
