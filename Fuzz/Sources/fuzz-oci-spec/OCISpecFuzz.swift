import Foundation
import FuzzSupport
import SwiftProtobuf
import VesselProtocol

@testable import VesselCore

// config.json as the caller (docker, podman, containerd, a user's bundle) writes it, and the JSON
// an exec's process and an update's resources arrive as. Invariants: whatever decodes and
// validates converts to the agent's spec, which serializes; a decoded spec encodes back to JSON
// that decodes to the same guest spec; the bundle conversion (9p share paths, /dev/shm, namespace
// paths) works on a real bundle directory for every valid spec and leaves no host path in the
// guest's root.

let bundle: String = {
    let path = NSTemporaryDirectory() + "vessel-fuzz-bundle-\(getpid())"
    try? FileManager.default.createDirectory(atPath: path + "/rootfs", withIntermediateDirectories: true)
    try? FileManager.default.createDirectory(atPath: path + "/volume", withIntermediateDirectories: true)
    return path
}()

@_cdecl("LLVMFuzzerInitialize")
public func initialize(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>
) -> CInt {
    _ = bundle
    atexit { try? FileManager.default.removeItem(atPath: bundle) }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let json = Data(bytes: data, count: size)

    if let spec = try? OCISpec.decode(OCISpec.self, json, name: "config.json") {
        let guest = spec.grpc()
        fuzzCheck((try? guest.serializedBytes() as [UInt8]) != nil, "guest spec does not serialize")
        _ = PodRole(annotations: spec.annotations ?? [:]).sandboxID(container: "c")
        if let encoded = try? JSONEncoder().encode(spec) {
            let again = try? OCISpec.decode(OCISpec.self, encoded, name: "re-encoded")
            fuzzCheck(again?.grpc() == guest, "JSON round trip changed the spec")
        }
        if (try? spec.validate("config.json")) != nil {
            fuzzCheck(FileManager.default.createFile(atPath: bundle + "/config.json", contents: json), "write bundle")
            if let converted = try? GuestBundle(bundle: bundle, container: "c") {
                fuzzCheck(converted.guestSpec.root.path == GuestBundle.guestShare + "/c/rootfs", "guest root")
                fuzzCheck(converted.guestSpec.hooks == Grpc_Hooks(), "OCI hooks passed to the guest")
                fuzzCheck(converted.guestSpec.linux.namespaces.allSatisfy { $0.path.isEmpty }, "host namespace path")
                _ = converted.networkNamespace
                _ = converted.pod
            }
        }
    }
    if let process = try? OCISpec.process(fromJSON: json, field: "process") {
        fuzzCheck(!process.args.isEmpty && process.cwd.hasPrefix("/"), "exec process accepted without args or cwd")
    }
    // `vessel update --resources` and containerd's Update.
    if let resources = try? OCISpec.decode(OCISpec.Resources.self, json, name: "resources") {
        fuzzCheck((try? resources.grpc().serializedBytes() as [UInt8]) != nil, "resources do not serialize")
    }
    return 0
}
