#if canImport(Glibc)
import Glibc
#endif
import CSockFlowShims
import SockFlowBPF
import SockFlowCore

/// What to monitor and how.
public struct MonitorConfiguration: Sendable {
    /// Only records owned by these processes (user space).
    public var pids: [Int32] = []
    /// Only sockets of this cgroup v2 subtree (kernel: the attach point).
    public var cgroupPath: String?
    /// Only flows with one of these local or remote ports (kernel and user space).
    public var ports: [UInt16] = []
    /// Stop after this many flow records.
    public var count: UInt64?
    /// Stop after this many seconds.
    public var duration: Double?
    public var ringBufferBytes = 4 << 20
    /// The longest a record waits in the ring before it is written, in
    /// milliseconds. 0: the kernel wakes the reader for every record.
    public var maxDelayMilliseconds = 10
    public var flowTableLimit = 1 << 17
    /// Stop on SIGINT and SIGTERM (the CLI); a library user calls `requestStop()`.
    public var handleSignals = false
    /// Also write the stream records (start, lost, overflow, stop) to stderr.
    public var summary = false
    public var verbose = false

    public init() {}
}

public enum StopReason: String, Sendable {
    case signal, count, duration, requested
    case outputClosed = "output_closed"
}

/// sockflow's monitor: the BPF programs, the ring buffer, the record builder and
/// an output, driven by one event loop on the thread that calls `run()`.
public final class Monitor: @unchecked Sendable {
    public let configuration: MonitorConfiguration
    public let program: MonitorProgram
    public let builder: RecordBuilder
    private let output: FlushingRecordSink
    private var ring: RingBuffer!
    private let epollFD: Int32
    private let stopFD: Int32
    private var signalFD: Int32 = -1
    /// Samples taken from the ring, filtered or not: what tells an empty batch.
    private let samples = SampleCounter()
    private let reconciler = Reconciler()
    private var summaryWriter: LineWriter?

    /// Loads and attaches; records flow once `run()` starts. Throws a `BPFError`
    /// that names what is missing (privilege, BTF, a hook) with nothing left attached.
    public init(configuration: MonitorConfiguration, output: FlushingRecordSink) throws {
        self.configuration = configuration
        self.output = output
        LibBPFLog.install(verbose: configuration.verbose)
        var options = MonitorProgram.Options()
        options.ringBufferBytes = configuration.ringBufferBytes
        options.wakeupIntervalNanoseconds = UInt64(configuration.maxDelayMilliseconds) * 1_000_000
        options.ports = configuration.ports
        options.cgroupPath = configuration.cgroupPath
        // A little more room in the kernel than in user space: when flows overflow,
        // the user-space table does first (and says so in-band) while the kernel
        // still reports the closes of the flows it could not keep.
        options.flowCapacity = configuration.flowTableLimit + configuration.flowTableLimit / 8 + 64
        self.program = try MonitorProgram.start(options)
        var filter = RecordFilter()
        if !configuration.pids.isEmpty { filter.pids = Set(configuration.pids) }
        if !configuration.ports.isEmpty { filter.ports = Set(configuration.ports) }
        self.builder = RecordBuilder(
            sink: output, bootTag: BootID.tag(), filter: filter, flowTableLimit: configuration.flowTableLimit)
        builder.flowRecordLimit = configuration.count
        if configuration.summary {
            let err = LineWriter(fd: 2, format: .json)
            summaryWriter = err
            builder.streamSink = err
        }
        self.epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        self.stopFD = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard epollFD >= 0, stopFD >= 0 else { throw BPFError("create the event loop", code: errno) }
        let builder = self.builder
        let samples = self.samples
        self.ring = try RingBuffer(mapFD: program.ringBufferFD) { sample in
            samples.count &+= 1
            builder.handle(sample: sample)
            return !builder.isFinished
        }
        try watch(ring.epollFD, tag: 1)
        try watch(stopFD, tag: 3)
        if configuration.handleSignals {
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SIGINT)
            sigaddset(&set, SIGTERM)
            sigprocmask(SIG_BLOCK, &set, nil)
            signal(SIGPIPE, SIG_IGN)
            signalFD = signalfd(-1, &set, Int32(SFD_CLOEXEC | SFD_NONBLOCK))
            guard signalFD >= 0 else { throw BPFError("create a signalfd", code: errno) }
            try watch(signalFD, tag: 2)
        }
    }

    deinit {
        ring = nil
        if signalFD >= 0 { close(signalFD) }
        close(stopFD)
        close(epollFD)
    }

    private func watch(_ fd: Int32, tag: UInt32) throws {
        var ev = epoll_event()
        ev.events = EPOLLIN.rawValue
        ev.data.u32 = tag
        guard epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &ev) == 0 else {
            throw BPFError("watch fd \(fd)", code: errno)
        }
    }

    /// Stops `run()` from any thread.
    public func requestStop() {
        var one: UInt64 = 1
        _ = write(stopFD, &one, 8)
    }

    public var startDetails: StreamDetails {
        var d = StreamDetails()
        d.version = SockFlowVersion.version
        var u = utsname()
        uname(&u)
        d.kernel = withUnsafeBytes(of: u.release) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        d.hooks = program.hooks
        let c = configuration
        if let cg = c.cgroupPath { d.filters.append(("cgroup", cg)) }
        if !c.pids.isEmpty { d.filters.append(("pid", c.pids.map(String.init).joined(separator: ","))) }
        if !c.ports.isEmpty { d.filters.append(("port", c.ports.map(String.init).joined(separator: ","))) }
        d.ringBufferBytes = c.ringBufferBytes
        return d
    }

    /// Runs until a signal, `requestStop()`, `--count`, `--duration` or a closed
    /// output. Ends with a `stop` record; the programs are detached on return.
    @discardableResult
    public func run() throws -> StopReason {
        builder.emitStart(startDetails)
        _ = summaryWriter?.flush()
        var reason: StopReason? = output.flush() ? nil : .outputClosed
        let deadline = configuration.duration.map { WallClock.boottime() + UInt64($0 * 1e9) }
        let interval = Int32(max(configuration.maxDelayMilliseconds, 0))
        var active = false
        var events = [epoll_event](repeating: epoll_event(), count: 4)
        while reason == nil {
            // After a batch with records, look again one interval later: records the
            // kernel submitted without a wakeup are picked up then. After an empty
            // batch, sleep until the kernel wakes us (it does for the first record
            // after a quiet interval).
            var timeout: Int32 = active ? interval + 1 : -1
            if let deadline {
                let now = WallClock.boottime()
                if now >= deadline {
                    reason = .duration
                    break
                }
                let left = Int32(min((deadline - now + 999_999) / 1_000_000, UInt64(Int32.max)))
                timeout = timeout < 0 ? left : min(timeout, left)
            }
            let n = epoll_wait(epollFD, &events, Int32(events.count), timeout)
            if n < 0, errno != EINTR { throw BPFError("wait for events", code: errno) }
            for i in 0..<Int(max(n, 0)) {
                switch events[i].data.u32 {
                case 2:
                    var info = signalfd_siginfo()
                    if read(signalFD, &info, MemoryLayout<signalfd_siginfo>.size) > 0 { reason = .signal }
                case 3:
                    var v: UInt64 = 0
                    _ = read(stopFD, &v, 8)
                    reason = .requested
                default: break
                }
            }
            // "Empty" means no sample at all: a batch whose records a user-space
            // filter dropped still moved the kernel's wakeup clock.
            let before = samples.count
            try pump()
            active = samples.count != before
            if !output.flush() { reason = .outputClosed }
            _ = summaryWriter?.flush()
            if builder.isFinished { reason = .count }
        }
        finish(reason!)
        return reason!
    }

    private func pump() throws {
        builder.clock.refresh()
        try ring.consume()
        if !builder.isFinished {
            builder.noteKernelLoss(ringBuffer: program.lostTotal, untrackedSockets: program.untrackedSockets)
            builder.flushPendingLoss()
            reconciler.maybeRun(builder)
        }
    }

    private func finish(_ reason: StopReason) {
        program.detach()
        if reason != .count, reason != .outputClosed {
            try? pump()  // what the kernel submitted before the programs went away
            reconciler.maybeRun(builder, force: true)  // so open_flows counts live flows only
        }
        builder.emitStop(
            reason: reason.rawValue,
            counters: [
                ("lost", program.lostTotal),
                ("undecodable", builder.undecodable),
                ("untracked_sockets", program.untrackedSockets),
                ("untracked_flows", builder.table.untracked),
                ("reconciled_flows", reconciler.removed),
                ("open_flows", UInt64(builder.table.count)),
            ])
        _ = output.flush()
        _ = summaryWriter?.flush()
    }
}

final class SampleCounter {
    var count: UInt64 = 0
}
