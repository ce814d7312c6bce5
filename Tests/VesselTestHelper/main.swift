import Foundation
import VesselTestSupport

// `vessel-test-helper PIDFILE ARGV...`: starts ARGV the way the tests start a daemon, writes its
// pid to PIDFILE and waits to be killed (60 s at most, then it stops the daemon itself). The test
// kills this process and expects the daemon to go with it.
let arguments = CommandLine.arguments
guard arguments.count >= 3 else {
    FileHandle.standardError.write(Data("usage: vessel-test-helper PIDFILE PROGRAM [ARGUMENT...]\n".utf8))
    exit(2)
}
do {
    let daemon = try ChildProcess(Array(arguments[2...]))
    try "\(daemon.pid)".write(toFile: arguments[1], atomically: true, encoding: .utf8)
    sleep(60)
    daemon.kill()
} catch {
    FileHandle.standardError.write(Data("vessel-test-helper: \(error)\n".utf8))
    exit(1)
}
