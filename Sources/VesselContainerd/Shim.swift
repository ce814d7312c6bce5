import Foundation
import VesselCore
import VesselLinux
import VesselProtocol
import VesselSandbox

/// `containerd-shim-vessel-v2` (runtime type io.containerd.vessel.v2), the shim v2 contract as
/// containerd 1.6 drives it: `start` prints the address of the sandbox owner that serves the task
/// (starting one for a pod's sandbox or a lone container), `delete` cleans up after an owner that
/// died, and without a subcommand the binary is that owner, serving on fd 3.
public enum ContainerdShim {
    public static let binaryName = "containerd-shim-vessel-v2"

    struct Flags {
        var namespace = ""
        var id = ""
        var address = ""
        var publishBinary = ""
        var bundle = ""
        var socket = ""
        var debug = false
        var version = false
        var action = ""
    }

    /// Go's flag syntax: `-name value`, `-name=value`, `--name value`; booleans take no value.
    static func parse(_ arguments: [String]) throws(RuntimeError) -> Flags {
        var flags = Flags()
        var index = 0
        while index < arguments.count {
            let token = arguments[index]
            index += 1
            guard token.hasPrefix("-"), token != "-" else {
                flags.action = token
                continue
            }
            var name = String(token.drop(while: { $0 == "-" }))
            var value: String?
            if let eq = name.firstIndex(of: "=") {
                value = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            if name == "debug" || name == "v" {
                let on = value.map { $0 != "false" } ?? true
                if name == "debug" { flags.debug = on } else { flags.version = on }
                continue
            }
            guard let text = value ?? (index < arguments.count ? arguments[index] : nil) else {
                throw RuntimeError("flag needs an argument: -\(name)")
            }
            if value == nil { index += 1 }
            switch name {
            case "namespace": flags.namespace = text
            case "id": flags.id = text
            case "address": flags.address = text
            case "publish-binary": flags.publishBinary = text
            case "bundle": flags.bundle = text
            case "socket": flags.socket = text
            default: throw RuntimeError("flag provided but not defined: -\(name)")
            }
        }
        return flags
    }

    /// The signals the daemon (the owner) stops on.
    public static func signals(_ arguments: [String]) -> [Int32] {
        let action = (try? parse(Array(arguments.dropFirst())))?.action ?? ""
        return action.isEmpty ? [SIGTERM, SIGINT] : []
    }

    public static func main(_ arguments: [String], signals: AsyncStream<Int32>?) async -> Int32 {
        do throws(RuntimeError) {
            let flags = try parse(Array(arguments.dropFirst()))
            if flags.version {
                print("\(binaryName):\n  Version: \(VesselVersion.string)\n  Runtime: io.containerd.vessel.v2")
                return 0
            }
            guard !flags.namespace.isEmpty, !flags.id.isEmpty else { throw RuntimeError("\(binaryName): -namespace and -id are required") }
            switch flags.action {
            case "start": return try start(flags)
            case "delete": return try await delete(flags)
            case "": return try await serve(flags, signals: signals ?? AsyncStream { $0.finish() })
            default: throw RuntimeError("\(binaryName): unknown action \"\(flags.action)\"")
            }
        } catch {
            // containerd reads start's stdout and stderr together: the message is the whole output.
            FileHandle.standardError.write(Data((error.message + "\n").utf8))
            return 1
        }
    }

    /// The records of one containerd namespace.
    static func store(_ namespace: String) throws(RuntimeError) -> StateStore {
        try StateStore.validate(id: namespace)
        return StateStore(root: "/run/vessel-containerd/" + namespace)
    }

    static func configuration(log: RuntimeLog) throws(RuntimeError) -> RuntimeConfig {
        try RuntimeConfig.load().0
    }
}
