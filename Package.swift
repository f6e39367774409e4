// swift-tools-version: 6.1
//
// Build with `make` (it generates the BPF skeleton first), not plain `swift build`.
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "sockflow",
    products: [
        .executable(name: "sockflow", targets: ["sockflow"]),
        .library(name: "SockFlow", targets: ["SockFlow"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
    ],
    targets: [
        // C: libbpf through pkg-config, nothing else.
        .systemLibrary(
            name: "CLibBPF", path: "Sources/CLibBPF", pkgConfig: "libbpf",
            providers: [.apt(["libbpf-dev"])]),
        // C: the kernel/user ABI, one header shared with bpf/.
        .target(name: "CSockFlowABI"),
        // C: the generated BPF skeleton (embeds the BPF object).
        .target(name: "CSockFlowSkel", dependencies: ["CSockFlowABI", "CLibBPF"]),
        // C: the few calls Swift cannot make directly.
        .target(name: "CSockFlowShims"),

        // Pure Swift: records, decoding from bytes, flow table, process metadata, JSON.
        .target(
            name: "SockFlowCore", dependencies: ["CSockFlowABI", "CSockFlowShims", .product(name: "Yams", package: "Yams")],
            swiftSettings: swiftSettings),
        // The only Swift code that touches libbpf: load, attach, maps, ring buffer.
        .target(
            name: "SockFlowBPF",
            dependencies: ["CLibBPF", "CSockFlowSkel", "CSockFlowABI", "CSockFlowShims", "SockFlowCore"],
            swiftSettings: swiftSettings),
        // The library other packages use: the monitor engine and the harness API.
        .target(
            name: "SockFlow", dependencies: ["SockFlowCore", "SockFlowBPF", "CSockFlowShims"],
            swiftSettings: swiftSettings),
        // The command line.
        .target(
            name: "SockFlowCLI",
            dependencies: [
                "SockFlow", "SockFlowCore", "SockFlowBPF", "CSockFlowABI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings),
        .executableTarget(name: "sockflow", dependencies: ["SockFlowCLI"], swiftSettings: swiftSettings),
        // Benchmarks (make bench).
        .executableTarget(
            name: "sockflow-bench", dependencies: ["SockFlow", "SockFlowCore", "CSockFlowABI"],
            swiftSettings: swiftSettings),

        // Unit tests: no root, no kernel (but the ABI test reads the embedded object's BTF).
        .testTarget(
            name: "SockFlowTests",
            dependencies: ["SockFlowCore", "SockFlowBPF", "SockFlow", "SockFlowCLI", "CSockFlowABI"],
            swiftSettings: swiftSettings),
        // Integration tests: root, real BPF programs, real processes and sockets.
        .testTarget(
            name: "SockFlowIntegrationTests", dependencies: ["SockFlowCore", "SockFlowBPF", "SockFlow"],
            swiftSettings: swiftSettings),
    ]
)
