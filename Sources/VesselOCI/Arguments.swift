import VesselCore

/// runc's (urfave/cli) flag style: `-f`, `--flag`, `--flag=value`, `--flag value`; flags stop at
/// the first positional argument (so `exec ID sh -c ...` keeps the command's own flags).
struct Arguments {
    private(set) var values: [String: [String]] = [:]
    private(set) var positionals: [String] = []

    /// `flags` take no value; `options` take one (repeatable). Names without dashes; aliases as "a|all".
    init(_ tokens: [String], flags: [String] = [], options: [String] = []) throws(RuntimeError) {
        var canonical: [String: (name: String, takesValue: Bool)] = [:]
        for (spec, takesValue) in flags.map({ ($0, false) }) + options.map({ ($0, true) }) {
            let names = spec.split(separator: "|").map(String.init)
            for name in names { canonical[name] = (names.last!, takesValue) }
        }
        var index = 0
        while index < tokens.count {
            let token = tokens[index]
            index += 1
            if token == "--" {
                positionals += tokens[index...]
                break
            }
            guard token.hasPrefix("-"), token.count > 1 else {
                positionals += tokens[(index - 1)...]
                break
            }
            var name = String(token.drop(while: { $0 == "-" }))
            var inline: String?
            if let eq = name.firstIndex(of: "=") {
                inline = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            guard let (key, takesValue) = canonical[name] else { throw RuntimeError("flag provided but not defined: -\(name)") }
            if takesValue {
                guard let value = inline ?? (index < tokens.count ? tokens[index] : nil) else {
                    throw RuntimeError("flag needs an argument: -\(name)")
                }
                if inline == nil { index += 1 }
                values[key, default: []].append(value)
            } else {
                values[key, default: []].append(inline ?? "true")
            }
        }
    }

    func flag(_ name: String) -> Bool { values[name]?.last.map { $0 != "false" } ?? false }
    func option(_ name: String) -> String? { values[name]?.last }
    func all(_ name: String) -> [String] { values[name] ?? [] }

    /// The container id, runc's way of complaining when it is missing.
    func id(_ command: String) throws(RuntimeError) -> String {
        guard let id = positionals.first, !id.isEmpty else {
            throw RuntimeError("\"\(command)\" requires a container id")
        }
        return id
    }
}
