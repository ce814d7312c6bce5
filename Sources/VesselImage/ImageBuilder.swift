import Foundation

public enum Compression: String, CaseIterable, Sendable {
    case zstd, lz4, gzip, none

    /// The compressor's command line, reading the file named last and writing to stdout. Both are
    /// deterministic: gzip -n stores no name or timestamp, and a zstd frame depends only on the input,
    /// the level and the zstd version; in multithreaded mode (-T0) not on the thread count, unlike
    /// --single-thread (the default of a given zstd build may be either, so it is pinned). Given a
    /// file (not a pipe) zstd records the content size and fits its window to the input, which
    /// bounds what the kernel allocates to decompress it.
    var command: [String]? {
        switch self {
        case .zstd: ["/usr/bin/zstd", "-19", "-T0", "-q", "--no-progress", "-c"]
        // The kernel reads only lz4's legacy frame format (-l).
        case .lz4: ["/usr/bin/lz4", "-l", "-12", "-q", "-c"]
        case .gzip: ["/usr/bin/gzip", "-n", "-9", "-c"]
        case .none: nil
        }
    }
}

public struct BuildResult: Equatable, Sendable {
    public var output: String
    public var compressedSize: Int
    public var uncompressedSize: Int
    /// Archive entries, /init included, the trailer not.
    public var entries: Int

    public var summary: String {
        "\(output): \(compressedSize) bytes compressed, \(uncompressedSize) bytes uncompressed, \(entries) entries"
    }
}

/// Builds the initrd: the rootfs manifest's entries plus the agent as /init, in one newc cpio.
public struct ImageBuilder: Sendable {
    public var agent: String
    public var rootfs: String
    /// Adds rootfs/manifest.debug (busybox and a few applets).
    public var debug: Bool
    public var mtime: UInt32

    public init(agent: String, rootfs: String, debug: Bool = false, mtime: UInt32 = 0) {
        self.agent = agent
        self.rootfs = rootfs
        self.debug = debug
        self.mtime = mtime
    }

    /// SOURCE_DATE_EPOCH if set (the reproducible-builds convention), else 0.
    public static func mtime(environment: [String: String]) throws(ImageError) -> UInt32 {
        guard let value = environment["SOURCE_DATE_EPOCH"] else { return 0 }
        guard let epoch = UInt32(value) else { throw ImageError("SOURCE_DATE_EPOCH '\(value)' is not a number of seconds") }
        return epoch
    }

    /// The manifest entries (plus the debug ones) and /init, sorted and checked.
    public func entries() throws(ImageError) -> [Entry] {
        var entries = try manifest("manifest")
        if debug { entries += try manifest("manifest.debug") }
        if let taken = entries.first(where: { $0.path == "/init" }) {
            throw taken.error("/init is reserved for the agent (--agent)")
        }
        entries.append(Entry(path: "/init", mode: 0o755, kind: .file(source: agent)))
        return try Manifest.sortedAndChecked(entries)
    }

    /// The uncompressed archive.
    public func archive() throws(ImageError) -> (bytes: [UInt8], entries: Int) {
        var writer = CPIOWriter(mtime: mtime)
        for entry in try entries() {
            let name = String(entry.path.dropFirst())
            switch entry.kind {
            case .directory:
                try writer.append(name: name, type: .directory, permissions: entry.mode)
            case .file(let source):
                let contents = try readRegularFile(source, what: entry.line == nil ? "agent" : "\(entry.path): source", entry)
                try writer.append(name: name, type: .regular, permissions: entry.mode, contents: contents)
            case .symlink(let target):
                try writer.append(name: name, type: .symlink, permissions: 0o777, contents: Array(target.utf8))
            case .device(let block, let major, let minor):
                try writer.append(
                    name: name, type: block ? .blockDevice : .characterDevice, permissions: entry.mode, rdevMajor: major, rdevMinor: minor)
            }
        }
        let count = writer.count
        return (writer.finish(), count)
    }

    /// Writes the compressed archive to `output` atomically: everything goes to temporary files
    /// next to it, renamed into place only once complete, so a failure leaves no partial initrd.
    public func build(output: String, compression: Compression = .lz4) throws(ImageError) -> BuildResult {
        let (bytes, count) = try archive()
        let url = URL(fileURLWithPath: output)
        let directory = url.deletingLastPathComponent().path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ImageError("output directory \(directory) does not exist")
        }
        let temporary = directory + "/.\(url.lastPathComponent).\(getpid()).tmp"
        let uncompressed = temporary + ".cpio"
        defer {
            unlink(temporary)
            unlink(uncompressed)
        }
        if let command = compression.command {
            try write(bytes, to: uncompressed)
            try run(command + [uncompressed], stdout: temporary)
        } else {
            try write(bytes, to: temporary)
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: temporary)[.size] as? Int) ?? 0
        guard rename(temporary, output) == 0 else {
            throw ImageError("cannot rename \(temporary) to \(output): \(String(cString: strerror(errno)))")
        }
        return BuildResult(output: output, compressedSize: size, uncompressedSize: bytes.count, entries: count)
    }

    private func manifest(_ name: String) throws(ImageError) -> [Entry] {
        let path = rootfs + "/" + name
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw ImageError("rootfs manifest \(path): cannot read (no such file, or not UTF-8)")
        }
        return try Manifest.parse(text, name: path, base: rootfs)
    }

    private func readRegularFile(_ path: String, what: String, _ entry: Entry) throws(ImageError) -> [UInt8] {
        var isDirectory: ObjCBool = false
        func fail(_ reason: String) -> ImageError { entry.error("\(what) \(path): \(reason)") }
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { throw fail("no such file") }
        guard !isDirectory.boolValue else { throw fail("is a directory") }
        guard let data = FileManager.default.contents(atPath: path) else { throw fail("cannot read") }
        return Array(data)
    }

    private func write(_ bytes: [UInt8], to path: String) throws(ImageError) {
        do {
            try Data(bytes).write(to: URL(fileURLWithPath: path))
        } catch {
            throw ImageError("cannot write \(path): \(error.localizedDescription)")
        }
    }

    private func run(_ command: [String], stdout path: String) throws(ImageError) {
        guard FileManager.default.isExecutableFile(atPath: command[0]) else {
            throw ImageError("\(command[0]) not found (apt-get install -y \(URL(fileURLWithPath: command[0]).lastPathComponent))")
        }
        guard FileManager.default.createFile(atPath: path, contents: nil), let output = FileHandle(forWritingAtPath: path) else {
            throw ImageError("cannot write \(path)")
        }
        defer { try? output.close() }
        let process = Process()
        let errors = Pipe()
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = output
        process.standardError = errors
        do { try process.run() } catch { throw ImageError("cannot run \(command[0]): \(error.localizedDescription)") }
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            let detail = message.split(separator: "\n").first.map { ": \($0)" } ?? ""
            throw ImageError("\(command.dropLast().joined(separator: " ")) failed with status \(process.terminationStatus)\(detail)")
        }
    }
}
