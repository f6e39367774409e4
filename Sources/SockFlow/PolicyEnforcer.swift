#if canImport(Glibc)
import Glibc
#endif
import SockFlowCore

/// Applies a policy to sockets that already exist: after a reload swapped it in,
/// lists the sockets (sock_diag, in each namespace sockflow can enter), decides
/// each with the policy's reference semantics (`Policy.decide`, the same the
/// kernel's maps encode) and destroys the denied ones (SOCK_DESTROY, what
/// `ss -K` does).
final class PolicyEnforcer {
    struct Result {
        var examined = 0
        var destroyed = 0
        var failed = 0
    }

    /// Process facts by pid, read once per enforcement pass.
    struct Owner {
        var pid: Int32
        var process: Policy.Context.Process
        var cgroupPath: String
    }

    let builder: RecordBuilder
    /// Enforcement scoped to a cgroup subtree: only its sockets are touched.
    let scope: String?
    let cgroupRoot: String?

    init(builder: RecordBuilder, scope: String?, cgroupRoot: String? = CgroupFS.mountPoint()) {
        self.builder = builder
        self.cgroupRoot = cgroupRoot
        if let scope, let root = cgroupRoot, scope.hasPrefix(root) {
            let rel = String(scope.dropFirst(root.count))
            self.scope = rel.isEmpty ? nil : rel
        } else {
            self.scope = nil
        }
    }

    func enforce(_ policy: Policy) -> Result {
        var result = Result()
        let inodes = Self.socketOwners()
        var owners: [Int32: Owner?] = [:]
        func owner(_ pid: Int32) -> Owner? {
            if let o = owners[pid] { return o }
            let o = readOwner(pid)
            owners[pid] = o
            return o
        }
        for namespace in namespaces(inodes: inodes) {
            let sockets: [SockDiag.Socket]
            if let fd = namespace {
                sockets = (try? SockDiag.inNamespace(fd) { try SockDiag.sockets() }) ?? []
            } else {
                sockets = (try? SockDiag.sockets()) ?? []
            }
            let listenerPorts = Set(sockets.filter(\.isListener).map(\.local.port))
            for s in sockets where s.isLive {
                let tracked = builder.table.owner(of: s.cookie)?.pid
                guard let pid = tracked ?? inodes[s.inode], let o = owner(pid) else { continue }
                if let scope, !(o.cgroupPath == scope || o.cgroupPath.hasPrefix(scope + "/")) { continue }
                result.examined += 1
                guard let (hook, rule) = denial(policy, s, o, inbound: role(s, listenerPorts)) else { continue }
                builder.notePolicyDestroy(cookie: s.cookie, rule: policy.rules[rule].name)
                let done: Bool
                if let fd = namespace {
                    done = (try? SockDiag.inNamespace(fd) { try SockDiag.destroy(s) }) != nil
                } else {
                    done = (try? SockDiag.destroy(s)) != nil
                }
                if done {
                    result.destroyed += 1
                    if tracked == nil || s.proto == .udp {
                        // No close will come from the kernel for it: say so here.
                        builder.emitPolicyClose(s, hook: hook, owner: builder.table.owner(of: s.cookie), rule: policy.rules[rule].name)
                    }
                } else {
                    result.failed += 1
                }
            }
            if let fd = namespace { close(fd) }
        }
        return result
    }

    /// Inbound (accepted) or outbound: the flow table knows; otherwise a socket
    /// whose local port has a listener was accepted.
    func role(_ s: SockDiag.Socket, _ listenerPorts: Set<UInt16>) -> Bool {
        if let e = builder.table[s.cookie] { return e.flow.direction == .inbound }
        return listenerPorts.contains(s.local.port)
    }

    /// The first hook (of those the socket passes through) whose decision is deny.
    func denial(_ policy: Policy, _ s: SockDiag.Socket, _ o: Owner, inbound: Bool) -> (Policy.Hook, Int)? {
        let local = s.local.address.unmappedIPv4 ?? s.local.address
        let remote = s.remote.address.unmappedIPv4 ?? s.remote.address
        let proto: Policy.TransportProtocol = s.proto == .tcp ? .tcp : .udp
        var hooks: [(Policy.Hook, Policy.Context)] = []
        let base = Policy.Context(proto: proto, family: local.family, process: o.process)
        hooks.append((.socket, base))
        if s.isListener {
            var c = base
            c.local = (local, s.local.port)
            hooks.append((.listen, c))
        } else if s.proto == .tcp || s.remote.port != 0 {
            var c = base
            c.local = (local, s.local.port)
            c.remote = (remote, s.remote.port)
            if s.proto == .tcp {
                hooks.append((inbound ? .accept : .connect, c))
            } else {
                hooks.append((.connect, c))
                hooks.append((.udpRecv, c))
            }
        }
        for (hook, c) in hooks {
            let d = policy.decide(hook, c)
            if d.action == .deny, let rule = d.rule { return (hook, rule) }
        }
        return nil
    }

    /// The namespaces to look in: this one (nil) and those of socket owners.
    func namespaces(inodes: [UInt32: Int32]) -> [Int32?] {
        var seen: Set<UInt32> = []
        if let own = Reconciler.netnsInode(path: "/proc/thread-self/ns/net") { seen.insert(own) }
        var out: [Int32?] = [nil]
        for pid in Set(inodes.values) {
            let path = "/proc/\(pid)/ns/net"
            guard let ino = Reconciler.netnsInode(path: path), seen.insert(ino).inserted else { continue }
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            if fd >= 0 { out.append(fd) }
        }
        return out
    }

    /// socket inode -> a process holding it, from /proc/*/fd.
    static func socketOwners() -> [UInt32: Int32] {
        var out: [UInt32: Int32] = [:]
        guard let proc = opendir("/proc") else { return out }
        defer { closedir(proc) }
        while let ent = readdir(proc) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let pid = Int32(name) else { continue }
            guard let fds = opendir("/proc/\(pid)/fd") else { continue }
            while let f = readdir(fds) {
                let fdName = withUnsafeBytes(of: f.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                guard fdName.first?.isNumber == true, let target = FileIO.readLink("/proc/\(pid)/fd/\(fdName)") else { continue }
                let t = String(decoding: target, as: UTF8.self)
                if t.hasPrefix("socket:["), let ino = UInt32(t.dropFirst(8).dropLast()) {
                    if out[ino] == nil { out[ino] = pid }
                }
            }
            closedir(fds)
        }
        return out
    }

    func readOwner(_ pid: Int32) -> Owner? {
        var p = Policy.Context.Process()
        var st = stat()
        if stat("/proc/\(pid)/exe", &st) == 0 {
            p.exe = (UInt64(st.st_ino), SystemPolicyEnvironment.kernelDevice(UInt64(st.st_dev)))
        }
        if let comm = FileIO.readString("/proc/\(pid)/comm") {
            p.comm = String(comm.dropLast(comm.hasSuffix("\n") ? 1 : 0))
        }
        guard let status = FileIO.readString("/proc/\(pid)/status") else { return nil }
        for line in status.split(separator: "\n") {
            let f = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
            if f.first == "Uid:", f.count > 1 { p.uid = UInt32(f[1]) }
            if f.first == "Gid:", f.count > 1 { p.gid = UInt32(f[1]) }
        }
        var path = "/"
        if let cg = FileIO.readString("/proc/\(pid)/cgroup") {
            for line in cg.split(separator: "\n") where line.hasPrefix("0::") { path = String(line.dropFirst(3)) }
        }
        if let root = cgroupRoot {
            var ancestors: [UInt64] = [CgroupFS.id(ofDirectory: root) ?? 0]
            var prefix = ""
            for part in path.split(separator: "/") {
                prefix += "/" + part
                ancestors.append(CgroupFS.id(ofDirectory: root + prefix) ?? 0)
            }
            p.cgroupAncestors = ancestors
        }
        return Owner(pid: pid, process: p, cgroupPath: path)
    }
}
