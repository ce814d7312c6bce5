/// google.rpc.Code values, as carried in `Response.status.code`.
public enum TTRPCCode: Int32, Sendable, CaseIterable {
    case ok = 0
    case cancelled = 1
    case unknown = 2
    case invalidArgument = 3
    case deadlineExceeded = 4
    case notFound = 5
    case alreadyExists = 6
    case permissionDenied = 7
    case resourceExhausted = 8
    case failedPrecondition = 9
    case aborted = 10
    case outOfRange = 11
    case unimplemented = 12
    case `internal` = 13
    case unavailable = 14
    case dataLoss = 15
    case unauthenticated = 16
}

/// A non-OK ttrpc status: what a server handler throws to pick a status code, and what
/// `TTRPCClient.call` throws when the peer (or the connection) reports a failure.
public struct TTRPCError: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: TTRPCCode
    public var message: String

    public init(_ code: TTRPCCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "ttrpc error \(self.code) (\(self.code.rawValue)): \(self.message)" }
}

extension TTRPCError {
    /// Status a server reports for an error thrown by a handler: a handler maps its own module's
    /// errors to a TTRPCError (the agent does so in one place, `AgentError.status`); anything
    /// else becomes `.unknown` with `String(describing: error)`.
    init(from error: any Error) {
        switch error {
        case let error as TTRPCError:
            self = error
        case is CancellationError:
            self.init(.cancelled, "request cancelled")
        default:
            self.init(.unknown, String(describing: error))
        }
    }

    /// Codes outside google.rpc.Code (a newer or broken peer) degrade to `.unknown`,
    /// keeping the number in the message so nothing is lost for debugging.
    init(status: Google_Rpc_Status) {
        if let code = TTRPCCode(rawValue: status.code) {
            self.init(code, status.message)
        } else {
            self.init(.unknown, "status code \(status.code): \(status.message)")
        }
    }

    var status: Google_Rpc_Status {
        var status = Google_Rpc_Status()
        status.code = self.code.rawValue
        status.message = self.message
        return status
    }
}
