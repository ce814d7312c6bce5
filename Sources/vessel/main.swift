import Foundation
import VesselRuntime

// Global flags come before the command, as with runc.
var tokens = Array(CommandLine.arguments.dropFirst())
var globalTokens: [String] = []
while let first = tokens.first, first.hasPrefix("-"), !["-v", "--version", "-h", "--help"].contains(first) {
    globalTokens.append(tokens.removeFirst())
    let takesValue = ["--root", "-root", "--log", "-log", "--log-format", "-log-format", "--config", "-config", "--criu", "--rootless"]
    if takesValue.contains(first), let value = tokens.first { globalTokens.append(value); tokens.removeFirst() }
}
let command = tokens.first ?? "help"
let commandArguments = Array(tokens.dropFirst())

let status: Int32
do throws(RuntimeError) {
    let global = try Arguments(globalTokens, flags: ["debug", "systemd-cgroup"],
                               options: ["root", "log", "log-format", "config", "criu", "rootless"])
    let format = RuntimeLog.Format(rawValue: global.option("log-format") ?? "text")
    guard let format else { throw RuntimeError("invalid log format \"\(global.option("log-format") ?? "")\": use text or json") }
    let log = RuntimeLog(path: global.option("log"), format: format, debug: global.flag("debug"))
    do throws(RuntimeError) {
        status = try await CLI(global: global, globalTokens: globalTokens, log: log).run(command, commandArguments)
    } catch {
        log.error(error.message)
        status = error.exitCode
    }
} catch {
    FileHandle.standardError.write(Data((error.message + "\n").utf8))
    status = 1
}
exit(status)
