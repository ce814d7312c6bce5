import Foundation
import SwiftProtobuf
import VesselCore
import VesselProtocol
import VesselSpec

/// runc's `events` JSON and `update` flags.
enum Stats {
    /// containerd's cgroup v2 metrics (what the owner's Stats returns) in runc's events shape.
    static func event(id: String, _ any: Google_Protobuf_Any) throws(RuntimeError) -> JSON {
        guard any.typeURL == Io_Containerd_Cgroups_V2_Metrics.protoMessageName,
            let metrics = try? Io_Containerd_Cgroups_V2_Metrics(serializedBytes: any.value)
        else {
            throw RuntimeError("stats of \(id): unexpected metrics type \(any.typeURL)")
        }
        let n = { (value: UInt64) in JSON.int(Int(clamping: value)) }
        let data: JSON = [
            "cpu": [
                "usage": [
                    "total": n(metrics.cpu.usageUsec * 1000), "kernel": n(metrics.cpu.systemUsec * 1000),
                    "user": n(metrics.cpu.userUsec * 1000),
                ],
                "throttling": [
                    "periods": n(metrics.cpu.nrPeriods), "throttledPeriods": n(metrics.cpu.nrThrottled),
                    "throttledTime": n(metrics.cpu.throttledUsec * 1000),
                ],
            ],
            "memory": [
                "cache": n(metrics.memory.file),
                "usage": ["usage": n(metrics.memory.usage), "limit": n(metrics.memory.usageLimit)],
                "raw": [
                    "anon": n(metrics.memory.anon), "file": n(metrics.memory.file), "inactive_file": n(metrics.memory.inactiveFile),
                    "active_file": n(metrics.memory.activeFile), "pgfault": n(metrics.memory.pgfault),
                    "pgmajfault": n(metrics.memory.pgmajfault),
                ],
            ],
            "pids": ["current": n(metrics.pids.current), "limit": n(metrics.pids.limit)],
        ]
        return ["type": "stats", "id": .string(id), "data": data]
    }

    /// "512m", "1g", "4096" -> bytes.
    static func bytes(_ text: String, flag: String) throws(RuntimeError) -> Int64 {
        let units: [Character: Int64] = ["k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40]
        var digits = text.lowercased()
        if digits.hasSuffix("b") { digits.removeLast() }
        var multiplier: Int64 = 1
        if let last = digits.last, let unit = units[last] {
            multiplier = unit
            digits.removeLast()
        }
        if text == "-1" { return -1 }
        guard let value = Int64(digits), value >= 0 else { throw RuntimeError("--\(flag) \"\(text)\": expected a size like 512m") }
        return value * multiplier
    }

    /// From `--resources FILE` (OCI linux.resources JSON, "-" = stdin) or the individual flags.
    static func resources(file: String?, flags: [String: String]) throws(RuntimeError) -> OCISpec.Resources {
        var resources = OCISpec.Resources()
        if let file {
            let data = file == "-" ? FileHandle.standardInput.readDataToEndOfFile() : FileManager.default.contents(atPath: file)
            guard let data else { throw RuntimeError("--resources \(file): cannot read file") }
            resources = try OCISpec.decode(OCISpec.Resources.self, data, name: "--resources \(file)")
        }
        func int(_ flag: String) throws(RuntimeError) -> Int64? {
            guard let text = flags[flag] else { return nil }
            guard let value = Int64(text) else { throw RuntimeError("--\(flag) \"\(text)\": expected a number") }
            return value
        }
        var memory = resources.memory ?? OCISpec.Memory()
        if let text = flags["memory"] { memory.limit = try bytes(text, flag: "memory") }
        if let text = flags["memory-swap"] { memory.swap = try bytes(text, flag: "memory-swap") }
        if let text = flags["memory-reservation"] { memory.reservation = try bytes(text, flag: "memory-reservation") }
        var cpu = resources.cpu ?? OCISpec.CPU()
        if let quota = try int("cpu-quota") { cpu.quota = quota }
        if let period = try int("cpu-period") { cpu.period = UInt64(max(0, period)) }
        if let shares = try int("cpu-shares") { cpu.shares = UInt64(max(0, shares)) }
        if let cpus = flags["cpuset-cpus"] { cpu.cpus = cpus }
        if let mems = flags["cpuset-mems"] { cpu.mems = mems }
        if let pids = try int("pids-limit") { resources.pids = OCISpec.Pids(limit: pids) }
        resources.memory = memory
        resources.cpu = cpu
        return resources
    }
}
