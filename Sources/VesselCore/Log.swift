import Foundation

/// runc's --log / --log-format: one line per message (text or JSON) appended to the log file;
/// errors also go to stderr, where callers without --log look.
public final class RuntimeLog: @unchecked Sendable {
    // @unchecked: appends are single write(2)s on an O_APPEND fd.
    public enum Format: String, Sendable { case text, json }
    let fd: Int32
    let format: Format
    public let debugEnabled: Bool

    public init(path: String?, format: Format, debug: Bool) {
        fd = path.map { open($0, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640) } ?? -1
        self.format = format
        debugEnabled = debug
    }

    public func error(_ message: String) {
        emit("error", message)
        FileHandle.standardError.write(Data((message + "\n").utf8))
    }

    public func warning(_ message: String) {
        emit("warning", message)
        if fd < 0 { FileHandle.standardError.write(Data(("warning: " + message + "\n").utf8)) }
    }

    public func info(_ message: String) { emit("info", message) }

    public func debug(_ message: String) { if debugEnabled { emit("debug", message) } }

    private func emit(_ level: String, _ message: String) {
        guard fd >= 0 else { return }
        let time = rfc3339Now()
        let line: String
        switch format {
        case .json:
            let object = ["level": level, "msg": message, "time": time]
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
            line = String(decoding: data, as: UTF8.self) + "\n"
        case .text:
            line = "time=\"\(time)\" level=\(level) msg=\"\(message.replacingOccurrences(of: "\"", with: "\\\""))\"\n"
        }
        _ = line.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
    }
}
