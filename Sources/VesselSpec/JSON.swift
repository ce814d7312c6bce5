/// A JSON value for what Vessel writes (the OCI state, `vessel list --format json`), in the guest
/// and on the host alike: the agent has no Foundation. Objects are written with sorted keys, so
/// the same value is always the same bytes.
public enum JSON: Equatable, Sendable {
    case string(String)
    case int(Int)
    case object([String: JSON])
    case array([JSON])

    public func encoded(pretty: Bool = false) -> String {
        var out = ""
        write(to: &out, indent: pretty ? "\n" : nil)
        return out
    }

    /// `indent`: nil for one line, else a newline and the current indentation.
    private func write(to out: inout String, indent: String?) {
        let inner = indent.map { $0 + "  " }
        func items<T>(_ elements: [T], open: String, close: String, _ each: (T, inout String) -> Void) {
            out += open
            for (index, element) in elements.enumerated() {
                out += (index == 0 ? "" : ",") + (inner ?? "")
                each(element, &out)
            }
            out += (elements.isEmpty ? "" : indent ?? "") + close
        }
        switch self {
        case .string(let text): out += Self.quote(text)
        case .int(let number): out += String(number)
        case .array(let elements): items(elements, open: "[", close: "]") { $0.write(to: &$1, indent: inner) }
        case .object(let members):
            items(members.sorted { $0.key < $1.key }, open: "{", close: "}") { member, out in
                out += Self.quote(member.key) + (indent == nil ? ":" : ": ")
                member.value.write(to: &out, indent: inner)
            }
        }
    }

    /// A JSON string literal: quotes, backslashes and control characters escaped.
    public static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    public subscript(key: String) -> JSON? {
        get { if case .object(let members) = self { members[key] } else { nil } }
        set {
            guard case .object(var members) = self else { return }
            members[key] = newValue
            self = .object(members)
        }
    }
}

extension JSON: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByDictionaryLiteral, ExpressibleByArrayLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(dictionaryLiteral elements: (String, JSON)...) { self = .object(Dictionary(elements) { $1 }) }
    public init(arrayLiteral elements: JSON...) { self = .array(elements) }
}

/// The OCI state of a container (runtime-spec state.md): what `vessel state` prints and what every
/// hook, host or guest, reads on stdin.
public enum OCIState {
    public static let version = "1.1.0"

    /// The fields the runtime spec names; callers add their own (rootfs, created, owner).
    public static func object(
        ociVersion: String = version, id: String, status: String, pid: Int32, bundle: String, annotations: [String: String]
    ) -> JSON {
        var state: JSON = [
            "ociVersion": .string(ociVersion), "id": .string(id), "status": .string(status), "pid": .int(Int(pid)),
            "bundle": .string(bundle),
        ]
        if !annotations.isEmpty { state["annotations"] = .object(annotations.mapValues { .string($0) }) }
        return state
    }
}
