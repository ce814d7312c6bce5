import Foundation
import VesselProtocol

public enum Signals {
    static let names: [String: Int32] = [
        "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7, "FPE": 8, "KILL": 9, "USR1": 10,
        "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15, "STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19,
        "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25, "VTALRM": 26, "PROF": 27, "WINCH": 28,
        "IO": 29, "POLL": 29, "PWR": 30, "SYS": 31,
    ]

    /// "9", "KILL", "SIGKILL" (any case) or "RTMIN+3".
    public static func parse(_ text: String) throws(RuntimeError) -> Int32 {
        if let number = Int32(text), (1...64).contains(number) { return number }
        var name = text.uppercased()
        if name.hasPrefix("SIG") { name.removeFirst(3) }
        if let number = names[name] { return number }
        if name.hasPrefix("RTMIN+"), let n = Int32(name.dropFirst(6)), 34 + n <= 64 { return 34 + n }
        if name == "RTMIN" { return 34 }
        throw RuntimeError("unknown signal \"\(text)\"")
    }
}

/// runc's `events` JSON and `update` flags.
public enum Stats {
    public static func event(id: String, _ stats: Grpc_StatsContainerResponse) -> [String: Any] {
        let cg = stats.cgroupStats
        let cpu = cg.cpuStats.cpuUsage
        let memory = cg.memoryStats
        let data: [String: Any] = [
            "cpu": ["usage": ["total": cpu.totalUsage, "percpu": cpu.percpuUsage, "kernel": cpu.usageInKernelmode, "user": cpu.usageInUsermode]],
            "memory": ["cache": memory.cache,
                       "usage": ["usage": memory.usage.usage, "max": memory.usage.maxUsage, "failcnt": memory.usage.failcnt,
                                 "limit": memory.usage.limit],
                       "raw": memory.stats],
            "pids": ["current": cg.pidsStats.current, "limit": cg.pidsStats.limit],
        ]
        return ["type": "stats", "id": id, "data": data]
    }

    /// "512m", "1g", "4096" -> bytes.
    public static func bytes(_ text: String, flag: String) throws(RuntimeError) -> Int64 {
        let units: [Character: Int64] = ["k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40]
        var digits = text.lowercased()
        if digits.hasSuffix("b") { digits.removeLast() }
        var multiplier: Int64 = 1
        if let last = digits.last, let unit = units[last] { multiplier = unit; digits.removeLast() }
        if text == "-1" { return -1 }
        guard let value = Int64(digits), value >= 0 else { throw RuntimeError("--\(flag) \"\(text)\": expected a size like 512m") }
        return value * multiplier
    }

    /// From `--resources FILE` (OCI linux.resources JSON, "-" = stdin) or the individual flags.
    public static func resources(file: String?, flags: [String: String]) throws(RuntimeError) -> Grpc_LinuxResources {
        var resources = Grpc_LinuxResources()
        if let file {
            let data = file == "-" ? FileHandle.standardInput.readDataToEndOfFile() : FileManager.default.contents(atPath: file)
            guard let data else { throw RuntimeError("--resources \(file): cannot read file") }
            do {
                resources = try JSONDecoder().decode(OCISpec.Resources.self, from: data).grpc()
            } catch let error as DecodingError {
                throw RuntimeError("--resources \(file): \(describe(error))")
            } catch {
                throw RuntimeError("--resources \(file): \(error)")
            }
        }
        func int(_ flag: String) throws(RuntimeError) -> Int64? {
            guard let text = flags[flag] else { return nil }
            guard let value = Int64(text) else { throw RuntimeError("--\(flag) \"\(text)\": expected a number") }
            return value
        }
        if let text = flags["memory"] { resources.memory.limit = try bytes(text, flag: "memory") }
        if let text = flags["memory-swap"] { resources.memory.swap = try bytes(text, flag: "memory-swap") }
        if let text = flags["memory-reservation"] { resources.memory.reservation = try bytes(text, flag: "memory-reservation") }
        if let quota = try int("cpu-quota") { resources.cpu.quota = quota }
        if let period = try int("cpu-period") { resources.cpu.period = UInt64(max(0, period)) }
        if let shares = try int("cpu-shares") { resources.cpu.shares = UInt64(max(0, shares)) }
        if let cpus = flags["cpuset-cpus"] { resources.cpu.cpus = cpus }
        if let mems = flags["cpuset-mems"] { resources.cpu.mems = mems }
        if let pids = try int("pids-limit") { resources.pids.limit = pids }
        return resources
    }
}
