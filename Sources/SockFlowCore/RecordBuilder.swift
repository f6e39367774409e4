#if canImport(Glibc)
import Glibc
#endif
import CSockFlowABI

/// Where records go: the JSON/text writer, or the harness API's collector.
public protocol RecordSink: AnyObject {
    func emit(_ record: borrowing Record)
}

/// Filters applied in user space, after the kernel applied what it could.
public struct RecordFilter: Sendable {
    /// Only records owned by these processes (an inbound flow not yet accepted
    /// belongs to its listener's owner).
    public var pids: Set<Int32>?
    /// Only flows with one of these local or remote ports (the kernel filters too).
    public var ports: Set<UInt16>?

    public init(pids: Set<Int32>? = nil, ports: Set<UInt16>? = nil) {
        self.pids = pids
        self.ports = ports
    }

    public var isEmpty: Bool { pids == nil && ports == nil }
}

/// Turns kernel events into records: numbers them, resolves owners, keeps the
/// flow table, accounts for every record the kernel could not deliver.
///
/// Confined to one thread (the consumer's): its hot fields opt out of dynamic
/// exclusivity checks, which cost more than the rest of the bookkeeping.
public final class RecordBuilder {
    public let sink: RecordSink
    /// Also receives the stream records (start, lost, overflow, stop): `--summary`.
    public var streamSink: RecordSink?
    public let bootTag: UInt32
    @exclusivity(unchecked) public var clock: WallClock
    @exclusivity(unchecked) public var filter: RecordFilter
    public let table: FlowTable
    public let processes: ProcessCache

    @exclusivity(unchecked) public private(set) var seq: UInt64 = 0
    /// Flow records emitted (listen, connect, established, accept, close).
    @exclusivity(unchecked) public private(set) var flowRecords: UInt64 = 0
    /// Flow records per event: listen, connect, established, accept, close.
    @exclusivity(unchecked) public private(set) var eventCounts: (UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0)
    /// Stop after this many flow records (`--count`); nil: never.
    @exclusivity(unchecked) public var flowRecordLimit: UInt64?
    public var isFinished: Bool { flowRecordLimit.map { flowRecords >= $0 } ?? false }

    /// Loss reported so far, per reason.
    @exclusivity(unchecked) public private(set) var reportedRingLoss: UInt64 = 0
    @exclusivity(unchecked) public private(set) var reportedStorageLoss: UInt64 = 0
    @exclusivity(unchecked) public private(set) var undecodable: UInt64 = 0
    @exclusivity(unchecked) private var reportedUndecodable: UInt64 = 0
    @exclusivity(unchecked) private var reportedUntracked: UInt64 = 0
    @exclusivity(unchecked) private var lastOverflowRecord: Int64 = 0

    public init(
        sink: RecordSink, bootTag: UInt32, clock: WallClock = WallClock(), filter: RecordFilter = RecordFilter(),
        flowTableLimit: Int = 1 << 17, processes: ProcessCache = ProcessCache()
    ) {
        self.sink = sink
        self.bootTag = bootTag
        self.clock = clock
        self.filter = filter
        self.table = FlowTable(limit: flowTableLimit)
        self.processes = processes
    }

    // MARK: stream records

    public func emitStart(_ details: StreamDetails) {
        var r = Record(seq: nextSeq(), time: WallClock.now(), event: .start)
        r.stream = details
        emitStream(r)
    }

    func emitStream(_ r: Record) {
        sink.emit(r)
        streamSink?.emit(r)
    }

    public func emitStop(reason: String, counters: [(String, UInt64)]) {
        var d = StreamDetails()
        d.stopReason = reason
        let c = eventCounts
        d.counters = [("records", seq + 1), ("flow_records", flowRecords),
                      ("listen", c.0), ("connect", c.1), ("established", c.2), ("accept", c.3), ("close", c.4)]
            + counters
        var r = Record(seq: nextSeq(), time: WallClock.now(), event: .stop)
        r.stream = d
        emitStream(r)
    }

    /// The kernel's running totals of what it could not deliver; a `lost` record
    /// for whatever is not yet reported. Called per event (from its header) and per
    /// batch (from the counters), so a gap is reported before the next record.
    public func noteKernelLoss(ringBuffer total: UInt64, untrackedSockets storage: UInt64? = nil) {
        if total > reportedRingLoss {
            emitLost(total - reportedRingLoss, .ringBufferFull)
            reportedRingLoss = total
        }
        if let storage, storage > reportedStorageLoss {
            emitLost(storage - reportedStorageLoss, .kernelTableFull)
            reportedStorageLoss = storage
        }
    }

    /// A sample that could not be decoded: counted, reported as `lost` at the end
    /// of the batch (`flushPendingLoss`).
    public func noteUndecodable() { undecodable &+= 1 }

    public func flushPendingLoss() {
        flushDenials()
        if undecodable > reportedUndecodable {
            emitLost(undecodable - reportedUndecodable, .undecodable)
            reportedUndecodable = undecodable
        }
        noteTableState()
    }

    /// An `overflow` record when the flow table refused flows since the last one,
    /// at most one per second.
    func noteTableState() {
        let untracked = table.untracked
        guard untracked > reportedUntracked else { return }
        let now = WallClock.now()
        guard reportedUntracked == 0 || now - lastOverflowRecord >= 1_000_000_000 else { return }
        var r = Record(seq: nextSeq(), time: now, event: .overflow)
        r.overflow = OverflowDetails(table: "flows", limit: table.limit, untracked: untracked)
        emitStream(r)
        reportedUntracked = untracked
        lastOverflowRecord = now
    }

    func emitLost(_ count: UInt64, _ reason: LostDetails.Reason) {
        var r = Record(seq: nextSeq(), time: WallClock.now(), event: .lost)
        r.lost = LostDetails(count: count, reason: reason)
        emitStream(r)
    }

    @inline(__always)
    func nextSeq() -> UInt64 {
        seq &+= 1
        return seq
    }

    // MARK: flow records

    /// Checks and handles one ring-buffer sample, in place. BPF ring-buffer samples
    /// are 8-byte aligned; any other buffer is copied to an aligned one first.
    public func handle(sample: UnsafeRawBufferPointer) {
        let kind: KernelEventKind
        do {
            kind = try KernelEvent.validate(sample)
        } catch {
            noteUndecodable()
            return
        }
        let base = sample.baseAddress!
        if Int(bitPattern: base) % MemoryLayout<sf_event>.alignment == 0 {
            handle(kind, base.assumingMemoryBound(to: sf_event.self))
        } else {
            var copy = sample.loadUnaligned(as: sf_event.self)
            withUnsafePointer(to: &copy) { handle(kind, $0) }
        }
    }

    public func handle(_ event: KernelEvent) {
        withUnsafePointer(to: event.raw) { handle(event.kind, $0) }
    }

    public func handle(_ kind: KernelEventKind, _ e: UnsafePointer<sf_event>) {
        guard !isFinished else { return }
        let lost = e.pointee.hdr.lost
        if lost > reportedRingLoss { noteKernelLoss(ringBuffer: lost) }
        switch kind {
        case .listen: onListen(e)
        case .connect: onConnect(e)
        case .established: onEstablished(e)
        case .accept: onAccept(e)
        case .close: onClose(e)
        case .verdict: onVerdict(e)
        }
    }

    // MARK: policy decisions

    /// The name of rule `index` of policy generation `generation` (the engine knows).
    public var ruleName: (Int, UInt32) -> String? = { _, _ in nil }

    struct DenialKey: Hashable {
        let hook: UInt8, action: UInt8, generation: UInt8, rule: UInt32
        let pid: UInt32, lport: UInt16, rport: UInt16
        let remote: IPAddress?
    }

    struct Denials {
        var pending: UInt64 = 0
        var lastEmit: Int64 = 0
        var lastSeen: Int64 = 0
        var record: Record
    }

    /// Repeated identical decisions: the first is reported at once, the rest within
    /// the next second as one record with their count.
    private var denials: [DenialKey: Denials] = [:]
    /// `log` verdicts waiting for (or kept with) the flow they concern, by cookie.
    private var flowVerdicts: [UInt64: Verdict] = [:]
    public static let aggregationWindow: Int64 = 1_000_000_000

    func onVerdict(_ e: UnsafePointer<sf_event>) {
        let ev = e.pointee
        guard let hook = Policy.Hook(bit: UInt32(ev.hook)) else { noteUndecodable(); return }
        let action: Verdict.Action = ev.action == UInt8(SF_ACTION_DENY.rawValue) ? .deny : .log
        let rule = ev.rule == UInt32.max ? nil : ruleName(Int(ev.generation), ev.rule)
        let verdict = Verdict(action: action, rule: rule)
        var flow = makeFlow(e, direction: hook.isInbound ? .inbound : .outbound, withRemote: true)
        flow.proto = ev.sock.protocol == UInt8(IPPROTO_UDP) ? .udp : .tcp
        if ev.listener_cookie != 0 { flow.listener = FlowID(boot: bootTag, cookie: ev.listener_cookie) }
        var owner: ProcessRecord?
        if ev.task.flags & UInt32(SF_TASK_VALID.rawValue) != 0 {
            owner = processes.record(for: ev.task)
        } else {
            owner = processes.owner(ev.task)
            if owner == nil, ev.listener_cookie != 0 { owner = table.owner(of: ev.listener_cookie) }
        }
        if action == .log, ev.sock.cookie != 0 { flowVerdicts[ev.sock.cookie] = verdict }
        let now = clock.wallTime(kernelNanoseconds: ev.hdr.ts_ns)
        var r = Record(seq: 0, time: now, event: action == .deny ? .deny : .log)
        r.flow = flow
        r.process = owner
        r.verdict = verdict
        r.policy = PolicyDetails(hook: hook, count: 1)
        let key = DenialKey(
            hook: ev.hook, action: ev.action, generation: ev.generation, rule: ev.rule, pid: ev.task.pid,
            lport: ev.sock.lport, rport: ev.sock.rport, remote: flow.remote?.address)
        if var d = denials[key], now - d.lastEmit < Self.aggregationWindow {
            d.pending &+= 1
            d.lastSeen = now
            d.record = r
            denials[key] = d
            return
        }
        emitPolicy(&r)
        denials[key] = Denials(pending: 0, lastEmit: now, lastSeen: now, record: r)
    }

    /// Emits the aggregated count of decisions whose window has passed, and forgets
    /// keys quiet for ten windows. Called at the end of each batch (and at stop,
    /// with `all`).
    public func flushDenials(now: Int64 = WallClock.now(), all: Bool = false) {
        guard !denials.isEmpty else { return }
        for (key, var d) in denials {
            if d.pending > 0 && (all || now - d.lastEmit >= Self.aggregationWindow) {
                var r = d.record
                r.policy?.count = d.pending
                emitPolicy(&r)
                d.pending = 0
                d.lastEmit = now
                denials[key] = d
            } else if d.pending == 0 && now - d.lastSeen >= 10 * Self.aggregationWindow {
                denials[key] = nil
            }
        }
    }

    private func emitPolicy(_ r: inout Record) {
        guard !isFinished else { return }
        if !filter.isEmpty, let f = r.flow, !admits(f, r.process) { return }
        r.seq = nextSeq()
        policyRecords &+= 1
        sink.emit(r)
    }

    /// Sockets sockflow is destroying because a reloaded policy denies them, by
    /// cookie: their close record says so.
    private var policyDestroys: [UInt64: String] = [:]

    public func notePolicyDestroy(cookie: UInt64, rule: String) {
        if cookie != 0 { policyDestroys[cookie] = rule }
    }

    /// The close of a socket sockflow destroyed that the kernel will not report
    /// (UDP, or TCP opened before sockflow started).
    public func emitPolicyClose(_ s: SockDiag.Socket, hook: Policy.Hook, owner: ProcessRecord?, rule: String) {
        guard !isFinished else { return }
        policyDestroys[s.cookie] = nil
        let mapped = s.family == .ipv6 && s.local.address.isIPv4Mapped
        let flow = Flow(
            id: FlowID(boot: bootTag, cookie: s.cookie), proto: s.proto,
            family: mapped ? .ipv4 : s.family, mapped: mapped,
            direction: hook.isInbound ? .inbound : .outbound,
            local: Endpoint(address: s.local.address.unmappedIPv4 ?? s.local.address, port: s.local.port),
            remote: s.remote.port == 0 ? nil : Endpoint(address: s.remote.address.unmappedIPv4 ?? s.remote.address, port: s.remote.port),
            netns: 0)
        if !filter.isEmpty, !admits(flow, owner) { return }
        var r = Record(seq: nextSeq(), time: WallClock.now(), event: .close)
        r.flow = flow
        r.process = owner
        r.verdict = Verdict(action: .deny, rule: rule)
        r.close = CloseDetails(durationNanoseconds: 0, bytesIn: nil, bytesOut: nil, reason: .policy, errno: ECONNABORTED)
        flowRecords &+= 1
        eventCounts.4 &+= 1
        sink.emit(r)
    }

    /// A policy was loaded, or a reload was rejected.
    public func emitPolicyStatus(_ status: PolicyStatus) {
        var r = Record(seq: nextSeq(), time: WallClock.now(), event: .policy)
        r.policyStatus = status
        emitStream(r)
    }

    /// deny and log records emitted (aggregated ones count once).
    @exclusivity(unchecked) public private(set) var policyRecords: UInt64 = 0

    func onListen(_ e: UnsafePointer<sf_event>) {
        var flow = makeFlow(e, direction: .inbound, withRemote: false)
        flow.backlog = e.pointee.backlog
        flow.dualStack =
            flow.family == .ipv6 && !flow.mapped && flow.local.address.isUnspecified
            && e.pointee.sock.flags & UInt8(SF_SOCK_V6ONLY.rawValue) == 0
        let owner = processes.record(for: e.pointee.task)
        table.insert(.init(flow: flow, owner: owner, role: .listener, accepted: false, since: e.pointee.hdr.ts_ns))
        emitFlow(.listen, e, flow, owner)
    }

    func onConnect(_ e: UnsafePointer<sf_event>) {
        let flow = makeFlow(e, direction: .outbound, withRemote: true)
        let owner = processes.record(for: e.pointee.task)
        table.insert(.init(flow: flow, owner: owner, role: .outbound, accepted: false, since: e.pointee.hdr.ts_ns))
        emitFlow(.connect, e, flow, owner)
    }

    func onEstablished(_ e: UnsafePointer<sf_event>) {
        let cookie = e.pointee.sock.cookie
        if e.pointee.role == FlowRole.outbound.rawValue {
            let flow = makeFlow(e, direction: .outbound, withRemote: true)
            var owner = table.withEntry(cookie) { e -> ProcessRecord? in
                e.flow.local = flow.local  // the final local endpoint
                return e.owner
            } ?? nil
            if owner == nil {
                owner = processes.owner(e.pointee.task)  // its connect record was lost
                table.insert(.init(flow: flow, owner: owner, role: .outbound, accepted: false, since: e.pointee.hdr.ts_ns))
            }
            emitFlow(.established, e, flow, owner)
        } else {
            // Passive: no process holds it until accept() returns it.
            var flow = makeFlow(e, direction: .inbound, withRemote: true)
            if e.pointee.listener_cookie != 0 { flow.listener = FlowID(boot: bootTag, cookie: e.pointee.listener_cookie) }
            table.insert(.init(flow: flow, owner: nil, role: .inbound, accepted: false, since: e.pointee.hdr.ts_ns))
            emitFlow(.established, e, flow, nil)
        }
    }

    func onAccept(_ e: UnsafePointer<sf_event>) {
        let cookie = e.pointee.sock.cookie
        let owner = processes.record(for: e.pointee.task)
        // Endpoints as the handshake saw them: at accept a reset socket reads port 0.
        let known = table.withEntry(cookie) { e -> Flow in
            e.owner = owner
            e.accepted = true
            return e.flow
        }
        let flow: Flow
        if let known {
            flow = known
        } else {
            flow = makeFlow(e, direction: .inbound, withRemote: true)
            if !table.closedRecently(cookie), e.pointee.tcp_state != TCPState.close.rawValue {
                table.insert(.init(flow: flow, owner: owner, role: .inbound, accepted: true, since: e.pointee.hdr.ts_ns))
            }
        }
        emitFlow(.accept, e, flow, owner)
    }

    func onClose(_ e: UnsafePointer<sf_event>) {
        let entry = table.remove(e.pointee.sock.cookie)
        let role = FlowRole(rawValue: e.pointee.role) ?? entry?.role ?? .outbound
        var flow: Flow
        if let entry {
            flow = entry.flow
        } else {
            flow = makeFlow(e, direction: role == .outbound ? .outbound : .inbound, withRemote: role != .listener)
            if e.pointee.listener_cookie != 0 { flow.listener = FlowID(boot: bootTag, cookie: e.pointee.listener_cookie) }
        }
        var owner = entry?.owner
        if owner == nil, role != .inbound {
            owner = processes.owner(e.pointee.task)  // not in the table: lost or overflowed
        }
        let end = e.pointee.hdr.ts_ns
        // The kernel's start, or, when the connection's slot was taken, ours.
        let start = e.pointee.start_ns != 0 ? e.pointee.start_ns : entry?.since ?? 0
        var details = CloseDetails(
            durationNanoseconds: end >= start && start != 0 ? end - start : 0,
            bytesIn: nil, bytesOut: nil,
            reason: Self.closeReason(
                role: role, oldState: e.pointee.tcp_state, skErr: Int32(e.pointee.sk_err),
                accepted: entry?.accepted ?? (role != .inbound)),
            errno: Int32(e.pointee.sk_err))
        var policyVerdict: Verdict?
        if !policyDestroys.isEmpty, let rule = policyDestroys.removeValue(forKey: e.pointee.sock.cookie) {
            details.reason = .policy
            policyVerdict = Verdict(action: .deny, rule: rule)
        }
        if role != .listener {
            let bytes = Self.payloadBytes(e.pointee, role: role)
            details.bytesIn = bytes.in
            details.bytesOut = bytes.out
        }
        emitFlow(.close, e, flow, owner, close: details, verdict: policyVerdict)
    }

    /// Payload bytes from the kernel's sequence-space counters: bytes_received
    /// counts the peer's FIN, bytes_acked counts our FIN and, on the active side,
    /// our SYN.
    public static func payloadBytes(_ raw: sf_event, role: FlowRole) -> (in: UInt64, out: UInt64) {
        let finRcvd: UInt64 = raw.close_flags & UInt8(SF_CLOSE_FIN_RCVD.rawValue) != 0 ? 1 : 0
        let finAcked: UInt64 = raw.close_flags & UInt8(SF_CLOSE_FIN_ACKED.rawValue) != 0 ? 1 : 0
        let syn: UInt64 = role == .outbound && raw.bytes_acked > 0 ? 1 : 0
        let bytesIn = raw.bytes_received >= finRcvd ? raw.bytes_received - finRcvd : 0
        let sub = syn + finAcked
        let bytesOut = raw.bytes_acked >= sub ? raw.bytes_acked - sub : 0
        return (bytesIn, bytesOut)
    }

    /// Why a flow ended, from the state it left and the kernel's sk_err.
    public static func closeReason(role: FlowRole, oldState: UInt8, skErr: Int32, accepted: Bool) -> CloseReason {
        if role == .listener { return .normal }
        if role == .inbound && !accepted { return .aborted }
        switch skErr {
        case ECONNREFUSED: return .refused
        case ETIMEDOUT: return .timeout
        case ECONNRESET, EPIPE: return .reset
        case 0: break
        default: return .error
        }
        switch TCPState(rawValue: oldState) {
        case .synSent, .synRecv: return .aborted  // closed during the handshake
        case .established, .closeWait, .finWait1: return .reset  // we sent an RST (abort, linger 0, unread data)
        default: return .normal
        }
    }

    // MARK: helpers

    func makeFlow(_ e: UnsafePointer<sf_event>, direction: Direction, withRemote: Bool) -> Flow {
        let s = e.pointee.sock
        var family: IPAddress.Family = s.family == UInt16(AF_INET6) ? .ipv6 : .ipv4
        var local = withUnsafeBytes(of: s.laddr) { IPAddress(family: family, raw: $0) }
        var remote = withUnsafeBytes(of: s.raddr) { IPAddress(family: family, raw: $0) }
        var mapped = false
        if family == .ipv6, let l4 = local.unmappedIPv4 {
            // An AF_INET6 socket talking IPv4: both ends are mapped (the remote may
            // still be unset on a listener). Reported as IPv4, marked.
            if let r4 = remote.unmappedIPv4 {
                remote = r4
            } else if remote.isUnspecified {
                remote = IPAddress(family: .ipv4, bytes: (0, 0))
            }
            local = l4
            family = .ipv4
            mapped = true
        } else if family == .ipv6, local.isUnspecified, let r4 = remote.unmappedIPv4 {
            remote = r4
            local = IPAddress(family: .ipv4, bytes: (0, 0))
            family = .ipv4
            mapped = true
        }
        return Flow(
            id: FlowID(boot: bootTag, cookie: s.cookie),
            family: family, mapped: mapped, direction: direction,
            local: Endpoint(address: local, port: s.lport),
            remote: withRemote && (s.rport != 0 || !remote.isUnspecified) ? Endpoint(address: remote, port: s.rport) : nil,
            netns: s.netns)
    }

    func emitFlow(_ type: EventType, _ e: UnsafePointer<sf_event>, _ flow: Flow, _ owner: ProcessRecord?,
                  close: CloseDetails? = nil, verdict: Verdict? = nil) {
        if !filter.isEmpty, !admits(flow, owner) { return }
        var r = Record(seq: nextSeq(), time: clock.wallTime(kernelNanoseconds: e.pointee.hdr.ts_ns), event: type)
        r.flow = flow
        r.process = owner
        r.close = close
        if !flowVerdicts.isEmpty, let v = flowVerdicts[flow.id.cookie] {
            r.verdict = v
            if type == .close { flowVerdicts[flow.id.cookie] = nil }
        }
        if let verdict { r.verdict = verdict }
        flowRecords &+= 1
        switch type {
        case .listen: eventCounts.0 &+= 1
        case .connect: eventCounts.1 &+= 1
        case .established: eventCounts.2 &+= 1
        case .accept: eventCounts.3 &+= 1
        default: eventCounts.4 &+= 1
        }
        sink.emit(r)
    }

    func admits(_ flow: Flow, _ owner: ProcessRecord?) -> Bool {
        if let ports = filter.ports {
            let rport = flow.remote?.port ?? 0
            if !ports.contains(flow.local.port) && !ports.contains(rport) { return false }
        }
        if let pids = filter.pids {
            if let owner { return pids.contains(owner.pid) }
            guard let l = flow.listener, let lo = table.owner(of: l.cookie) else { return false }
            return pids.contains(lo.pid)
        }
        return true
    }
}

/// The first 8 hex digits of the kernel's boot id, as a number: the `boot` part of
/// every flow id.
public enum BootID {
    public static func tag(path: String = "/proc/sys/kernel/random/boot_id") -> UInt32 {
        guard let text = FileIO.readString(path) else { return 0 }
        let hex = text.prefix(8)
        return UInt32(hex, radix: 16) ?? 0
    }
}
