import ArgumentParser
import SockFlowCore

/// `sockflow`: the root command.
public struct SockflowCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "sockflow",
        abstract: "Per-process TCP socket flows from the kernel, as JSON lines.",
        discussion: """
            sockflow reports every TCP socket that listens, connects, is accepted or \
            closes, with the process that owns it, one JSON object per line on stdout. \
            It needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN) and a \
            kernel with BTF (Linux 6.15 or newer).
            """,
        version: SockFlowVersion.version,
        subcommands: [MonitorCommand.self, RunCommand.self, PolicyCommand.self])

    public init() {}
}

extension SockflowCommand {
    /// Parses the process arguments and runs; the executable's whole main.
    public static func run() {
        main()
    }
}
