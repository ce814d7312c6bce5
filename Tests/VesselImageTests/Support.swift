import Foundation

let repoRootfs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("rootfs").path

func installed(_ tool: String) -> Bool { FileManager.default.isExecutableFile(atPath: "/usr/bin/" + tool) }

func write(_ text: String, to path: String) throws {
    try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try Data(text.utf8).write(to: URL(fileURLWithPath: path))
}

/// A stand-in agent: 64 KiB of fixed pseudo-random bytes, so compression has something to do.
func fakeAgent(in directory: String) throws -> String {
    var state: UInt32 = 12345
    let bytes = (0..<65536).map { _ -> UInt8 in
        state = state &* 1_103_515_245 &+ 12345
        return UInt8(truncatingIfNeeded: state >> 16)
    }
    let path = directory + "/agent"
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    return path
}
