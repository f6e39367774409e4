#if canImport(Glibc)
import Glibc
#endif
import CSockFlowShims
import SockFlowBPF
import SockFlowCore

/// A command run under sockflow: a cgroup of its own, monitoring (and, with a
/// policy, enforcement) scoped to it, the command born inside it. Records are
/// those of the command and all its descendants. The cgroup is removed in every
/// case, also when the command cannot be started.
public final class CommandRun: @unchecked Sendable {
    public struct Configuration: Sendable {
        public var command: [String]
        public var policyPath: String?
        /// Where the command's stdout goes; nil: sockflow's own stdout.
        public var commandStdout: Int32?
        public var monitor = MonitorConfiguration()

        public init(command: [String]) { self.command = command }
    }

    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    public let cgroupPath: String
    public let monitor: Monitor
    public private(set) var pid: Int32 = 0
    private var pidfd: Int32 = -1

    /// Creates the cgroup, attaches the programs to it and starts the command.
    public init(_ configuration: Configuration, output: FlushingRecordSink) throws {
        guard !configuration.command.isEmpty else { throw Failure(description: "no command to run") }
        guard let root = CgroupFS.mountPoint() else {
            throw Failure(description: "no cgroup v2 hierarchy (no cgroup2 in /proc/mounts)")
        }
        cgroupPath = "\(root)/sockflow-run-\(getpid())-\(CommandRun.counter.next())"
        guard mkdir(cgroupPath, 0o755) == 0 else {
            throw Failure(description: "create cgroup \(cgroupPath): \(FileIO.errnoText(errno))")
        }
        var m = configuration.monitor
        m.cgroupPath = cgroupPath
        m.policyPath = configuration.policyPath
        do {
            monitor = try Monitor(configuration: m, output: output)
        } catch {
            rmdir(cgroupPath)
            throw error
        }
        do {
            try spawn(configuration)
        } catch {
            remove()
            throw error
        }
    }

    deinit {
        if pidfd >= 0 { close(pidfd) }
        remove()
    }

    private func spawn(_ configuration: Configuration) throws {
        let cg = open(cgroupPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard cg >= 0 else { throw Failure(description: "open cgroup \(cgroupPath): \(FileIO.errnoText(errno))") }
        defer { close(cg) }
        var argv: [UnsafeMutablePointer<CChar>?] = configuration.command.map { strdup($0) }
        argv.append(nil)
        defer { for p in argv { free(p) } }
        var childPid: Int32 = 0
        var fd: Int32 = -1
        let rc = sockflow_spawn_in_cgroup(cg, &argv, configuration.commandStdout ?? -1, &childPid, &fd)
        guard rc == 0 else {
            let what = -rc == ENOENT ? "command not found" : FileIO.errnoText(-rc)
            throw Failure(description: "start \(configuration.command[0]): \(what)")
        }
        pid = childPid
        pidfd = fd
        try monitor.watchChild(pidfd: fd)
    }

    /// Runs until the command exits; its exit status (128 + signal when a signal
    /// ended it). Descendants left in the cgroup are killed, then it is removed.
    @discardableResult
    public func run() throws -> Int32 {
        defer { remove() }
        try monitor.run()
        return monitor.childStatus ?? 1
    }

    private var removed = false

    /// Kills whatever is left in the cgroup and removes it.
    public func remove() {
        guard !removed else { return }
        removed = true
        let killFile = cgroupPath + "/cgroup.kill"
        if access(killFile, W_OK) == 0 {
            var one: [UInt8] = Array("1".utf8)
            let fd = open(killFile, O_WRONLY | O_CLOEXEC)
            if fd >= 0 {
                _ = one.withUnsafeMutableBytes { write(fd, $0.baseAddress, 1) }
                close(fd)
            }
        }
        for _ in 0..<200 {
            if rmdir(cgroupPath) == 0 || errno == ENOENT { return }
            usleep(10_000)
        }
    }

    final class Counter: @unchecked Sendable {
        private var value = 0
        private let lock = PthreadMutex()
        func next() -> Int { lock.with { value += 1; return value } }
    }
    static let counter = Counter()
}

/// A minimal mutex (pthread), so the engine needs no Foundation. The mutex lives
/// in memory of its own: a pthread mutex must not move, and `&property` promises
/// no stable address.
final class PthreadMutex: @unchecked Sendable {
    private let m: UnsafeMutablePointer<pthread_mutex_t>
    init() {
        m = .allocate(capacity: 1)
        m.initialize(to: pthread_mutex_t())
        pthread_mutex_init(m, nil)
    }
    deinit {
        pthread_mutex_destroy(m)
        m.deallocate()
    }
    func with<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(m)
        defer { pthread_mutex_unlock(m) }
        return try body()
    }
}
