import VesselLinux
import VesselProtocol
import VesselSpec

#if canImport(Glibc)
    import Glibc
#endif

/// The agent's one error type: what kind of failure (it decides the ttrpc status) and a one-line
/// message naming what was wrong.
public struct AgentError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable {
        case invalidArgument, notFound, alreadyExists, failedPrecondition, resourceExhausted, `internal`, deadlineExceeded
    }

    public var kind: Kind
    public var message: String

    public var description: String { message }

    init(kind: Kind, message: String) {
        self.kind = kind
        self.message = message
    }

    static func invalidArgument(_ message: String) -> AgentError { AgentError(kind: .invalidArgument, message: message) }
    static func notFound(_ message: String) -> AgentError { AgentError(kind: .notFound, message: message) }
    static func alreadyExists(_ message: String) -> AgentError { AgentError(kind: .alreadyExists, message: message) }
    static func failedPrecondition(_ message: String) -> AgentError { AgentError(kind: .failedPrecondition, message: message) }
    static func `internal`(_ message: String) -> AgentError { AgentError(kind: .internal, message: message) }

    /// A system call failure, classified by errno: a missing path or bad value in the request is the
    /// caller's fault, the rest is ours.
    init(_ error: LinuxError, context: String = "") {
        let prefix = context.isEmpty ? "" : context + ": "
        switch error.errno {
        case ENOENT, ENOTDIR: kind = .notFound
        case EINVAL, EXDEV, ELOOP, ENAMETOOLONG, EACCES, EPERM: kind = .invalidArgument
        case EEXIST: kind = .alreadyExists
        case EMFILE, ENFILE, ENOMEM, ENOSPC, EAGAIN: kind = .resourceExhausted
        case ETIMEDOUT: kind = .deadlineExceeded
        case 0: kind = .failedPrecondition
        default: kind = .internal
        }
        message = prefix + error.description
    }

    /// The single place where any error of the agent becomes a ttrpc status.
    static func status(for error: any Error) -> TTRPCError {
        if let error = error as? TTRPCError { return error }
        let agentError =
            (error as? AgentError) ?? (error as? LinuxError).map { AgentError($0) }
            ?? (error as? SpecError).map { AgentError.invalidArgument($0.message) }
            ?? AgentError(kind: .internal, message: "\(error)")
        let code: TTRPCCode =
            switch agentError.kind {
            case .invalidArgument: .invalidArgument
            case .notFound: .notFound
            case .alreadyExists: .alreadyExists
            case .failedPrecondition: .failedPrecondition
            case .resourceExhausted: .resourceExhausted
            case .internal: .internal
            case .deadlineExceeded: .deadlineExceeded
            }
        return TTRPCError(code, agentError.message)
    }
}
