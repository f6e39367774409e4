#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import SockFlow
import SockFlowCore

extension OutputFormat: ExpressibleByArgument {}

/// A size in bytes: `4096`, `64K`, `8M`, `8MiB`, `1G`.
public struct ByteSize: ExpressibleByArgument, Sendable, Equatable {
    public let bytes: Int

    public init(bytes: Int) { self.bytes = bytes }

    public init?(argument: String) {
        let s = argument.filter { $0 != " " }.lowercased()
        var digits = Substring(s)
        var unit = 1
        for (suffix, mult) in [("kib", 1 << 10), ("mib", 1 << 20), ("gib", 1 << 30), ("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("b", 1)]
        where digits.hasSuffix(suffix) {
            digits = digits.dropLast(suffix.count)
            unit = mult
            break
        }
        guard !digits.isEmpty, digits.allSatisfy(\.isNumber), let n = Int(digits) else { return nil }
        let (product, overflow) = n.multipliedReportingOverflow(by: unit)
        guard !overflow else { return nil }
        bytes = product
    }

    public var defaultValueDescription: String {
        bytes % (1 << 20) == 0 ? "\(bytes >> 20)M" : "\(bytes)"
    }
}

struct MonitorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "monitor",
        abstract: "Print a record for every TCP flow event, until stopped.",
        discussion: """
            Records: listen, connect, established, accept, close; the stream opens with \
            'start' and ends with 'stop' (on SIGINT/SIGTERM, --count or --duration). A \
            'lost' record says how many records the kernel could not deliver, and why. \
            Filters on cgroup and port are applied in the kernel; --pid in sockflow.
            """)

    @Option(name: .customLong("pid"), help: ArgumentHelp("Only records owned by this process (repeatable).", valueName: "pid"))
    var pids: [Int32] = []

    @Option(help: ArgumentHelp(
        "Only sockets of this cgroup v2 subtree: a path under the cgroup2 mount, or relative to it.",
        valueName: "path"))
    var cgroup: String?

    @Option(name: .customLong("port"), help: ArgumentHelp("Only flows with this local or remote port (repeatable).", valueName: "port"))
    var ports: [UInt16] = []

    @Option(help: "Output format: json (one object per line) or text (one aligned line per record).")
    var format: OutputFormat = .json

    @Option(help: ArgumentHelp("Stop after this many flow records.", valueName: "n"))
    var count: UInt64?

    @Option(help: ArgumentHelp("Stop after this many seconds.", valueName: "seconds"))
    var duration: Double?

    @Option(name: .customLong("ring-buffer-size"), help: ArgumentHelp(
        "Kernel ring buffer size: a power of two of at least one page (e.g. 64K, 8M).", valueName: "size"))
    var ringBufferSize = ByteSize(bytes: 4 << 20)

    @Option(name: .customLong("max-delay"), help: ArgumentHelp(
        "How long the kernel may batch records, in milliseconds; each is written about this much after its event, sometimes a few ms more (0: no batching, wake on every record).",
        valueName: "ms"))
    var maxDelay = 10

    @Option(name: .customLong("max-flows"), help: ArgumentHelp(
        "Flows kept in memory at once; past it, an 'overflow' record says how many went untracked.",
        valueName: "n"))
    var maxFlows = 1 << 17

    @Option(help: ArgumentHelp("Enforce this policy (YAML, see docs/policy.md); SIGHUP reloads it.", valueName: "file"))
    var policy: String?

    @Flag(help: "Reload the policy when its file changes.")
    var watch = false

    @Flag(name: .customLong("keep-existing"), help: "After a (re)load, leave existing sockets the policy denies open.")
    var keepExisting = false

    @Flag(help: "Leave the enforcement in force after sockflow exits (pinned in /sys/fs/bpf/sockflow); 'sockflow policy unload' removes it.")
    var persist = false

    @Flag(help: "Also write the stream records (start, lost, overflow, stop) to stderr, one JSON line each.")
    var summary = false

    @Flag(help: "Print libbpf's informational messages on stderr.")
    var verbose = false

    /// The cgroup, resolved to an absolute directory under the cgroup2 mount.
    var resolvedCgroup: String?

    enum CodingKeys: String, CodingKey {
        case pids, cgroup, ports, format, count, duration, ringBufferSize, maxDelay, maxFlows, policy, watch, keepExisting
        case persist, summary, verbose
    }

    mutating func validate() throws {
        if let bad = pids.first(where: { $0 <= 0 }) {
            throw ValidationError("--pid \(bad): a process id is a positive number.")
        }
        if ports.contains(0) {
            throw ValidationError("--port 0: ports are 1 to 65535.")
        }
        if ports.count > 64 {
            throw ValidationError("--port: at most 64 ports (got \(ports.count)).")
        }
        if let count, count == 0 {
            throw ValidationError("--count 0: give at least 1, or leave --count out to run until stopped.")
        }
        if let duration, !(duration > 0) || !duration.isFinite {
            throw ValidationError("--duration \(duration): give a positive number of seconds.")
        }
        let size = ringBufferSize.bytes
        let page = Int(getpagesize())
        if size < page || size & (size - 1) != 0 || size > 1 << 30 {
            throw ValidationError(
                "--ring-buffer-size \(size): must be a power of two from \(page) bytes to 1G (e.g. 64K, 8M).")
        }
        if policy == nil, watch || keepExisting || persist {
            let flag = watch ? "--watch" : keepExisting ? "--keep-existing" : "--persist"
            throw ValidationError("\(flag) needs --policy FILE.")
        }
        if maxFlows < 1 || maxFlows > 1 << 24 {
            throw ValidationError("--max-flows \(maxFlows): give 1 to \(1 << 24).")
        }
        if maxDelay < 0 || maxDelay > 10_000 {
            throw ValidationError("--max-delay \(maxDelay): give 0 to 10000 milliseconds.")
        }
        if let cgroup {
            guard let root = CgroupFS.mountPoint() else {
                throw ValidationError("--cgroup: this machine has no cgroup v2 hierarchy (no cgroup2 in /proc/mounts).")
            }
            let path = cgroup.hasPrefix(root + "/") || cgroup == root ? cgroup
                : root + (cgroup.hasPrefix("/") ? cgroup : "/" + cgroup)
            guard CgroupFS.id(ofDirectory: path) != nil else {
                throw ValidationError("--cgroup \(cgroup): no cgroup v2 directory at \(path).")
            }
            resolvedCgroup = path
        }
    }

    func configurationValue() -> MonitorConfiguration {
        var c = MonitorConfiguration()
        c.pids = pids
        c.cgroupPath = resolvedCgroup
        c.ports = ports
        c.count = count
        c.duration = duration
        c.ringBufferBytes = ringBufferSize.bytes
        c.maxDelayMilliseconds = maxDelay
        c.flowTableLimit = maxFlows
        c.summary = summary
        c.policyPath = policy
        c.watchPolicy = watch
        c.keepExisting = keepExisting
        c.persist = persist
        c.handleSignals = true
        c.verbose = verbose
        return c
    }

    func run() throws {
        let monitor: Monitor
        do {
            monitor = try Monitor(configuration: configurationValue(), output: LineWriter(fd: 1, format: format))
        } catch {
            CLIError.report(error)
            throw ExitCode(2)
        }
        do {
            try monitor.run()
        } catch {
            CLIError.report(error)
            throw ExitCode(1)
        }
    }
}

enum CLIError {
    /// One line on stderr: `sockflow: <what failed>: <why> (<what to do>)`.
    static func report(_ error: Error) { report("\(error)") }

    static func report(_ message: String) {
        let line = "sockflow: \(message)\n"
        var bytes = Array(line.utf8)
        _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    }
}
