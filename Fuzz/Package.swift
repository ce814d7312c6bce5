// swift-tools-version:6.1
import PackageDescription

// libFuzzer targets for the code that parses bytes from the guest, the agent, QEMU and config files.
// A package of its own so the sanitizer flags never reach the main build; `make fuzz` builds it with
// --sanitize=fuzzer --sanitize=address and -enable-testing (the harnesses reach internal entry points
// through @testable imports). One executable per target; seeds in Corpus/<target>/.
let package = Package(
    name: "VesselFuzz",
    dependencies: [
        // `name:` keeps `package: "Vessel"` valid whatever the checkout's directory is called.
        .package(name: "Vessel", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0", traits: []),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    ],
    targets: [
        .target(name: "FuzzSupport"),
        .executableTarget(
            name: "fuzz-ttrpc",
            dependencies: [
                "FuzzSupport",
                .product(name: "VesselProtocol", package: "Vessel"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .executableTarget(
            name: "fuzz-vhost-user",
            dependencies: [
                "FuzzSupport",
                .product(name: "VesselLinux", package: "Vessel"),
                .product(name: "VesselVsock", package: "Vessel"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "fuzz-virtqueue",
            dependencies: ["FuzzSupport", .product(name: "VesselVsock", package: "Vessel")]
        ),
        .executableTarget(
            name: "fuzz-vsock-device",
            dependencies: [
                "FuzzSupport",
                .product(name: "VesselLinux", package: "Vessel"),
                .product(name: "VesselVsock", package: "Vessel"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "fuzz-oci-spec",
            dependencies: [
                "FuzzSupport",
                .product(name: "VesselCore", package: "Vessel"),
                .product(name: "VesselProtocol", package: "Vessel"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .executableTarget(
            name: "fuzz-config-toml",
            dependencies: ["FuzzSupport", .product(name: "VesselCore", package: "Vessel")]
        ),
        .executableTarget(
            name: "fuzz-netlink",
            dependencies: ["FuzzSupport", .product(name: "VesselLinux", package: "Vessel")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
