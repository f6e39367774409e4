#if canImport(Glibc)
import Glibc
#endif
import CSockFlowABI

/// A policy in the form the kernel evaluates: one `sf_rule` per rule, and per hook
/// the indices of the rules that apply to it, in policy order.
public struct CompiledPolicy: @unchecked Sendable {  // C structs of plain values
    public let policy: Policy
    public let rules: [sf_rule]
    /// Indexed by `Policy.Hook.index`.
    public let hookRules: [[UInt16]]

    public var defaultAction: UInt8 { policy.defaultAction.abi }
}

public enum PolicyCompiler {
    public static func compile(_ policy: Policy) -> CompiledPolicy {
        var rules: [sf_rule] = []
        var hookRules = [[UInt16]](repeating: [], count: Int(SF_HOOK_COUNT))
        for (i, r) in policy.rules.enumerated() {
            rules.append(compile(r))
            for h in r.hooks { hookRules[h.index].append(UInt16(i)) }
        }
        return CompiledPolicy(policy: policy, rules: rules, hookRules: hookRules)
    }

    static func compile(_ r: Policy.Rule) -> sf_rule {
        var s = sf_rule()
        s.hooks = r.hooks.reduce(0) { $0 | $1.bit }
        s.action = r.action.abi
        s.protocol = r.proto?.abi ?? 0
        s.family = r.family.map { $0 == .ipv4 ? UInt16(AF_INET) : UInt16(AF_INET6) } ?? 0
        if let l = r.local { compile(l, into: &s.local, &s.match, ports: SF_MATCH_LOCAL_PORTS, cidrs: SF_MATCH_LOCAL_CIDRS) }
        if let m = r.remote { compile(m, into: &s.remote, &s.match, ports: SF_MATCH_REMOTE_PORTS, cidrs: SF_MATCH_REMOTE_CIDRS) }
        if let p = r.process {
            compile(p, into: &s.process)
            s.match |= SF_MATCH_PROCESS.rawValue
        }
        if let p = r.notProcess {
            compile(p, into: &s.not_process)
            s.match |= SF_MATCH_NOT_PROCESS.rawValue
        }
        return s
    }

    static func compile(_ e: Policy.EndpointMatch, into m: inout sf_endpoint_match, _ match: inout UInt32,
                        ports: sf_match, cidrs: sf_match) {
        if let p = e.ports {
            withUnsafeMutableBytes(of: &m.ports) { raw in
                let a = raw.bindMemory(to: sf_port_range.self)
                for (i, r) in p.enumerated() { a[i] = sf_port_range(lo: r.lo, hi: r.hi) }
            }
            m.nports = UInt8(p.count)
            match |= ports.rawValue
        }
        if let c = e.cidrs {
            withUnsafeMutableBytes(of: &m.cidrs) { raw in
                let a = raw.bindMemory(to: sf_cidr.self)
                for (i, cidr) in c.enumerated() { a[i] = compile(cidr) }
            }
            m.ncidrs = UInt8(c.count)
            match |= cidrs.rawValue
        }
    }

    /// net and mask in the family's normalized form (IPv4 in the first 4 bytes).
    static func compile(_ c: Policy.CIDR) -> sf_cidr {
        var out = sf_cidr()
        let bytes = c.network.bytes
        var left = c.prefix
        withUnsafeMutableBytes(of: &out.net) { net in
            withUnsafeMutableBytes(of: &out.mask) { mask in
                for i in 0..<bytes.count {
                    let m: UInt8 = left >= 8 ? 0xff : left <= 0 ? 0 : UInt8(0xff) << UInt8(8 - left)
                    mask[i] = m
                    net[i] = bytes[i] & m
                    left -= 8
                }
            }
        }
        out.family = c.family == .ipv4 ? UInt16(AF_INET) : UInt16(AF_INET6)
        return out
    }

    static func compile(_ p: Policy.ProcessMatch, into m: inout sf_process_match) {
        if let exe = p.exe {
            withUnsafeMutableBytes(of: &m.exe) { raw in
                let a = raw.bindMemory(to: sf_exe_id.self)
                for (i, e) in exe.enumerated() { a[i] = sf_exe_id(ino: e.inode, dev: e.device, pad: 0) }
            }
            m.nexe = UInt8(exe.count)
            m.fields |= SF_PROC_EXE.rawValue
        }
        if let cg = p.cgroup {
            withUnsafeMutableBytes(of: &m.cgroup) { raw in
                let a = raw.bindMemory(to: sf_cgroup_match.self)
                for (i, c) in cg.enumerated() { a[i] = sf_cgroup_match(id: c.id, level: UInt32(c.level), pad: 0) }
            }
            m.ncgroup = UInt8(cg.count)
            m.fields |= SF_PROC_CGROUP.rawValue
        }
        if let uid = p.uid {
            withUnsafeMutableBytes(of: &m.uid) { raw in
                for (i, u) in uid.enumerated() { raw.storeBytes(of: u, toByteOffset: i * 4, as: UInt32.self) }
            }
            m.nuid = UInt8(uid.count)
            m.fields |= SF_PROC_UID.rawValue
        }
        if let gid = p.gid {
            withUnsafeMutableBytes(of: &m.gid) { raw in
                for (i, g) in gid.enumerated() { raw.storeBytes(of: g, toByteOffset: i * 4, as: UInt32.self) }
            }
            m.ngid = UInt8(gid.count)
            m.fields |= SF_PROC_GID.rawValue
        }
        if let comm = p.comm {
            withUnsafeMutableBytes(of: &m.comm) { raw in
                for (i, c) in comm.enumerated() {
                    for (j, b) in c.utf8.enumerated() { raw[i * Int(SF_COMM_LEN) + j] = b }
                }
            }
            m.ncomm = UInt8(comm.count)
            m.fields |= SF_PROC_COMM.rawValue
        }
    }
}

extension Policy {
    /// One line per rule, as compiled: what `sockflow policy check` prints.
    public var summary: String {
        var lines = ["default: \(defaultAction.rawValue)", "\(rules.count) rule\(rules.count == 1 ? "" : "s"), first match wins:"]
        for (i, r) in rules.enumerated() {
            var parts = ["\(i + 1). \(r.name): \(r.action.rawValue) on \(r.hooks.map(\.rawValue).joined(separator: ","))"]
            if let p = r.proto { parts.append("protocol \(p.rawValue)") }
            if let f = r.family { parts.append("family \(f == .ipv4 ? "ipv4" : "ipv6")") }
            for (side, e) in [("local", r.local), ("remote", r.remote)] {
                guard let e else { continue }
                if let ports = e.ports {
                    parts.append("\(side) ports " + ports.map { $0.lo == $0.hi ? "\($0.lo)" : "\($0.lo)-\($0.hi)" }.joined(separator: ","))
                }
                if let c = e.cidrs { parts.append("\(side) cidrs " + c.map(\.description).joined(separator: ",")) }
            }
            for (label, p) in [("process", r.process), ("not process", r.notProcess)] {
                guard let p else { continue }
                var f: [String] = []
                if let exe = p.exe { f.append("exe " + exe.map { "\($0.path) (inode \($0.inode), dev \($0.device >> 20):\($0.device & 0xfffff))" }.joined(separator: ",")) }
                if let c = p.comm { f.append("comm " + c.joined(separator: ",")) }
                if let u = p.uid { f.append("uid " + u.map(String.init).joined(separator: ",")) }
                if let g = p.gid { f.append("gid " + g.map(String.init).joined(separator: ",")) }
                if let cg = p.cgroup { f.append("cgroup " + cg.map { "\($0.path) (id \($0.id))" }.joined(separator: ",")) }
                parts.append("\(label) [" + f.joined(separator: "; ") + "]")
            }
            lines.append(parts.joined(separator: ", "))
        }
        return lines.joined(separator: "\n")
    }
}
