import Foundation
import VesselImage

// Builds the guest initrd: rootfs/ plus the static agent as /init, as a compressed newc cpio.

let usage = "usage: vessel-image --agent PATH --rootfs DIR --output FILE [--compress zstd|gzip|none] [--debug]"

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("vessel-image: \(message)\n".utf8))
    exit(1)
}

var options: [String: String] = [:]
var debug = false
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    switch argument {
    case "--debug": debug = true
    case "-h", "--help":
        print(usage)
        exit(0)
    case "--agent", "--rootfs", "--output", "--compress":
        guard let value = arguments.popFirst() else { fail("\(argument) needs a value; \(usage)") }
        options[argument] = value
    default: fail("unknown argument '\(argument)'; \(usage)")
    }
}
guard let agent = options["--agent"], let rootfs = options["--rootfs"], let output = options["--output"] else {
    fail("--agent, --rootfs and --output are required; \(usage)")
}
guard let compression = Compression(rawValue: options["--compress"] ?? "zstd") else {
    fail("unknown compression '\(options["--compress"]!)' (expected zstd, gzip or none)")
}

do {
    let mtime = try ImageBuilder.mtime(environment: ProcessInfo.processInfo.environment)
    let builder = ImageBuilder(agent: agent, rootfs: rootfs, debug: debug, mtime: mtime)
    print(try builder.build(output: output, compression: compression).summary)
} catch {
    fail(error.description)
}
