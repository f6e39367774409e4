#if canImport(Glibc)
import Glibc
#endif
import CSockFlowABI

/// A socket policy: ordered rules, first match wins, and a default action.
/// docs/policy.md describes the language; `PolicyParser` reads it from YAML,
/// `PolicyCompiler` turns it into the maps the kernel evaluates, and `decide`
/// here is the reference semantics both must agree with.
public struct Policy: Sendable, Equatable {
    public var defaultAction: Action
    public var rules: [Rule]

    public init(defaultAction: Action, rules: [Rule]) {
        self.defaultAction = defaultAction
        self.rules = rules
    }

    public enum Action: String, Sendable, CaseIterable {
        case allow, deny, log

        var abi: UInt8 {
            switch self {
            case .allow: UInt8(SF_ACTION_ALLOW.rawValue)
            case .deny: UInt8(SF_ACTION_DENY.rawValue)
            case .log: UInt8(SF_ACTION_LOG.rawValue)
            }
        }
    }

    /// Where a rule is enforced.
    public enum Hook: String, Sendable, CaseIterable, Comparable {
        case listen, connect, accept
        case udpSend = "udp-send"
        case udpRecv = "udp-recv"
        case socket

        public var bit: UInt32 {
            switch self {
            case .listen: SF_HOOK_LISTEN.rawValue
            case .connect: SF_HOOK_CONNECT.rawValue
            case .accept: SF_HOOK_ACCEPT.rawValue
            case .udpSend: SF_HOOK_UDP_SEND.rawValue
            case .udpRecv: SF_HOOK_UDP_RECV.rawValue
            case .socket: SF_HOOK_SOCKET.rawValue
            }
        }

        public init?(bit: UInt32) {
            guard let h = Self.allCases.first(where: { $0.bit == bit }) else { return nil }
            self = h
        }

        /// listen, accept and udp-recv concern inbound flows.
        public var isInbound: Bool { self == .listen || self == .accept || self == .udpRecv }

        /// The position of the bit: the kernel's per-hook index.
        public var index: Int { bit.trailingZeroBitCount }

        /// Hooks that run in softirq, with no process to ask: only the socket's
        /// cgroup is known there.
        public var processContext: Bool { self != .accept && self != .udpRecv }

        public static func < (a: Hook, b: Hook) -> Bool { a.index < b.index }
    }

    public enum TransportProtocol: String, Sendable, CaseIterable {
        case tcp, udp

        var abi: UInt8 { self == .tcp ? UInt8(IPPROTO_TCP) : UInt8(IPPROTO_UDP) }
    }

    public struct PortRange: Sendable, Equatable {
        public var lo: UInt16
        public var hi: UInt16

        public func contains(_ p: UInt16) -> Bool { lo <= p && p <= hi }
    }

    public struct CIDR: Sendable, Equatable, CustomStringConvertible {
        public var network: IPAddress
        public var prefix: Int

        public var family: IPAddress.Family { network.family }
        public var description: String { "\(network)/\(prefix)" }

        /// Whether `a` (normalized: IPv4-mapped counts as IPv4) is inside.
        public func contains(_ a: IPAddress) -> Bool {
            let a = a.unmappedIPv4 ?? a
            guard a.family == family else { return false }
            let bits = family == .ipv4 ? 32 : 128
            let x = a.bytes, n = network.bytes
            var left = prefix
            for i in 0..<(bits / 8) {
                guard left > 0 else { break }
                let m: UInt8 = left >= 8 ? 0xff : UInt8(0xff) << UInt8(8 - left)
                if x[i] & m != n[i] & m { return false }
                left -= 8
            }
            return true
        }
    }

    public struct EndpointMatch: Sendable, Equatable {
        public var ports: [PortRange]?
        public var cidrs: [CIDR]?

        public init(ports: [PortRange]? = nil, cidrs: [CIDR]? = nil) {
            self.ports = ports
            self.cidrs = cidrs
        }

        /// An endpoint the hook does not know (a listener's remote) matches
        /// nothing that asks about it.
        func matches(_ e: (address: IPAddress?, port: UInt16?)) -> Bool {
            if let ports {
                guard let p = e.port, ports.contains(where: { $0.contains(p) }) else { return false }
            }
            if let cidrs {
                guard let a = e.address, cidrs.contains(where: { $0.contains(a) }) else { return false }
            }
            return true
        }
    }

    /// An executable, by the inode and device of the path as resolved when the
    /// policy was loaded: renaming a process does not change it, and a copy
    /// elsewhere is another file.
    public struct Executable: Sendable, Equatable {
        public var path: String
        public var inode: UInt64
        /// Kernel encoding, major << 20 | minor (not stat()'s st_dev).
        public var device: UInt32
    }

    public struct CgroupMatch: Sendable, Equatable {
        public var path: String
        public var id: UInt64
        /// Depth under the cgroup v2 root: 1 for a child of the root.
        public var level: Int
    }

    public struct ProcessMatch: Sendable, Equatable {
        public var exe: [Executable]?
        public var comm: [String]?
        public var uid: [UInt32]?
        public var gid: [UInt32]?
        public var cgroup: [CgroupMatch]?

        public init() {}

        public var isEmpty: Bool { exe == nil && comm == nil && uid == nil && gid == nil && cgroup == nil }

        func matches(_ p: Context.Process) -> Bool {
            if let exe {
                guard let e = p.exe, exe.contains(where: { $0.inode == e.inode && $0.device == e.device }) else {
                    return false
                }
            }
            if let comm {
                guard let c = p.comm, comm.contains(c) else { return false }
            }
            if let uid {
                guard let u = p.uid, uid.contains(u) else { return false }
            }
            if let gid {
                guard let g = p.gid, gid.contains(g) else { return false }
            }
            if let cgroup {
                guard cgroup.contains(where: { c in p.cgroupAncestors.count > c.level && p.cgroupAncestors[c.level] == c.id })
                else { return false }
            }
            return true
        }
    }

    public struct Rule: Sendable, Equatable {
        public var name: String
        public var action: Action
        public var hooks: [Hook]
        public var proto: TransportProtocol?
        public var family: IPAddress.Family?
        public var local: EndpointMatch?
        public var remote: EndpointMatch?
        public var process: ProcessMatch?
        public var notProcess: ProcessMatch?
        /// Where the rule starts in its file (for messages).
        public var line: Int = 0

        public init(name: String, action: Action, hooks: [Hook]) {
            self.name = name
            self.action = action
            self.hooks = hooks
        }

        public func matches(_ hook: Hook, _ c: Context) -> Bool {
            guard hooks.contains(hook) else { return false }
            if let proto, c.proto != proto { return false }
            if let family, c.family != family { return false }
            if let local, !local.matches(c.local) { return false }
            if let remote, !remote.matches(c.remote) { return false }
            if let process, !process.matches(c.process) { return false }
            if let notProcess, notProcess.matches(c.process) { return false }
            return true
        }
    }

    /// What a hook knows about the call it is deciding.
    public struct Context: Sendable {
        public struct Process: Sendable {
            public var exe: (inode: UInt64, device: UInt32)?
            public var comm: String?
            public var uid: UInt32?
            public var gid: UInt32?
            /// Cgroup ids from the root down: [0] the root, [1] its child, ...
            public var cgroupAncestors: [UInt64] = []

            public init() {}
        }

        public var proto: TransportProtocol
        /// Normalized: an IPv4-mapped address counts as IPv4.
        public var family: IPAddress.Family
        public var local: (address: IPAddress?, port: UInt16?)
        public var remote: (address: IPAddress?, port: UInt16?)
        public var process: Process

        public init(proto: TransportProtocol, family: IPAddress.Family, local: (IPAddress?, UInt16?) = (nil, nil),
                    remote: (IPAddress?, UInt16?) = (nil, nil), process: Process = Process()) {
            self.proto = proto
            self.family = family
            self.local = local
            self.remote = remote
            self.process = process
        }
    }

    /// The first rule that matches, or the default.
    public func decide(_ hook: Hook, _ c: Context) -> (action: Action, rule: Int?) {
        for (i, r) in rules.enumerated() where r.matches(hook, c) {
            return (r.action, i)
        }
        return (defaultAction, nil)
    }
}
