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
    /// How long the kernel may batch records, in milliseconds: per-CPU stages
    /// and ring wakeups. A record is written about this much after its event,
    /// sometimes a few ms more (it is held until records of other CPUs that are
    /// older have been read). 0: no batching, the kernel wakes the reader for
    /// every record.
    public var maxDelayMilliseconds = 10
    public var flowTableLimit = 1 << 17
    /// Stop on SIGINT and SIGTERM (the CLI); a library user calls `requestStop()`.
    public var handleSignals = false
    /// Also write the stream records (start, lost, overflow, stop) to stderr.
    public var summary = false
    /// A policy file to enforce (YAML, docs/policy.md).
    public var policyPath: String?
    /// Reload the policy when its file changes (SIGHUP always reloads).
    public var watchPolicy = false
    /// After a (re)load, leave existing sockets alone instead of destroying denied ones.
    public var keepExisting = false
    /// Leave the enforcement in place when sockflow exits (pinned in bpffs).
    public var persist = false
    public var verbose = false

    public init() {}
}

public enum StopReason: String, Sendable {
    case signal, count, duration, requested
    /// `sockflow run`: the command exited.
    case exited
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
    /// Batched wakeups stage records per CPU in the kernel: they are put back in
    /// time order here. Nil when the kernel wakes the reader on every record.
    private let reorder: RecordReorder?
    private let reconciler = Reconciler()
    private var summaryWriter: LineWriter?
    private var activePolicy: Policy?
    private var enforcer: PolicyEnforcer!
    private var inotifyFD: Int32 = -1
    /// `sockflow run`: the command, by pidfd; signals go to it and its exit stops the run.
    private var childPidFD: Int32 = -1
    private var signalsForwarded = 0
    /// The command's exit status (128 + signal if a signal ended it).
    public private(set) var childStatus: Int32?
    private var policyName = ""

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
        var policy: Policy?
        if let path = configuration.policyPath {
            policy = try PolicyParser.load(path: path)  // before anything is loaded: a bad policy changes nothing
            options.policy = PolicyCompiler.compile(policy!)
        }
        // At least as many kernel slots as user-space flows: when flows overflow,
        // the user-space table does first (and says so in-band) while the kernel
        // still names the owners in the closes of the flows user space could not keep.
        options.flowCapacity = configuration.flowTableLimit
        self.program = try MonitorProgram.start(options)
        var filter = RecordFilter()
        if !configuration.pids.isEmpty { filter.pids = Set(configuration.pids) }
        if !configuration.ports.isEmpty { filter.ports = Set(configuration.ports) }
        self.builder = RecordBuilder(
            sink: output, bootTag: BootID.tag(), filter: filter, flowTableLimit: configuration.flowTableLimit)
        builder.flowRecordLimit = configuration.count
        let program = self.program
        builder.ruleName = { generation, index in program.ruleName(generation: generation, index: index) }
        self.activePolicy = policy
        self.enforcer = PolicyEnforcer(builder: builder, scope: configuration.cgroupPath)
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
        let interval = options.wakeupIntervalNanoseconds
        if interval > 0 {
            let reorder = RecordReorder(initialCapacity: Self.maxHeld + 16)  // the sample that fills it may hold a whole stage
            reorder.onUndecodable = { builder.noteUndecodable() }
            self.reorder = reorder
            self.ring = try RingBuffer(mapFD: program.ringBufferFD) { sample in
                samples.count &+= 1
                reorder.add(sample: sample)
                return reorder.count < Self.maxHeld  // full: pump() releases the oldest, then reads on
            }
        } else {
            self.reorder = nil
            self.ring = try RingBuffer(mapFD: program.ringBufferFD) { sample in
                samples.count &+= 1
                builder.handle(sample: sample)
                return !builder.isFinished
            }
        }
        try watch(ring.epollFD, tag: 1)
        try watch(stopFD, tag: 3)
        if configuration.handleSignals {
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SIGINT)
            sigaddset(&set, SIGTERM)
            sigaddset(&set, SIGHUP)
            sigprocmask(SIG_BLOCK, &set, nil)
            signal(SIGPIPE, SIG_IGN)
            signalFD = signalfd(-1, &set, Int32(SFD_CLOEXEC | SFD_NONBLOCK))
            guard signalFD >= 0 else { throw BPFError("create a signalfd", code: errno) }
            try watch(signalFD, tag: 2)
        }
        if configuration.watchPolicy, let path = configuration.policyPath {
            // Watch the directory: editors replace files rather than write them in place.
            let slash = path.lastIndex(of: "/")
            let dir = slash.map { String(path[..<$0]) } ?? "."
            policyName = slash.map { String(path[path.index(after: $0)...]) } ?? path
            inotifyFD = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
            guard inotifyFD >= 0,
                inotify_add_watch(inotifyFD, dir.isEmpty ? "/" : dir, UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE)) >= 0
            else { throw BPFError("watch \(path) for changes", code: errno) }
            try watch(inotifyFD, tag: 4)
        }
        if configuration.persist, policy != nil {
            // Pinned now, replacing what an earlier run pinned (ours are attached
            // already: no window), so even a crash leaves the enforcement in place.
            try program.persistEnforcement()
        }
    }

    /// Records held at most (1 MiB): in a burst of more than this many per
    /// pass the oldest go out before they are due, rather than the buffer
    /// growing with the burst (100,000 connections opened at once held 6 MB
    /// more).
    static let maxHeld = 4096
    /// Records stamped this long before a flush that found every stage free are
    /// all in the ring when it is read: a record the kernel was writing into the
    /// ring as the flush ran, or one stamped with TCP's packet time, is at most
    /// microseconds older.
    static let flushMargin: UInt64 = 1_000_000
    /// Every record stamped up to this time has been read: the held ones up to
    /// it can be written.
    private var safeUpTo: UInt64 = 0
    /// What the kernel was last told (`MonitorProgram.setReaderActive`).
    private var readerActive = false
    private var stagingFailed = false
    /// Stages the last flush found taken: their records wait for the next one.
    private var stagesTaken = 0
    /// The ring held a reserved record at the last read after the reader said it
    /// sleeps (`MonitorProgram.setReaderActive`).
    private var ringUnconsumed = false

    deinit {
        ring = nil
        if signalFD >= 0 { close(signalFD) }
        if inotifyFD >= 0 { close(inotifyFD) }
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

    /// Watches a command started for this run: SIGINT and SIGTERM go to it (a
    /// third one kills it), and its exit ends the run.
    public func watchChild(pidfd: Int32) throws {
        childPidFD = pidfd
        try watch(pidfd, tag: 5)
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
        if let policy = activePolicy { applied(policy) }
        _ = summaryWriter?.flush()
        var reason: StopReason? = output.flush() ? nil : .outputClosed
        let deadline = configuration.duration.map { WallClock.kernelNow() + UInt64($0 * 1e9) }
        let interval = Int32(max(configuration.maxDelayMilliseconds, 0))
        var active = false
        var events = [epoll_event](repeating: epoll_event(), count: 4)
        while reason == nil {
            // After a batch with records, look again one interval later: records the
            // kernel submitted without a wakeup are picked up then. After an empty
            // batch, sleep until the kernel wakes us (it does for the first record
            // after a quiet interval).
            var timeout: Int32 = active ? interval + 1 : -1
            if !active, let reorder, reorder.count > 0 || stagesTaken > 0 || ringUnconsumed {
                // No new records, but some held, or a stage a program was writing
                // into at the last flush, or a record reserved and not yet
                // submitted at the last read (its program may have seen the
                // reader active, and wakes nobody): the next pass gets them.
                timeout = stagesTaken > 0 || ringUnconsumed ? 1 : 2
            }
            if let deadline {
                let now = WallClock.kernelNow()
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
                    while read(signalFD, &info, MemoryLayout<signalfd_siginfo>.size) > 0 {
                        if info.ssi_signo == UInt32(SIGHUP) {
                            reloadPolicy()
                        } else if childPidFD >= 0 {
                            signalsForwarded += 1
                            _ = sockflow_pidfd_send_signal(childPidFD, signalsForwarded >= 3 ? SIGKILL : Int32(info.ssi_signo))
                        } else {
                            reason = .signal
                        }
                    }
                case 5:
                    var info = siginfo_t()
                    if waitid(P_PIDFD, id_t(childPidFD), &info, WEXITED | WNOHANG) == 0, info._sifields._sigchld.si_pid != 0 {
                        let status = info._sifields._sigchld.si_status
                        childStatus = info.si_code == CLD_EXITED ? status : 128 + status
                        reason = .exited
                    }
                case 4:
                    if policyFileChanged() { reloadPolicy() }
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
            if reorder != nil {
                if active != readerActive, !active {
                    // About to sleep until woken: from now on records go to the ring
                    // directly and wake us; the stages' last records come out in
                    // one more flush.
                    program.setReaderActive(false)
                    readerActive = false
                    try pump()
                    active = samples.count != before
                }
                ringUnconsumed = !readerActive && ring.hasUnconsumed
                if active, !readerActive, !stagingFailed {
                    program.setReaderActive(true)
                    readerActive = true
                }
            }
            if !output.flush() { reason = .outputClosed }
            _ = summaryWriter?.flush()
            if builder.isFinished { reason = .count }
        }
        finish(reason!)
        return reason!
    }

    // MARK: policy

    /// After a policy took effect: destroy the existing sockets it denies (unless
    /// --keep-existing) and say so in-band.
    private func applied(_ policy: Policy) {
        builder.clock.refresh()
        try? pump(all: true)  // records from before the swap come first
        let destroyed = configuration.keepExisting ? 0 : enforcer.enforce(policy).destroyed
        builder.emitPolicyStatus(PolicyStatus(
            loaded: true, file: configuration.policyPath ?? "", rules: policy.rules.count, error: nil, destroyed: destroyed))
    }

    /// SIGHUP or --watch: parse, compile and swap in the new policy; a policy that
    /// does not parse or install leaves the old one in force, and says why.
    public func reloadPolicy() {
        guard let path = configuration.policyPath else {
            CLIErrorLine.write("sockflow: SIGHUP ignored: no --policy to reload")
            return
        }
        do {
            let policy = try PolicyParser.load(path: path)
            try program.install(PolicyCompiler.compile(policy))
            activePolicy = policy
            applied(policy)
        } catch {
            CLIErrorLine.write("sockflow: policy reload rejected, the previous policy stays in force: \(error)")
            builder.emitPolicyStatus(PolicyStatus(
                loaded: false, file: path, rules: activePolicy?.rules.count ?? 0, error: "\(error)", destroyed: 0))
        }
        _ = output.flush()
        _ = summaryWriter?.flush()
    }

    /// Drains inotify; true if an event named the policy file.
    private func policyFileChanged() -> Bool {
        var buf = [UInt8](repeating: 0, count: 4096)
        var hit = false
        while true {
            let n = buf.withUnsafeMutableBytes { read(inotifyFD, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            var off = 0
            while off + MemoryLayout<inotify_event>.size <= n {
                let ev = buf.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: off, as: inotify_event.self) }
                let nameStart = off + MemoryLayout<inotify_event>.size
                let name = buf[nameStart..<min(nameStart + Int(ev.len), n)].prefix { $0 != 0 }
                if String(decoding: name, as: UTF8.self) == policyName { hit = true }
                off = nameStart + Int(ev.len)
            }
        }
        return hit
    }

    private func pump(all: Bool = false) throws {
        builder.clock.refresh()
        if let reorder {
            let builder = self.builder
            let flushed = WallClock.kernelNow()
            let taken = program.flushStages()
            stagesTaken = taken ?? 0
            if taken == nil {
                // Cannot flush (should not happen: the program loaded): stop
                // staging; what is staged goes out when its stage fills.
                stagingFailed = true
                program.setReaderActive(false)
                readerActive = false
            }
            if taken ?? 0 == 0, flushed > Self.flushMargin {
                safeUpTo = max(safeUpTo, flushed - Self.flushMargin)
            }  // else a stage was being written: its records come with the next flush
            var full: Bool
            repeat {
                full = try !ring.consume()
                reorder.release(upTo: all ? .max : safeUpTo, keepAtMost: full ? Self.maxHeld / 2 : .max) { kind, e in
                    builder.handle(kind, e)
                }
            } while full && !builder.isFinished
        } else {
            try ring.consume()
        }
        if !builder.isFinished {
            builder.noteKernelLoss(ringBuffer: program.lostTotal, untrackedSockets: program.untrackedSockets)
            builder.flushPendingLoss()
            reconciler.maybeRun(builder)
        }
    }

    private func finish(_ reason: StopReason) {
        program.detach()  // pinned enforcement (--persist) stays attached
        var stranded: UInt64 = 0
        if reason != .count, reason != .outputClosed {
            // The programs are detached: a stage still taken belongs to one that
            // was running; flush until none is (pump flushes once more).
            for _ in 0..<100 where (program.flushStages() ?? 0) > 0 { usleep(1000) }
            try? pump(all: true)  // what the kernel submitted before the programs went away
            // Still staged now: they will not be read.
            stranded = UInt64(program.stagedRecords)
            if stranded > 0 { builder.noteKernelLoss(ringBuffer: program.lostTotal + stranded) }
            reconciler.maybeRun(builder, force: true)  // so open_flows counts live flows only
        }
        builder.flushDenials(all: true)
        builder.emitStop(
            reason: reason.rawValue,
            counters: [
                ("lost", program.lostTotal + stranded),
                ("undecodable", builder.undecodable),
                ("untracked_sockets", program.untrackedSockets),
                ("untracked_flows", builder.table.untracked),
                ("reconciled_flows", reconciler.removed),
                ("open_flows", UInt64(builder.table.count)),
                ("out_of_order", reorder?.late ?? 0),
                ("policy_records", builder.policyRecords),
            ] + (childStatus.map { [("exit_status", UInt64($0))] } ?? []))
        _ = output.flush()
        _ = summaryWriter?.flush()
    }
}

final class SampleCounter {
    var count: UInt64 = 0
}


/// One line on stderr (diagnostics never go to stdout).
enum CLIErrorLine {
    static func write(_ text: String) {
        var bytes = Array((text + "\n").utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}
