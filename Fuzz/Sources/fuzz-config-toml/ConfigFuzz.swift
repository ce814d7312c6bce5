import FuzzSupport

@testable import VesselCore

// /etc/vessel/configuration.toml (or --config, $VESSEL_CONFIG). Invariants: a configuration that
// parses and validates writes itself back out (`vessel env`) as TOML that parses to the same values.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    guard let config = try? RuntimeConfig.parse(text, name: "fuzz.toml") else { return 0 }
    let written = config.toml()
    do {
        let again = try RuntimeConfig.parse(written, name: "written")
        fuzzCheck(again == config, "TOML round trip changed the configuration:\n\(written)")
    } catch {
        fuzzCheck(false, "the written configuration does not parse: \(error)\n\(written)")
    }
    return 0
}
