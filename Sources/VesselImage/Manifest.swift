/// One error line for the user: where (manifest file and line, when there is one) and what.
public struct ImageError: Error, Equatable, CustomStringConvertible {
    public var file: String?
    public var line: Int?
    public var message: String

    public init(_ message: String, file: String? = nil, line: Int? = nil) {
        self.message = message
        self.file = file
        self.line = line
    }

    public var description: String {
        switch (file, line) {
        case let (file?, line?): "\(file):\(line): \(message)"
        case let (file?, nil): "\(file): \(message)"
        default: message
        }
    }
}

/// One file-system object of the initrd, as a manifest line describes it.
public struct Entry: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        case directory
        /// `source` is a host path: relative ones were resolved against the rootfs directory.
        case file(source: String)
        case symlink(target: String)
        case device(block: Bool, major: UInt32, minor: UInt32)
    }

    /// Absolute and normalized: "/etc/passwd".
    public var path: String
    /// Permission bits only (0o7777); symlinks are always 0o777.
    public var mode: UInt32
    public var kind: Kind
    /// Manifest file and line, for error messages.
    public var file: String?
    public var line: Int?

    public init(path: String, mode: UInt32, kind: Kind, file: String? = nil, line: Int? = nil) {
        self.path = path
        self.mode = mode
        self.kind = kind
        self.file = file
        self.line = line
    }

    func error(_ message: String) -> ImageError {
        ImageError(message, file: file, line: line)
    }
}

/// The rootfs manifest format (documented at the top of rootfs/manifest).
public enum Manifest {
    /// Parses manifest text; `name` labels errors and `base` resolves relative `file` sources.
    public static func parse(_ text: String, name: String, base: String) throws(ImageError) -> [Entry] {
        var entries: [Entry] = []
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = index + 1
            func fail(_ message: String) -> ImageError { ImageError(message, file: name, line: line) }
            // A word starting with # comments out the rest of the line.
            let words = rawLine.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
                .prefix(while: { !$0.hasPrefix("#") }).map(String.init)
            guard let type = words.first else { continue }
            let expected = ["dir": 3, "file": 4, "symlink": 3, "nod": 6]
            guard let count = expected[type] else {
                throw fail("unknown entry type '\(type)' (expected dir, file, symlink or nod)")
            }
            guard words.count == count else {
                throw fail("'\(type)' takes \(count - 1) fields, found \(words.count - 1): \(words.joined(separator: " "))")
            }
            let path = words[1]
            guard isNormalizedAbsolute(path) else {
                throw fail("path '\(path)' must be absolute and normalized (no '.', '..', '//' or trailing '/'), and not '/'")
            }
            func mode(_ word: String) throws(ImageError) -> UInt32 {
                guard word.count <= 5, let value = UInt32(word, radix: 8), value <= 0o7777 else {
                    throw fail("bad mode '\(word)' (expected octal such as 0755)")
                }
                return value
            }
            let entry: Entry
            switch type {
            case "dir":
                entry = Entry(path: path, mode: try mode(words[2]), kind: .directory)
            case "file":
                let source = words[3].hasPrefix("/") ? words[3] : base + "/" + words[3]
                entry = Entry(path: path, mode: try mode(words[2]), kind: .file(source: source))
            case "symlink":
                entry = Entry(path: path, mode: 0o777, kind: .symlink(target: words[2]))
            default:  // nod
                guard words[3] == "c" || words[3] == "b" else { throw fail("device type must be 'c' or 'b', not '\(words[3])'") }
                // The kernel's dev_t holds a 12-bit major and a 20-bit minor.
                guard let major = UInt32(words[4]), major < 1 << 12, let minor = UInt32(words[5]), minor < 1 << 20 else {
                    throw fail("bad device number '\(words[4]) \(words[5])'")
                }
                entry = Entry(path: path, mode: try mode(words[2]), kind: .device(block: words[3] == "b", major: major, minor: minor))
            }
            entries.append(Entry(path: entry.path, mode: entry.mode, kind: entry.kind, file: name, line: line))
        }
        return entries
    }

    /// Sorts entries by path bytes, which puts every directory before its contents (a path sorts
    /// before any path it prefixes) and makes the archive order independent of the manifest's;
    /// rejects duplicates and entries whose parent is not a declared directory, because the
    /// kernel's unpacker does not create missing parents.
    public static func sortedAndChecked(_ entries: [Entry]) throws(ImageError) -> [Entry] {
        let sorted = entries.sorted { $0.path.utf8.lexicographicallyPrecedes($1.path.utf8) }
        var directories: Set<String> = ["/"]
        var previous: Entry?
        for entry in sorted {
            if let previous, previous.path == entry.path {
                let other = previous.line.map { " (also at line \($0))" } ?? ""
                throw entry.error("duplicate path \(entry.path)\(other)")
            }
            let parent = String(entry.path[..<entry.path.lastIndex(of: "/")!])
            guard directories.contains(parent.isEmpty ? "/" : parent) else {
                throw entry.error("\(entry.path): parent directory \(parent) is not declared with 'dir'")
            }
            if entry.kind == .directory { directories.insert(entry.path) }
            previous = entry
        }
        return sorted
    }

    static func isNormalizedAbsolute(_ path: String) -> Bool {
        guard path.hasPrefix("/"), path.count > 1 else { return false }
        return path.dropFirst().split(separator: "/", omittingEmptySubsequences: false).allSatisfy { !["", ".", ".."].contains($0) }
    }
}
