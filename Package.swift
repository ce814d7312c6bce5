// swift-tools-version:6.1
import PackageDescription

// Arrows point one way (a module imports only what its arrows come from):
//   CVessel, CSeccomp -> VesselLinux (syscalls, mounts, rtnetlink, spawn, seccomp, epoll) -> VesselVM (QEMU), VesselVsock
//   (VesselLinux is the only module that imports C)
//   VesselProtocol (ttrpc, generated protobuf, method tables) -> VesselAgentClient
//   VesselLinux + VesselProtocol -> VesselSpec (OCI spec rules, guest and host)
//   guest: VesselSpec -> VesselAgent -> vessel-agent (C only through VesselLinux, libseccomp too)
//   host:  VesselSpec -> VesselCore (config, bundles, records, hooks, host cgroups)
//          -> VesselSandbox (the owner: QEMU, vsock backend, agent client) -> VesselOCI + VesselContainerd -> vessel
//   tests: VesselLinux -> VesselTestSupport -> VesselDevSupport and every test target
let package = Package(
    name: "Vessel",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "vessel-agent", targets: ["vessel-agent"]),
        .executable(name: "vessel-dev", targets: ["vessel-dev"]),
        .executable(name: "vessel-image", targets: ["vessel-image"]),
        .executable(name: "vessel-vsock", targets: ["vessel-vsock"]),
        .executable(name: "vessel", targets: ["vessel"]),
        // For the fuzzers in Fuzz/, a package of their own that depends on this one by path (so the
        // sanitizer builds never touch this package's .build).
        .library(name: "VesselLinux", targets: ["VesselLinux"]),
        .library(name: "VesselProtocol", targets: ["VesselProtocol"]),
        .library(name: "VesselVsock", targets: ["VesselVsock"]),
        .library(name: "VesselCore", targets: ["VesselCore", "VesselVM"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        // No default traits: BinaryDelimitedStreams imports all of Foundation (34 MB of ICU data in a static agent).
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0", traits: []),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/LebJe/TOMLKit.git", from: "0.6.0"),
        // The developer tools' command lines only: vessel itself keeps runc's flag syntax.
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    ],
    targets: [
        // Syscalls Swift cannot call cleanly: clone with namespace flags, fork+exec, ioctls, epoll,
        // SCM_RIGHTS, ring atomics, PID-1 early setup. Each returns -errno on failure.
        .target(name: "CVessel"),
        // libseccomp (Debian ships libseccomp.a, so the static agent links it in).
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp", providers: [.apt(["libseccomp-dev"])]),
        .target(
            name: "VesselLinux",
            dependencies: ["CVessel", "CSeccomp"]
        ),
        .testTarget(name: "VesselLinuxTests", dependencies: ["VesselLinux", "VesselTestSupport"]),
        // What every test target shares: commands and daemons started through `spawn` (they die with
        // the test run, PR_SET_PDEATHSIG) with a bound on every wait, temporary directories, bounded
        // polls, /proc scans, Unix listeners, the guest files the VM suites boot. No Testing in it:
        // vessel-dev links it too (through VesselDevSupport's local agent).
        .target(name: "VesselTestSupport", dependencies: ["VesselLinux"]),
        .testTarget(name: "VesselTestSupportTests", dependencies: ["VesselLinux", "VesselTestSupport"]),
        // For VesselTestSupportTests: a parent to kill, whose daemon must die with it.
        .executableTarget(name: "vessel-test-helper", dependencies: ["VesselTestSupport"], path: "Tests/VesselTestHelper"),
        .target(
            name: "VesselProtocol",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: ["Generated/README.md"]
        ),
        // The rules a container spec must follow: checked in the guest and, before a boot, on the host.
        .target(name: "VesselSpec", dependencies: ["VesselLinux", "VesselProtocol"]),
        .target(
            name: "VesselAgent",
            dependencies: [
                "VesselLinux", "VesselProtocol", "VesselSpec",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(name: "vessel-agent", dependencies: ["VesselAgent"]),
        // Host side: typed agent calls, shared by the runtime, the shim, tests and benchmarks.
        .target(
            name: "VesselAgentClient",
            dependencies: [
                "VesselProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        // Development only: a local host-mode agent with a busybox rootfs (tests, demo, bench).
        .target(
            name: "VesselDevSupport",
            dependencies: [
                "VesselAgentClient", "VesselLinux", "VesselProtocol", "VesselTestSupport",
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // Hybrid vsock: a vhost-user-vsock device backend bridging guest AF_VSOCK to host Unix sockets.
        .target(
            name: "VesselVsock",
            dependencies: [
                "VesselLinux",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(name: "vessel-vsock", dependencies: ["VesselVsock"]),
        // hostile-guest.c: the attacking guest's /init, compiled by its test with gcc -static.
        .testTarget(
            name: "VesselVsockTests", dependencies: ["VesselVsock", "VesselLinux", "VesselTestSupport"],
            exclude: ["guest-init.c", "hostile-guest.c"]),
        // QEMU guests: command line, accelerator probe, console capture (host side).
        .target(name: "VesselVM", dependencies: ["VesselLinux"]),
        .testTarget(
            name: "VesselVMTests",
            dependencies: [
                "VesselVM", "VesselVsock", "VesselAgentClient", "VesselDevSupport", "VesselProtocol", "VesselLinux",
                "VesselTestSupport", .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // Host, every process: configuration, bundles -> guest spec, records, hooks, errors.
        .target(
            name: "VesselCore",
            dependencies: [
                "VesselLinux", "VesselProtocol", "VesselSpec",
                .product(name: "TOMLKit", package: "TOMLKit"),
            ]
        ),
        // Host, the sandbox owner process: QEMU + vsock backend, the agent connection, stdio
        // sessions, events; containerd's Task API for both front doors.
        .target(
            name: "VesselSandbox",
            dependencies: [
                "VesselCore", "VesselLinux", "VesselProtocol", "VesselSpec", "VesselAgentClient", "VesselVM", "VesselVsock",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        // Host, front door 1: runc's command line (docker, podman, CRI-O-style pods) and the process monitors.
        .target(
            name: "VesselOCI",
            dependencies: [
                "VesselCore", "VesselLinux", "VesselProtocol", "VesselSandbox", "VesselSpec", "VesselVM",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        // Host, front door 2: containerd's shim v2 (containerd, Kubernetes through CRI).
        .target(
            name: "VesselContainerd",
            dependencies: ["VesselCore", "VesselLinux", "VesselProtocol", "VesselSandbox"]
        ),
        // `vessel`, and `containerd-shim-vessel-v2` as a link to it: chooses the front door by name.
        .executableTarget(name: "vessel", dependencies: ["VesselOCI", "VesselContainerd"]),
        .testTarget(
            name: "VesselRuntimeTests",
            dependencies: [
                "VesselCore", "VesselSandbox", "VesselOCI", "VesselContainerd", "VesselDevSupport", "VesselProtocol",
                "VesselLinux", "VesselTestSupport", "VesselVM",
            ]
        ),
        // The initrd builder: newc cpio of rootfs/ plus the static agent as /init, compressed.
        .target(name: "VesselImage"),
        .executableTarget(
            name: "vessel-image", dependencies: ["VesselImage", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .testTarget(name: "VesselImageTests", dependencies: ["VesselImage", "VesselTestSupport"]),
        .executableTarget(
            name: "vessel-dev",
            dependencies: [
                "VesselDevSupport", "VesselAgentClient", "VesselProtocol", "VesselVM",
                "VesselCore", "VesselLinux", "VesselSandbox", "VesselVsock",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .testTarget(
            name: "VesselProtocolTests",
            dependencies: [
                "VesselLinux", "VesselProtocol", "VesselTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .testTarget(
            name: "VesselAgentTests",
            dependencies: [
                "VesselAgent", "VesselAgentClient", "VesselDevSupport", "VesselLinux", "VesselProtocol", "VesselSpec",
                "VesselTestSupport",
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
