import Foundation
import VesselContainerd
import VesselLinux
import VesselOCI

// One binary, two front doors: runc's command line as `vessel`, containerd's shim v2 as
// `containerd-shim-vessel-v2` (a link to it).
let arguments = CommandLine.arguments
if URL(fileURLWithPath: arguments.first ?? "").lastPathComponent == ContainerdShim.binaryName {
    exit(Linux.runMain(takingSignals: ContainerdShim.signals(arguments)) { await ContainerdShim.main(arguments, signals: $0) })
}
exit(Linux.runMain(takingSignals: CLI.signals(arguments)) { await CLI.main(arguments, signals: $0) })
