/// Writes a newc ("070701") cpio archive, the only format the kernel's initramfs unpacker reads
/// (init/initramfs.c): a 110-byte ASCII header of 13 hex fields, the NUL-terminated name, the data,
/// with name and data each padded so the next field starts on a 4-byte boundary.
public struct CPIOWriter {
    public enum FileType: UInt32, Sendable {
        case directory = 0o040000
        case regular = 0o100000
        case symlink = 0o120000
        case characterDevice = 0o020000
        case blockDevice = 0o060000
    }

    public private(set) var bytes: [UInt8] = []
    /// Entries appended so far, not counting the trailer.
    public private(set) var count = 0
    private let mtime: UInt32
    // Sequential inodes in append order: unique, so the kernel never mistakes two files for hard links.
    private var nextInode: UInt32 = 1

    public init(mtime: UInt32 = 0) {
        self.mtime = mtime
    }

    /// Appends one entry. `name` is stored as given (no leading slash, like `find . | cpio -o`);
    /// `contents` is the file data or, for a symlink, its target.
    public mutating func append(
        name: String, type: FileType, permissions: UInt32, contents: [UInt8] = [], rdevMajor: UInt32 = 0, rdevMinor: UInt32 = 0
    ) throws(ImageError) {
        guard contents.count <= Int(UInt32.max) else { throw ImageError("\(name): \(contents.count) bytes does not fit a cpio entry") }
        // nlink 2 for directories, 1 otherwise, as the kernel's usr/gen_init_cpio writes them.
        header(
            inode: nextInode, mode: type.rawValue | (permissions & 0o7777), nlink: type == .directory ? 2 : 1,
            size: UInt32(contents.count), rdevMajor: rdevMajor, rdevMinor: rdevMinor, name: name)
        bytes += contents
        pad()
        nextInode += 1
        count += 1
    }

    /// Appends the TRAILER!!! entry that ends the archive and returns the archive.
    public mutating func finish() -> [UInt8] {
        header(inode: 0, mode: 0, nlink: 1, size: 0, rdevMajor: 0, rdevMinor: 0, name: "TRAILER!!!")
        return bytes
    }

    private mutating func header(
        inode: UInt32, mode: UInt32, nlink: UInt32, size: UInt32, rdevMajor: UInt32, rdevMinor: UInt32, name: String
    ) {
        let name = Array(name.utf8) + [0]
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        let fields: [UInt32] = [inode, mode, 0, 0, nlink, mtime, size, 0, 0, rdevMajor, rdevMinor, UInt32(name.count), 0]
        bytes += Array("070701".utf8)
        for field in fields {
            let hex = String(field, radix: 16, uppercase: true)
            bytes += Array(String(repeating: "0", count: 8 - hex.count).utf8) + Array(hex.utf8)
        }
        bytes += name
        pad()
    }

    private mutating func pad() {
        bytes += [UInt8](repeating: 0, count: (4 - bytes.count % 4) % 4)
    }
}
