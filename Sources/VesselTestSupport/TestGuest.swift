import Foundation

/// The guest the VM tests boot, found one way for every suite: what `make test` names in
/// VESSEL_KERNEL, VESSEL_INITRD and VESSEL_DEBUG_INITRD (a file that is not readable counts as
/// absent). A kernel can also come from the build cache, so a plain `swift test` after
/// `make kernel` still runs the suites that need no initrd; suites skip what is missing.
public enum TestGuest {
    public static let kernel: String? = readable("VESSEL_KERNEL") ?? cachedKernel()
    public static let initrd: String? = readable("VESSEL_INITRD")
    public static let debugInitrd: String? = readable("VESSEL_DEBUG_INITRD")

    private static func readable(_ variable: String) -> String? {
        guard let path = ProcessInfo.processInfo.environment[variable], !path.isEmpty, access(path, R_OK) == 0 else { return nil }
        return path
    }

    /// The newest kernel build-kernel.sh cached.
    private static func cachedKernel() -> String? {
        let cache = "/var/cache/vessel/kernel"
        let builds = (try? FileManager.default.contentsOfDirectory(atPath: cache)) ?? []
        return builds.map { cache + "/" + $0 + "/bzImage" }.filter { access($0, R_OK) == 0 }.max { modified($0) < modified($1) }
    }

    private static func modified(_ path: String) -> Date {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date) ?? .distantPast
    }
}
