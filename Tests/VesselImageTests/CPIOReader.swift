import Testing

/// A newc reader, independent of the writer, to check what the kernel would see.
struct CPIOEntry: Equatable {
    var name: String
    var inode: UInt32
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var nlink: UInt32
    var mtime: UInt32
    var rdevMajor: UInt32
    var rdevMinor: UInt32
    var data: [UInt8]

    var permissions: UInt32 { mode & 0o7777 }
    var type: UInt32 { mode & 0o170000 }
    var text: String { String(decoding: data, as: UTF8.self) }
}

struct CPIOFormatError: Error, CustomStringConvertible {
    var description: String
}

/// Entries up to the trailer (not included); fails on bad magic, misalignment or trailing bytes.
func readCPIO(_ bytes: [UInt8]) throws -> [CPIOEntry] {
    var entries: [CPIOEntry] = []
    var offset = 0
    func field(_ index: Int) throws -> UInt32 {
        let start = offset + 6 + index * 8
        guard let value = UInt32(String(decoding: bytes[start..<start + 8], as: UTF8.self), radix: 16) else {
            throw CPIOFormatError(description: "bad hex field \(index) at \(offset)")
        }
        return value
    }
    func aligned(_ n: Int) -> Int { (n + 3) & ~3 }
    while true {
        guard offset % 4 == 0, offset + 110 <= bytes.count else {
            throw CPIOFormatError(description: "truncated or misaligned header at \(offset)")
        }
        guard String(decoding: bytes[offset..<offset + 6], as: UTF8.self) == "070701" else {
            throw CPIOFormatError(description: "bad magic at \(offset)")
        }
        let size = Int(try field(6))
        let nameSize = Int(try field(11))
        guard try field(12) == 0, try field(7) == 0, try field(8) == 0 else {
            throw CPIOFormatError(description: "nonzero check or dev at \(offset)")
        }
        let nameStart = offset + 110
        guard nameSize > 0, bytes[nameStart + nameSize - 1] == 0 else {
            throw CPIOFormatError(description: "name not NUL-terminated at \(offset)")
        }
        let name = String(decoding: bytes[nameStart..<nameStart + nameSize - 1], as: UTF8.self)
        let dataStart = aligned(nameStart + nameSize)
        guard bytes[nameStart + nameSize..<dataStart].allSatisfy({ $0 == 0 }) else {
            throw CPIOFormatError(description: "nonzero name padding")
        }
        if name == "TRAILER!!!" {
            guard dataStart == bytes.count else { throw CPIOFormatError(description: "\(bytes.count - dataStart) bytes after the trailer") }
            return entries
        }
        entries.append(
            CPIOEntry(
                name: name, inode: try field(0), mode: try field(1), uid: try field(2), gid: try field(3), nlink: try field(4),
                mtime: try field(5), rdevMajor: try field(9), rdevMinor: try field(10), data: Array(bytes[dataStart..<dataStart + size])))
        offset = aligned(dataStart + size)
        guard bytes[(dataStart + size)..<offset].allSatisfy({ $0 == 0 }) else { throw CPIOFormatError(description: "nonzero data padding") }
    }
}
