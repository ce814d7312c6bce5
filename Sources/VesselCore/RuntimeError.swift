import VesselLinux

/// The host runtime's one error type: a one-line message naming what was wrong, what kind of
/// failure it is (the sandbox owner maps kinds to ttrpc codes, in one place) and the exit code the
/// CLI uses (1 like runc).
public struct RuntimeError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable {
        case failed, notFound, alreadyExists, failedPrecondition, invalidArgument, unavailable, unimplemented
    }

    public var message: String
    public var kind: Kind
    public var exitCode: Int32

    public init(_ message: String, kind: Kind = .failed, exitCode: Int32 = 1) {
        self.message = message
        self.kind = kind
        self.exitCode = exitCode
    }

    public init(stage: String, _ error: LinuxError) {
        self.init("\(stage): \(error)")
    }

    public static func notFound(_ message: String) -> RuntimeError { RuntimeError(message, kind: .notFound) }
    public static func invalid(_ message: String) -> RuntimeError { RuntimeError(message, kind: .invalidArgument) }
    public static func precondition(_ message: String) -> RuntimeError { RuntimeError(message, kind: .failedPrecondition) }

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
