/// runc's conversions between cgroup v1 and v2 values, for the guest's cgroups and the host's.
public enum CgroupConversion {
    /// cpu.shares [2, 262144] onto cpu.weight [1, 10000].
    public static func weight(shares: UInt64) -> UInt64 {
        let clamped = Swift.min(Swift.max(shares, 2), 262_144)
        return 1 + ((clamped - 2) * 9999) / 262_142
    }

    /// The CFS period when none is given (the kernel's default).
    public static let defaultPeriod: UInt64 = 100_000

    /// cgroup v2 cpu.max from OCI's quota and period; a quota of 0 or less is no limit.
    public static func cpuMax(quota: Int64, period: UInt64) -> String {
        "\(quota > 0 ? String(quota) : "max") \(period == 0 ? defaultPeriod : period)"
    }
}
