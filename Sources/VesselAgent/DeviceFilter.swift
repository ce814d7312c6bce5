import VesselLinux
import VesselProtocol

/// A container's device rules: the spec's, between a deny-all and the defaults, as one cgroup v2
/// device program (`DeviceProgram`) on the container's cgroup.
enum DeviceFilter {
    /// Devices every container may use, appended after the spec's rules as runc does; not c 5:1:
    /// in a VM /dev/console is the guest's serial console, which ends in a file on the host (a
    /// terminal's /dev/console is its pty, 136:N). A spec that allows it explicitly still gets it.
    static let defaultAllowed: [DeviceRule] = [
        (1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2), (136, -1), (10, 200),
    ].map { DeviceRule(allow: true, kind: .char, major: $0.0, minor: $0.1) }

    /// The spec's rule; Validation refused the types and access letters it cannot mean.
    static func rule(_ rule: Grpc_LinuxDeviceCgroup) -> DeviceRule {
        DeviceRule(allow: rule.allow, kind: DeviceRule.Kind(type: rule.type), major: rule.major, minor: rule.minor, access: rule.access)
    }

    /// What neither the spec nor the defaults allow is refused (a spec without rules must not mean
    /// every device, in a guest whose devices are the VM's). Returns the program fd, which the
    /// caller keeps to detach it on replacement.
    static func attach(_ rules: [Grpc_LinuxDeviceCgroup], cgroup: String) throws(LinuxError) -> Int32 {
        try DeviceProgram.attach([.denyAll] + rules.map(rule) + defaultAllowed, cgroup: cgroup)
    }

    static func detach(_ programFD: Int32, cgroup: String) { DeviceProgram.detach(programFD, cgroup: cgroup) }
}
