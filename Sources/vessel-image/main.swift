import ArgumentParser
import Foundation
import VesselImage

extension Compression: ExpressibleByArgument {}

struct VesselImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vessel-image",
        abstract: "Builds the guest initrd: rootfs/ plus the static agent as /init, as a compressed newc cpio.")

    @Option(help: "The static agent binary, packed as /init.") var agent: String
    @Option(help: "The rootfs directory with its manifest.") var rootfs: String
    @Option(help: "The initrd to write.") var output: String
    @Option(help: "lz4 (the fastest to unpack under TCG), zstd, gzip or none.") var compress: Compression = .lz4
    @Flag(help: "Also pack the debug tools (busybox).") var debug = false

    func run() throws {
        do {
            let mtime = try ImageBuilder.mtime(environment: ProcessInfo.processInfo.environment)
            let builder = ImageBuilder(agent: agent, rootfs: rootfs, debug: debug, mtime: mtime)
            print(try builder.build(output: output, compression: compress).summary)
        } catch {
            FileHandle.standardError.write(Data("vessel-image: \(error.description)\n".utf8))
            throw ExitCode.failure
        }
    }
}

VesselImageCommand.main()
