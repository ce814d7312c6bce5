import VesselProtocol
import VesselSpec

/// `linux.resources` as the cgroup files to write. Kata's proto has no "unset" for scalars, so 0
/// means "leave as is" everywhere (as Kata's agent reads it). Values follow runc's conversions.
enum CgroupResources {
    struct Write: Equatable, CustomStringConvertible {
        var file: String
        var value: String
        var description: String { "\(file)=\(value)" }
    }

    /// cgroup v2 (the guest). `skipped` names what v2 cannot express.
    static func v2(_ r: Grpc_LinuxResources) -> (writes: [Write], skipped: [String]) {
        var writes: [Write] = [], skipped: [String] = []
        if r.hasMemory {
            let m = r.memory
            if m.limit != 0 { writes.append(Write(file: "memory.max", value: max(m.limit))) }
            if m.reservation != 0 { writes.append(Write(file: "memory.low", value: max(m.reservation))) }
            if m.swap != 0 {
                // OCI's swap is memory+swap; v2's swap.max is the swap alone.
                let swap = m.swap < 0 ? "max" : m.limit > 0 ? String(Swift.max(m.swap - m.limit, 0)) : String(m.swap)
                writes.append(Write(file: "memory.swap.max", value: swap))
            }
            if m.kernel != 0 || m.kernelTcp != 0 { skipped.append("memory.kernel/kernelTCP (no cgroup v2 equivalent)") }
            if m.swappiness != 0 { skipped.append("memory.swappiness (no cgroup v2 equivalent)") }
            if m.disableOomkiller { skipped.append("memory.disableOOMKiller (no cgroup v2 equivalent)") }
        }
        if r.hasCpu {
            let c = r.cpu
            if c.shares != 0 { writes.append(Write(file: "cpu.weight", value: String(weight(shares: c.shares)))) }
            if c.quota != 0 || c.period != 0 {
                writes.append(Write(file: "cpu.max", value: CgroupConversion.cpuMax(quota: c.quota, period: c.period)))
            }
            if !c.cpus.isEmpty { writes.append(Write(file: "cpuset.cpus", value: c.cpus)) }
            if !c.mems.isEmpty { writes.append(Write(file: "cpuset.mems", value: c.mems)) }
            if c.realtimeRuntime != 0 || c.realtimePeriod != 0 { skipped.append("cpu.realtime* (no cgroup v2 equivalent)") }
        }
        if r.hasPids, r.pids.limit != 0 { writes.append(Write(file: "pids.max", value: max(r.pids.limit))) }
        if r.hasBlockIo {
            let b = r.blockIo
            if b.weight != 0 { writes.append(Write(file: "io.weight", value: "default \(ioWeight(b.weight))")) }
            for d in b.weightDevice where d.weight != 0 {
                writes.append(Write(file: "io.weight", value: "\(d.major):\(d.minor) \(ioWeight(d.weight))"))
            }
            for (key, list) in [
                ("rbps", b.throttleReadBpsDevice), ("wbps", b.throttleWriteBpsDevice),
                ("riops", b.throttleReadIopsdevice), ("wiops", b.throttleWriteIopsdevice),
            ] {
                for d in list {
                    writes.append(Write(file: "io.max", value: "\(d.major):\(d.minor) \(key)=\(d.rate == 0 ? "max" : String(d.rate))"))
                }
            }
        }
        if !r.hugepageLimits.isEmpty { skipped.append("hugepageLimits (the guest has no huge pages)") }
        if r.hasNetwork { skipped.append("network classID/priorities (cgroup v1 only)") }
        return (writes, skipped)
    }

    /// cgroup v1 in host mode: only what the agent's v1 controllers (memory, pids) carry.
    static func v1(_ r: Grpc_LinuxResources) -> [Write] {
        var writes: [Write] = []
        if r.hasMemory, r.memory.limit != 0 { writes.append(Write(file: "memory/memory.limit_in_bytes", value: String(r.memory.limit))) }
        if r.hasPids, r.pids.limit != 0 { writes.append(Write(file: "pids/pids.max", value: max(r.pids.limit))) }
        return writes
    }

    /// runc's mapping of cpu.shares [2, 262144] onto cpu.weight [1, 10000].
    static func weight(shares: UInt64) -> UInt64 { CgroupConversion.weight(shares: shares) }

    /// blkio weight [10, 1000] onto io.weight [1, 10000].
    static func ioWeight(_ weight: UInt32) -> UInt32 {
        let clamped = Swift.min(Swift.max(weight, 10), 1000)
        return 1 + (clamped - 10) * 9999 / 990
    }

    private static func max(_ value: Int64) -> String { value < 0 ? "max" : String(value) }
}
