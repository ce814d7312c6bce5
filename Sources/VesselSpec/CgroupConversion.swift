/// runc's conversions between cgroup v1 and v2 values, for the guest's cgroups and the host's.
public enum CgroupConversion {
    /// cpu.shares [2, 262144] onto cpu.weight [1, 10000].
    public static func weight(shares: UInt64) -> UInt64 {
        let clamped = Swift.min(Swift.max(shares, 2), 262_144)
        return 1 + ((clamped - 2) * 9999) / 262_142
    }
}
