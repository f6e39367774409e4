import CSockFlowABI

/// What a record reports. Flow events come from the kernel; `start`, `lost` and
/// `stop` describe the stream itself.
public enum EventType: String, Sendable, CaseIterable {
    case start
    case listen
    case connect
    case established
    case accept
    case close
    case deny
    case log
    case policy
    case lost
    case overflow
    case stop

    public var isFlowEvent: Bool {
        switch self {
        case .listen, .connect, .established, .accept, .close: true
        case .start, .deny, .log, .policy, .lost, .overflow, .stop: false
        }
    }
}

public enum Direction: String, Sendable {
    case inbound, outbound
}

public enum TransportProtocol: String, Sendable {
    case tcp, udp
}

/// A flow's identity in records: the boot it belongs to and the socket cookie.
/// Printed as 24 hex digits: 8 of the boot id, 16 of the cookie. The same socket
/// gets the same id from any sockflow run during one boot.
public struct FlowID: Sendable, Hashable, CustomStringConvertible {
    public let boot: UInt32
    public let cookie: UInt64

    public init(boot: UInt32, cookie: UInt64) {
        self.boot = boot
        self.cookie = cookie
    }

    public var description: String {
        var b = ByteBuffer(capacity: 32)
        b.appendHex(UInt64(boot), width: 8)
        b.appendHex(cookie, width: 16)
        return b.string
    }
}

/// The socket side of a record.
public struct Flow: Sendable, Equatable {
    public init(id: FlowID, proto: TransportProtocol = .tcp, family: IPAddress.Family, mapped: Bool, direction: Direction,
                local: Endpoint, remote: Endpoint?, netns: UInt32, backlog: UInt32? = nil, dualStack: Bool? = nil,
                listener: FlowID? = nil) {
        self.id = id
        self.proto = proto
        self.family = family
        self.mapped = mapped
        self.direction = direction
        self.local = local
        self.remote = remote
        self.netns = netns
        self.backlog = backlog
        self.dualStack = dualStack
        self.listener = listener
    }

    public var id: FlowID
    public var cookie: UInt64 { id.cookie }
    public var proto: TransportProtocol = .tcp
    public var family: IPAddress.Family
    /// The socket is AF_INET6 but its addresses are IPv4-mapped; they are reported as IPv4.
    public var mapped: Bool
    public var direction: Direction
    public var local: Endpoint
    /// nil for a listener or an unconnected socket: never 0.0.0.0:0.
    public var remote: Endpoint?
    /// Inode number of the socket's network namespace.
    public var netns: UInt32
    /// Listeners: the accept-queue limit given to listen().
    public var backlog: UInt32?
    /// Listeners: an AF_INET6 wildcard listener without IPV6_V6ONLY, which takes IPv4 too.
    public var dualStack: Bool?
    /// Accepted flows: the listener they came from.
    public var listener: FlowID?
}

public enum CloseReason: String, Sendable {
    /// FIN exchange, or a listener closed.
    case normal
    /// An RST ended an established flow (sent or received).
    case reset
    /// The peer answered our SYN with an RST.
    case refused
    /// Our SYN (or data) was never answered.
    case timeout
    /// The flow ended before anyone accepted it, or during the handshake.
    case aborted
    /// Another error (unreachable, ...).
    case error
    /// sockflow destroyed it: a reloaded policy denies it.
    case policy
}

public struct CloseDetails: Sendable {
    public var durationNanoseconds: UInt64
    /// Payload bytes received and acknowledged-sent; nil for listeners.
    public var bytesIn: UInt64?
    public var bytesOut: UInt64?
    public var reason: CloseReason
    /// The kernel's sk_err at close (0 when none).
    public var errno: Int32
}

public struct LostDetails: Sendable {
    public enum Reason: String, Sendable {
        /// The kernel found the ring buffer full and could not reserve the records.
        case ringBufferFull = "ring_buffer_full"
        /// Sockets the kernel's flow table had no room for: their later records
        /// (established, close) cannot be written. Counts sockets.
        case kernelTableFull = "kernel_table_full"
        /// Samples that could not be decoded.
        case undecodable
    }
    public var count: UInt64
    public var reason: Reason
}

/// A policy decision that is reported: a denial, or a `log` rule's match.
public struct PolicyDetails: Sendable {
    public var hook: Policy.Hook
    /// Identical decisions this record stands for (aggregated over a second).
    public var count: UInt64
}

/// A policy was loaded, or a reload was rejected (the previous policy stays).
public struct PolicyStatus: Sendable {
    public var loaded: Bool
    public var file: String
    public var rules: Int
    public var error: String?
    /// Existing sockets the new policy denied and sockflow destroyed.
    public var destroyed: Int

    public init(loaded: Bool, file: String, rules: Int, error: String?, destroyed: Int) {
        self.loaded = loaded
        self.file = file
        self.rules = rules
        self.error = error
        self.destroyed = destroyed
    }
}

/// A bounded table refused entries. Records are still written, but flows not in
/// the flow table lose what only the table knew (an inbound flow's acceptor on
/// its close record).
public struct OverflowDetails: Sendable {
    public var table: String
    public var limit: Int
    /// Entries refused since the start (cumulative).
    public var untracked: UInt64
}

/// The allow/deny decision on a flow. Without a policy everything is allowed.
public struct Verdict: Sendable, Equatable {
    public enum Action: String, Sendable {
        case allow, deny, log
    }
    public var action: Action
    public var rule: String?

    public static let allow = Verdict(action: .allow, rule: nil)
}

/// The owner of a flow, as one record shows it: the process instance (shared by
/// every record of that process, its JSON encoded once) plus the thread that acted
/// and the thread's name at the event.
public struct ProcessRecord: Sendable {
    public let instance: ProcessInstance
    public let tid: Int32
    /// The thread's comm as the kernel recorded it (up to 16 bytes, NUL-padded).
    let commBytes: (UInt64, UInt64)

    public init(instance: ProcessInstance, task: sf_task) {
        self.instance = instance
        self.tid = Int32(bitPattern: task.tid)
        self.commBytes = Swift.withUnsafeBytes(of: task.comm) { $0.loadUnaligned(as: (UInt64, UInt64).self) }
    }

    public var pid: Int32 { instance.pid }
    public var ppid: Int32 { instance.ppid }
    public var uid: UInt32 { instance.uid }
    public var gid: UInt32 { instance.gid }
    public var cgroupID: UInt64 { instance.cgroupID }
    public var comm: String { ProcessInstance.string(commBytes) }
    /// The executable's file name as the kernel had it (may be cut at 39 bytes).
    public var exeName: String { instance.exeName }
    public var exe: String? { instance.details?.exe }
    public var cmdline: [String]? { instance.details?.cmdline }
    public var cgroup: String? { instance.cgroup?.path }
    public var container: ContainerInfo? { instance.cgroup?.container }
    public var details: ProcessDetails? { instance.details }
    public var isKernelThread: Bool { instance.isKernelThread }
}

/// Facts sockflow itself states in `start` and `stop` records.
public struct StreamDetails: Sendable {
    public var version: String = ""
    public var kernel: String = ""
    public var hooks: [String] = []
    public var filters: [(String, String)] = []
    public var ringBufferBytes: Int = 0
    /// stop: why the stream ended
    public var stopReason: String = ""
    /// stop: counters, in order
    public var counters: [(String, UInt64)] = []

    public init() {}
}

/// One line of sockflow's output.
public struct Record: Sendable {
    public var seq: UInt64
    /// Wall-clock nanoseconds since the Unix epoch.
    public var time: Int64
    public var event: EventType
    public var flow: Flow?
    public var process: ProcessRecord?
    public var verdict: Verdict = .allow
    public var close: CloseDetails?

    public init(seq: UInt64, time: Int64, event: EventType) {
        self.seq = seq
        self.time = time
        self.event = event
    }

    public var lost: LostDetails? { get { self[rare: \.lost] } set { self[rare: \.lost] = newValue } }
    public var overflow: OverflowDetails? { get { self[rare: \.overflow] } set { self[rare: \.overflow] = newValue } }
    public var policy: PolicyDetails? { get { self[rare: \.policy] } set { self[rare: \.policy] = newValue } }
    public var policyStatus: PolicyStatus? {
        get { self[rare: \.policyStatus] }
        set { self[rare: \.policyStatus] = newValue }
    }
    public var stream: StreamDetails? { get { self[rare: \.stream] } set { self[rare: \.stream] = newValue } }

    /// What only stream, loss and policy records carry, out of line: a flow
    /// record is built, copied and destroyed a few times on its way out, and
    /// these fields made it 440 bytes instead of 248. Shared between copies,
    /// copied before a write (copy on write), so Record stays a value.
    struct RareFields: Sendable {
        var lost: LostDetails?
        var overflow: OverflowDetails?
        var policy: PolicyDetails?
        var policyStatus: PolicyStatus?
        var stream: StreamDetails?
    }

    final class RareBox: @unchecked Sendable {
        var fields: RareFields
        init(_ fields: RareFields) { self.fields = fields }
    }

    private var rare: RareBox?

    /// One field of the box: no box is made to store a nil, and a shared box is
    /// copied before a write.
    private subscript<T>(rare field: WritableKeyPath<RareFields, T?>) -> T? {
        get { rare?.fields[keyPath: field] }
        set {
            if rare == nil {
                guard newValue != nil else { return }
                rare = RareBox(RareFields())
            } else if !isKnownUniquelyReferenced(&rare) {
                rare = RareBox(rare!.fields)
            }
            rare!.fields[keyPath: field] = newValue
        }
    }
}
