// swift-tools-version:6.0
import PackageDescription

// Arrows point one way: CVessel -> VesselLinux -> VesselProtocol -> VesselAgent -> vessel-agent.
let package = Package(
    name: "Vessel",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "vessel-agent", targets: ["vessel-agent"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    ],
    targets: [
        // Syscalls Swift cannot call cleanly: clone with namespace flags, fork+exec, ioctls, PID-1 early setup.
        .target(name: "CVessel"),
        .target(
            name: "VesselLinux",
            dependencies: ["CVessel"]
        ),
        .target(
            name: "VesselProtocol",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: ["Generated/README.md"]
        ),
        .target(
            name: "VesselAgent",
            dependencies: [
                "CVessel", "VesselLinux", "VesselProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(name: "vessel-agent", dependencies: ["VesselAgent"]),
        .testTarget(
            name: "VesselProtocolTests",
            dependencies: [
                "VesselProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .testTarget(
            name: "VesselAgentTests",
            dependencies: [
                "VesselAgent", "VesselProtocol", "VesselLinux",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
