#if canImport(Glibc)
import Glibc
#endif
import CSockFlowABI
import Yams

/// A policy the parser refused: where, and what is wrong.
public struct PolicyError: Error, Sendable, Equatable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let column: Int
    public let message: String

    public init(file: String, line: Int, column: Int, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.message = message
    }

    public var description: String { "\(file):\(line):\(column): \(message)" }
}

/// Resolves what a policy names on this machine. Tests substitute their own.
public protocol PolicyEnvironment {
    /// The executable at an absolute path, or why it cannot be used.
    func executable(_ path: String) -> Result<Policy.Executable, PolicyEnvironmentError>
    /// A cgroup v2 directory, by path under the cgroup2 root.
    func cgroup(_ path: String) -> Result<Policy.CgroupMatch, PolicyEnvironmentError>
    func uid(named: String) -> UInt32?
    func gid(named: String) -> UInt32?
}

public struct PolicyEnvironmentError: Error, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
}

/// This machine: stat() for executables, the cgroup2 mount for cgroups, NSS for names.
public struct SystemPolicyEnvironment: PolicyEnvironment {
    public let cgroupRoot: String?

    public init(cgroupRoot: String? = CgroupFS.mountPoint()) { self.cgroupRoot = cgroupRoot }

    public func executable(_ path: String) -> Result<Policy.Executable, PolicyEnvironmentError> {
        var st = stat()
        guard stat(path, &st) == 0 else {
            return .failure(.init("\(path): \(FileIO.errnoText(errno))"))
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else { return .failure(.init("\(path) is not a regular file")) }
        return .success(Policy.Executable(path: path, inode: UInt64(st.st_ino), device: Self.kernelDevice(UInt64(st.st_dev))))
    }

    /// stat()'s st_dev (glibc encoding) to the kernel's dev_t (major << 20 | minor),
    /// which is what the kernel has in i_sb->s_dev.
    public static func kernelDevice(_ dev: UInt64) -> UInt32 {
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~0xfff)
        let minor = (dev & 0xff) | ((dev >> 12) & ~0xff)
        return UInt32(truncatingIfNeeded: (major << 20) | minor)
    }

    public func cgroup(_ path: String) -> Result<Policy.CgroupMatch, PolicyEnvironmentError> {
        guard let root = cgroupRoot else { return .failure(.init("this machine has no cgroup v2 hierarchy")) }
        let rel = path.hasPrefix(root + "/") ? String(path.dropFirst(root.count)) : path
        let clean = "/" + rel.split(separator: "/").joined(separator: "/")
        guard let id = CgroupFS.id(ofDirectory: root + clean) else {
            return .failure(.init("no cgroup v2 directory \(root + clean)"))
        }
        let level = clean.split(separator: "/").count
        return .success(Policy.CgroupMatch(path: clean, id: id, level: level))
    }

    public func uid(named name: String) -> UInt32? { getpwnam(name).map { $0.pointee.pw_uid } }
    public func gid(named name: String) -> UInt32? { getgrnam(name).map { $0.pointee.gr_gid } }
}

/// Reads a policy from YAML. Every error names the file, line and column, and
/// nothing is half-parsed: a policy is either wholly valid or rejected.
public struct PolicyParser {
    public var file: String
    public var environment: PolicyEnvironment

    public init(file: String, environment: PolicyEnvironment = SystemPolicyEnvironment()) {
        self.file = file
        self.environment = environment
    }

    public static func load(path: String, environment: PolicyEnvironment = SystemPolicyEnvironment()) throws -> Policy {
        guard let bytes = FileIO.readFile(path, limit: 16 << 20) else {
            throw PolicyError(file: path, line: 0, column: 0, message: "cannot read the policy: \(FileIO.errnoText(errno))")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw PolicyError(file: path, line: 1, column: 1, message: "the policy is not UTF-8 text")
        }
        return try PolicyParser(file: path, environment: environment).parse(text)
    }

    public func parse(_ text: String) throws -> Policy {
        let root: Node
        do {
            guard let node = try Yams.compose(yaml: text) else {
                throw PolicyError(file: file, line: 1, column: 1, message: "the policy is empty")
            }
            root = node
        } catch let e as YamlError {
            throw yamlError(e)
        }
        let top = try mapping(root, "the policy")
        try allowKeys(top, ["default", "rules"], in: "the policy")
        guard let d = top[key: "default"] else {
            throw error(root, "missing 'default': say what happens when no rule matches (allow or deny)")
        }
        let defaultAction = try enumValue(d.value, Policy.Action.self, what: "'default'")
        var rules: [Policy.Rule] = []
        if let r = top[key: "rules"] {
            guard let seq = r.value.sequence else { throw error(r.value, "'rules' must be a list of rules") }
            var names: [String: Int] = [:]
            for node in seq {
                let rule = try parseRule(node)
                if let first = names[rule.name] {
                    throw error(node, "duplicate rule name '\(rule.name)' (first at line \(first))")
                }
                names[rule.name] = rule.line
                rules.append(rule)
            }
            if rules.count > Int(SF_MAX_RULES) {
                throw error(seq[Int(SF_MAX_RULES)], "too many rules: \(rules.count), the kernel maps hold \(SF_MAX_RULES)")
            }
        }
        return Policy(defaultAction: defaultAction, rules: rules)
    }

    // MARK: rules

    static let ruleKeys = ["name", "action", "on", "protocol", "family", "local", "remote", "process"]

    func parseRule(_ node: Node) throws -> Policy.Rule {
        let m = try mapping(node, "a rule")
        try allowKeys(m, Self.ruleKeys, in: "a rule")
        guard let n = m[key: "name"] else { throw error(node, "a rule needs a 'name'") }
        let name = try string(n.value, "'name'")
        guard !name.isEmpty, name.count <= 64,
            name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) })
        else {
            throw error(n.value, "rule name '\(name)': use 1 to 64 letters, digits, '-', '_' or '.'")
        }
        guard let a = m[key: "action"] else { throw error(node, "rule '\(name)' needs an 'action' (allow, deny or log)") }
        guard let on = m[key: "on"] else {
            throw error(node, "rule '\(name)' needs 'on': one or more of \(Policy.Hook.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var hooks: [Policy.Hook] = []
        for h in try list(on.value) {
            let hook = try enumValue(h, Policy.Hook.self, what: "a hook in 'on'")
            if !hooks.contains(hook) { hooks.append(hook) }
        }
        if hooks.isEmpty { throw error(on.value, "'on' names no hook") }
        var rule = Policy.Rule(name: name, action: try enumValue(a.value, Policy.Action.self, what: "'action'"), hooks: hooks)
        rule.line = node.mark?.line ?? 0
        if let p = m[key: "protocol"] {
            let proto = try enumValue(p.value, Policy.TransportProtocol.self, what: "'protocol'")
            for h in hooks {
                let needed: Policy.TransportProtocol? = switch h {
                case .listen, .accept: .tcp
                case .udpSend, .udpRecv: .udp
                case .connect, .socket: nil
                }
                if let needed, needed != proto {
                    throw error(p.value, "protocol \(proto.rawValue) cannot apply to '\(h.rawValue)', which is \(needed.rawValue) only")
                }
            }
            rule.proto = proto
        }
        if let f = m[key: "family"] {
            let text = try string(f.value, "'family'")
            switch text {
            case "ipv4": rule.family = .ipv4
            case "ipv6": rule.family = .ipv6
            default: throw error(f.value, "family '\(text)': use ipv4 or ipv6")
            }
        }
        for side in ["local", "remote"] {
            guard let e = m[key: side] else { continue }
            for h in hooks {
                if h == .socket { throw error(e.key, "'\(side)' cannot apply to 'socket': a new socket has no address yet") }
                if h == .listen, side == "remote" { throw error(e.key, "'remote' cannot apply to 'listen': a listener has no peer") }
            }
            let match = try parseEndpoint(e.value, side)
            if side == "local" { rule.local = match } else { rule.remote = match }
        }
        if let p = m[key: "process"] {
            let (pos, neg) = try parseProcess(p.value, allowNot: true)
            for h in hooks where !h.processContext {
                for match in [pos, neg].compactMap({ $0 }) where match.exe != nil || match.comm != nil || match.uid != nil || match.gid != nil {
                    throw error(p.key, "'\(h.rawValue)' decides in softirq, before any process has the socket: its rules can match the process by 'cgroup' only")
                }
            }
            rule.process = pos
            rule.notProcess = neg
        }
        return rule
    }

    func parseEndpoint(_ node: Node, _ side: String) throws -> Policy.EndpointMatch {
        let m = try mapping(node, "'\(side)'")
        try allowKeys(m, ["ports", "cidrs"], in: "'\(side)'")
        var match = Policy.EndpointMatch()
        if let p = m[key: "ports"] {
            let items = try list(p.value)
            if items.isEmpty { throw error(p.value, "'ports' is empty") }
            if items.count > Int(SF_RULE_PORTS) {
                throw error(items[Int(SF_RULE_PORTS)], "too many port entries in '\(side)': at most \(SF_RULE_PORTS) (use ranges, like 8000-8099)")
            }
            match.ports = try items.map(parsePorts)
        }
        if let c = m[key: "cidrs"] {
            let items = try list(c.value)
            if items.isEmpty { throw error(c.value, "'cidrs' is empty") }
            if items.count > Int(SF_RULE_CIDRS) {
                throw error(items[Int(SF_RULE_CIDRS)], "too many CIDRs in '\(side)': at most \(SF_RULE_CIDRS)")
            }
            match.cidrs = try items.map(parseCIDR)
        }
        if match.ports == nil && match.cidrs == nil { throw error(node, "'\(side)' needs 'ports' or 'cidrs'") }
        return match
    }

    func parsePorts(_ node: Node) throws -> Policy.PortRange {
        let text = try string(node, "a port")
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        func port(_ s: Substring) throws -> UInt16 {
            guard let v = Int(s.trimmingPrefix(" ")), v >= 1, v <= 65535 else {
                throw error(node, "port '\(text)': ports are 1 to 65535")
            }
            return UInt16(v)
        }
        switch parts.count {
        case 1:
            let p = try port(parts[0])
            return .init(lo: p, hi: p)
        case 2:
            let lo = try port(parts[0]), hi = try port(parts[1])
            guard lo <= hi else { throw error(node, "port range '\(text)' runs backwards") }
            return .init(lo: lo, hi: hi)
        default:
            throw error(node, "port '\(text)': give a port (80) or a range (8000-8080)")
        }
    }

    func parseCIDR(_ node: Node) throws -> Policy.CIDR {
        let text = try string(node, "a CIDR")
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = IPAddress(String(parts[0])) else {
            throw error(node, "CIDR '\(text)' is not an IPv4 or IPv6 network (like 10.0.0.0/8 or fd00::/8)")
        }
        let bits = address.family == .ipv4 ? 32 : 128
        var prefix = bits
        if parts.count == 2 {
            guard let p = Int(parts[1]), p >= 0, p <= bits else {
                throw error(node, "CIDR '\(text)': the prefix length must be 0 to \(bits)")
            }
            prefix = p
        }
        // IPv4-mapped networks are IPv4 networks.
        if let v4 = address.unmappedIPv4, prefix >= 96 {
            return Policy.CIDR(network: v4, prefix: prefix - 96)
        }
        return Policy.CIDR(network: address, prefix: prefix)
    }

    func parseProcess(_ node: Node, allowNot: Bool) throws -> (Policy.ProcessMatch?, Policy.ProcessMatch?) {
        let m = try mapping(node, "'process'")
        try allowKeys(m, allowNot ? ["exe", "comm", "uid", "gid", "cgroup", "not"] : ["exe", "comm", "uid", "gid", "cgroup"],
                      in: allowNot ? "'process'" : "'not'")
        var p = Policy.ProcessMatch()
        if let e = m[key: "exe"] {
            let items = try list(e.value)
            if items.count > Int(SF_RULE_EXES) { throw error(items[Int(SF_RULE_EXES)], "too many executables: at most \(SF_RULE_EXES)") }
            p.exe = try items.map { item in
                let path = try string(item, "an executable")
                guard path.hasPrefix("/") else { throw error(item, "executable '\(path)' must be an absolute path") }
                switch environment.executable(path) {
                case .success(let x): return x
                case .failure(let f): throw error(item, "executable \(f.message)")
                }
            }
        }
        if let c = m[key: "comm"] {
            let items = try list(c.value)
            if items.count > Int(SF_RULE_COMMS) { throw error(items[Int(SF_RULE_COMMS)], "too many comm names: at most \(SF_RULE_COMMS)") }
            p.comm = try items.map { item in
                let s = try string(item, "a comm")
                guard !s.isEmpty, s.utf8.count < Int(SF_COMM_LEN) else {
                    throw error(item, "comm '\(s)': the kernel keeps 1 to \(SF_COMM_LEN - 1) bytes of a name")
                }
                return s
            }
        }
        for (key, isUser) in [("uid", true), ("gid", false)] {
            guard let u = m[key: key] else { continue }
            let items = try list(u.value)
            if items.count > Int(SF_RULE_IDS) { throw error(items[Int(SF_RULE_IDS)], "too many \(key)s: at most \(SF_RULE_IDS)") }
            let ids = try items.map { item -> UInt32 in
                let s = try string(item, "a \(key)")
                if let v = UInt32(s) { return v }
                if let v = isUser ? environment.uid(named: s) : environment.gid(named: s) { return v }
                throw error(item, "\(key) '\(s)' is neither a number nor a known \(isUser ? "user" : "group")")
            }
            if isUser { p.uid = ids } else { p.gid = ids }
        }
        if let c = m[key: "cgroup"] {
            let items = try list(c.value)
            if items.count > Int(SF_RULE_CGROUPS) { throw error(items[Int(SF_RULE_CGROUPS)], "too many cgroups: at most \(SF_RULE_CGROUPS)") }
            p.cgroup = try items.map { item in
                let path = try string(item, "a cgroup")
                switch environment.cgroup(path) {
                case .success(let x):
                    guard x.level < 16 else {
                        throw error(item, "cgroup '\(path)' is \(x.level) levels deep; rules can match at most 15")
                    }
                    return x
                case .failure(let f): throw error(item, "cgroup '\(path)': \(f.message)")
                }
            }
        }
        var negated: Policy.ProcessMatch?
        if let n = m[key: "not"] {
            if !allowNot { throw error(n.key, "'not' cannot be nested") }
            let (inner, _) = try parseProcess(n.value, allowNot: false)
            guard let inner, !inner.isEmpty else { throw error(n.value, "'not' matches nothing: give exe, comm, uid, gid or cgroup") }
            negated = inner
        }
        if p.isEmpty && negated == nil { throw error(node, "'process' matches nothing: give exe, comm, uid, gid, cgroup or not") }
        return (p.isEmpty ? nil : p, negated)
    }

    // MARK: node helpers

    func error(_ node: Node, _ message: String) -> PolicyError {
        PolicyError(file: file, line: node.mark?.line ?? 0, column: node.mark?.column ?? 0, message: message)
    }

    func yamlError(_ e: YamlError) -> PolicyError {
        switch e {
        case let .scanner(context, problem, mark, _), let .parser(context, problem, mark, _),
            let .composer(context, problem, mark, _):
            let what = [context?.text, problem].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: ": ")
            return PolicyError(file: file, line: mark.line, column: mark.column, message: "YAML syntax: \(what)")
        default:
            return PolicyError(file: file, line: 1, column: 1, message: "YAML: \(e)")
        }
    }

    func mapping(_ node: Node, _ what: String) throws -> Node.Mapping {
        guard let m = node.mapping else { throw error(node, "\(what) must be a mapping (key: value)") }
        var seen: Set<String> = []
        for (k, _) in m {
            let key = k.string ?? ""
            if !seen.insert(key).inserted { throw error(k, "'\(key)' appears twice in \(what)") }
        }
        return m
    }

    func allowKeys(_ m: Node.Mapping, _ keys: [String], in what: String) throws {
        for (k, _) in m {
            guard let key = k.scalar?.string, keys.contains(key) else {
                throw error(k, "unknown key '\(k.string ?? "?")' in \(what); expected one of: \(keys.joined(separator: ", "))")
            }
        }
    }

    func string(_ node: Node, _ what: String) throws -> String {
        guard let s = node.scalar else { throw error(node, "\(what) must be a single value") }
        return s.string
    }

    /// A list, or a single value as a list of one.
    func list(_ node: Node) throws -> [Node] {
        if let seq = node.sequence { return Array(seq) }
        if node.scalar != nil { return [node] }
        throw error(node, "expected a value or a list of values")
    }

    func enumValue<E: RawRepresentable & CaseIterable>(_ node: Node, _: E.Type, what: String) throws -> E where E.RawValue == String {
        let s = try string(node, what)
        guard let v = E(rawValue: s) else {
            throw error(node, "\(what) '\(s)': use one of \(E.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return v
    }
}

extension Node.Mapping {
    /// The pair for a key, with the key node (for its position).
    subscript(key name: String) -> (key: Node, value: Node)? {
        first { $0.key.scalar?.string == name }
    }
}
