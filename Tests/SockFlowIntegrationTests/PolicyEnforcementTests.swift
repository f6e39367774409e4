import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Enforcement with the real BPF programs, scoped to a child cgroup each test
/// creates and removes: helpers run inside it, the same call from outside is the
/// control. Every test waits for the 'policy loaded' record before it acts.
extension Integration {
@Suite("Policy enforcement")
struct PolicyEnforcementTests {
    /// A policy file for one test, removed with it.
    final class PolicyFile: @unchecked Sendable {
        let path: String
        init(_ yaml: String) throws {
            path = FileManager.default.temporaryDirectory.appendingPathComponent("sockflow-policy-\(UUID().uuidString).yaml").path
            try write(yaml)
        }
        func write(_ yaml: String) throws { try yaml.write(toFile: path, atomically: true, encoding: .utf8) }
        deinit { try? FileManager.default.removeItem(atPath: path) }
    }

    /// sockflow enforcing `policy` on `cg`, started and with the policy in force.
    func enforce(_ policy: PolicyFile, on cg: TestCgroup, _ extra: [String] = []) throws -> SockflowRun {
        let run = try SockflowRun(["monitor", "--policy", policy.path, "--cgroup", cg.relative] + extra)
        try run.waitFor("policy loaded") { $0.event == "policy" && $0.string("status") == "loaded" }
        return run
    }

    func errnoOf(_ fields: [String: String]) -> Int32? { fields["errno"].flatMap { Int32($0) } }

    /// A port nothing listens on (a listener's port, freed).
    func freePort() throws -> Int {
        let h = try Helper(["listen"])
        h.finish()
        return h.port
    }

    @Test("connect: a denied connect fails with EPERM and a deny record names the rule; outside the cgroup it works")
    func connect() throws {
        let server = try Helper(["serve", "--reply", "1"])
        let cg = try TestCgroup("pconn")
        let policy = try PolicyFile("""
            default: allow
            rules:
              - name: no-test-port
                action: deny
                on: [connect]
                remote: { ports: [\(server.port)] }
            """)
        let run = try enforce(policy, on: cg)
        let inside = try Helper.run(["connect", "--port", String(server.port), "--send", "1"], via: cg.wrapper)
        #expect(errnoOf(inside) == EPERM, "\(inside)")
        let outside = try Helper.run(["connect", "--port", String(server.port), "--send", "1"])
        #expect(outside["kind.done"] == "1", "the same connect outside the cgroup is not enforced: \(outside)")
        let deny = try run.waitFor("deny") { $0.event == "deny" }
        #expect(deny.string("hook") == "connect")
        #expect(deny.string("verdict.action") == "deny")
        #expect(deny.string("verdict.rule") == "no-test-port")
        #expect(deny.int("count") == 1)
        #expect(deny.int("flow.remote.port") == server.port)
        #expect(deny.string("flow.direction") == "outbound")
        #expect(deny.pid == Int(inside["pid"] ?? ""))
        #expect(deny.string("process.exe_name") == "sfhelper")
        server.finish()
        #expect(run.stop() == 0)
        #expect(!run.records.contains { $0.event == "connect" && $0.pid == Int(inside["pid"] ?? "") }, "a denied connect never became a flow")
        try run.validateStream()
    }

    @Test("listen: enforced at bind, so a denied process never holds the port; exe rules survive a rename and catch a copy")
    func listenByExe() throws {
        let port = try freePort()
        let cg = try TestCgroup("plisten")
        let copy = FileManager.default.temporaryDirectory.appendingPathComponent("sfhelper-copy-\(getpid())").path
        try? FileManager.default.removeItem(atPath: copy)
        try FileManager.default.copyItem(atPath: Paths.helper, toPath: copy)
        defer { try? FileManager.default.removeItem(atPath: copy) }
        let policy = try PolicyFile("""
            default: allow
            rules:
              - name: only-sfhelper-serves
                action: deny
                on: [listen]
                local: { ports: [\(port)] }
                process: { not: { exe: [\(Paths.helper)] } }
            """)
        let run = try enforce(policy, on: cg)
        // the real binary, renamed: still itself
        let renamed = try Helper(["--comm", "totally-nginx", "listen", "--port", String(port)], via: cg.wrapper)
        #expect(renamed.port == port)
        renamed.finish()
        // a copy of the binary elsewhere is another file: denied at bind
        let out = try runTool(
            "/bin/sh", ["-c", "echo $$ > '\(cg.path)/cgroup.procs' && exec '\(copy)' listen --port \(port)"], stderr: false
        ).output
        #expect(out.contains("errno=\(EPERM)"), "the copy's bind: \(out)")
        let deny = try run.waitFor("deny") { $0.event == "deny" }
        #expect(deny.string("hook") == "listen")
        #expect(deny.string("verdict.rule") == "only-sfhelper-serves")
        #expect(deny.int("flow.local.port") == port)
        #expect(deny[path: "flow.remote"] == nil)
        // the copy exits at once, so /proc may be gone: the kernel's name for its executable
        #expect(deny.string("process.exe_name") == URL(fileURLWithPath: copy).lastPathComponent)
        // outside the cgroup the copy may listen (the wrapper drops the helper's own path)
        let outside = try Helper(["listen", "--port", String(port)], via: ["/bin/sh", "-c", "shift; exec '\(copy)' \"$@\"", "sh"])
        #expect(outside.port == port)
        outside.finish()
        #expect(run.stop() == 0)
        try run.validateStream()
    }

    @Test("connect by exe: a renamed process (prctl) does not escape a rule on its executable")
    func connectByExeRenamed() throws {
        let server = try Helper(["serve", "--reply", "1"])
        let cg = try TestCgroup("pexe")
        let policy = try PolicyFile("""
            default: allow
            rules:
              - name: no-sfhelper-out
                action: deny
                on: [connect]
                process: { exe: [\(Paths.helper)] }
            """)
        let run = try enforce(policy, on: cg)
        let r = try Helper.run(["--comm", "innocent", "connect", "--port", String(server.port)], via: cg.wrapper)
        #expect(errnoOf(r) == EPERM)
        let deny = try run.waitFor("deny") { $0.event == "deny" }
        #expect(deny.string("process.comm") == "innocent")
        #expect(deny.string("verdict.rule") == "no-sfhelper-out")
        server.finish()
        #expect(run.stop() == 0)
        try run.validateStream()
    }

    @Test("accept: a SYN from a denied peer is dropped (the client times out); other peers are accepted")
    func accept() throws {
        let cg = try TestCgroup("paccept")
        let port = try freePort()
        let policy = try PolicyFile("""
            default: allow
            rules:
              - name: not-from-127-0-0-2
                action: deny
                on: [accept]
                local: { ports: [\(port)] }
                remote: { cidrs: [127.0.0.2/32] }
            """)
        let run = try enforce(policy, on: cg)
        let server = try Helper(["serve", "--port", String(port), "--reply", "2"], via: cg.wrapper)
        let denied = try Helper.run(
            ["connect", "--bind-addr", "127.0.0.2", "--port", String(port), "--syncnt", "1"], timeout: 30)
        #expect(errnoOf(denied) == ETIMEDOUT, "the SYN was dropped: \(denied)")
        let allowed = try Helper.run(["connect", "--port", String(port), "--send", "1"])
        #expect(allowed["in"] == "2", "\(allowed)")
        let deny = try run.waitFor("deny") { $0.event == "deny" }
        #expect(deny.string("hook") == "accept")
        #expect(deny.string("verdict.rule") == "not-from-127-0-0-2")
        #expect(deny.string("flow.remote.address") == "127.0.0.2")
        #expect(deny.int("flow.local.port") == port)
        #expect(deny.pid == server.pid, "the listener's owner")
        server.finish()
        #expect(run.stop() == 0)
        let total = run.records.filter { $0.event == "deny" }.reduce(0) { $0 + ($1.int("count") ?? 0) }
        #expect(total >= 2, "the SYN and its retry, aggregated: \(total)")
        try run.validateStream()
    }

    @Test("udp-send and socket: EPERM inside the cgroup, nothing outside")
    func udpSendAndSocket() throws {
        let cg = try TestCgroup("pudp")
        let port = try freePort()
        let policy = try PolicyFile("""
            default: allow
            rules:
              - name: no-dns-out
                action: deny
                on: [udp-send]
                remote: { ports: [\(port)] }
              - name: no-udp-sockets-for-renamed
                action: deny
                on: [socket]
                protocol: udp
                process: { comm: [no-udp] }
            """)
        let run = try enforce(policy, on: cg)
        #expect(errnoOf(try Helper.run(["udp-send", "--port", String(port)], via: cg.wrapper)) == EPERM)
        #expect(try Helper.run(["udp-send", "--port", String(port)])["kind.sent"] == "1")
        #expect(errnoOf(try Helper.run(["--comm", "no-udp", "socket", "--type", "udp"], via: cg.wrapper)) == EPERM)
        #expect(try Helper.run(["--comm", "no-udp", "socket", "--type", "tcp"], via: cg.wrapper)["kind.ok"] == "1")
        #expect(try Helper.run(["--comm", "no-udp", "socket", "--type", "udp"])["kind.ok"] == "1")
        try run.waitFor("udp-send deny") { $0.event == "deny" && $0.string("hook") == "udp-send" }
        let sock = try run.waitFor("socket deny") { $0.event == "deny" && $0.string("hook") == "socket" }
        #expect(sock.string("flow.protocol") == "udp")
        #expect(sock[path: "flow.local"] == nil && sock[path: "flow.remote"] == nil)
        #expect(run.stop() == 0)
        try run.validateStream()
    }

    @Test("udp-recv: datagrams to a receiver in the cgroup are dropped; a receiver outside gets them")
    func udpRecv() throws {
        let cg = try TestCgroup("precv")
        let port = try freePort()
        let policy = try PolicyFile("""
            default: allow
            rules:
              - name: no-udp-in
                action: deny
                on: [udp-recv]
                local: { ports: [\(port)] }
            """)
        let run = try enforce(policy, on: cg)
        let inside = try Helper(["udp-recv", "--port", String(port), "--timeout-ms", "1500"], via: cg.wrapper)
        _ = try Helper.run(["udp-send", "--port", String(port)])
        #expect(inside.out.wait(timeout: 5) { $0.first { $0 == "timeout" || $0.hasPrefix("got") } } == "timeout")
        inside.finish()
        let outside = try Helper(["udp-recv", "--port", String(port), "--timeout-ms", "1500"])
        _ = try Helper.run(["udp-send", "--port", String(port)])
        #expect(outside.out.wait(timeout: 5) { $0.first { $0 == "timeout" || $0.hasPrefix("got") } } == "got 5")
        outside.finish()
        let deny = try run.waitFor("deny") { $0.event == "deny" && $0.string("hook") == "udp-recv" }
        #expect(deny.string("flow.protocol") == "udp")
        #expect(deny.int("flow.local.port") == port)
        #expect(run.stop() == 0)
        try run.validateStream()
    }

    @Test("reload turns an allowed, established connection into a destroyed one; an allowed one survives")
    func reloadDestroys() throws {
        let a = try Helper(["serve", "--reply", "3"])
        let b = try Helper(["serve", "--reply", "3"])
        let cg = try TestCgroup("preload")
        let policy = try PolicyFile("default: allow\nrules: []\n")
        let run = try enforce(policy, on: cg)
        let doomed = try Helper(["connect", "--port", String(a.port), "--hold-ms", "3000", "--send", "5"], via: cg.wrapper, waitReady: false)
        let spared = try Helper(["connect", "--port", String(b.port), "--hold-ms", "3000", "--send", "5"], via: cg.wrapper, waitReady: false)
        let doomedEst = try run.waitFor("doomed established") { $0.event == "established" && $0.remotePort == a.port }
        try run.waitFor("spared established") { $0.event == "established" && $0.remotePort == b.port }
        try policy.write("""
            default: allow
            rules:
              - name: cut-a
                action: deny
                on: [connect]
                remote: { ports: [\(a.port)] }
            """)
        kill(run.process.processIdentifier, SIGHUP)
        let loaded = try run.waitFor("reloaded") { $0.event == "policy" && $0.int("rules") == 1 }
        #expect(loaded.string("status") == "loaded")
        #expect((loaded.int("destroyed") ?? 0) >= 1)
        let close = try run.waitFor("doomed close") { $0.event == "close" && $0.flowID == doomedEst.flowID }
        #expect(close.string("reason") == "policy")
        #expect(close.string("verdict.rule") == "cut-a")
        #expect(close.string("verdict.action") == "deny")
        let doomedOut = doomed.out.wait(timeout: 10) { $0.first { $0.hasPrefix("done") } } ?? ""
        let spareOut = spared.out.wait(timeout: 10) { $0.first { $0.hasPrefix("done") } } ?? ""
        #expect(doomedOut.contains("errno=\(ECONNABORTED)") || doomedOut.contains("errno=\(EPIPE)"), "destroyed: \(doomedOut)")
        #expect(spareOut == "done in=3 out=5 errno=0", "the allowed connection survives: \(spareOut)")
        let spareClose = try run.waitFor("spared close") { $0.event == "close" && $0.localPort != nil && $0.remotePort == b.port }
        #expect(spareClose.string("reason") == "normal")
        a.finish()
        b.finish()
        #expect(run.stop() == 0)
        try run.validateStream()
    }

    @Test("a bad policy on reload is rejected with file:line:column; the old one stays in force")
    func badReloadKeepsOld() throws {
        let port = try freePort()
        let cg = try TestCgroup("pbad")
        let policy = try PolicyFile("""
            default: allow
            rules:
              - { name: deny-it, action: deny, on: connect, remote: { ports: [\(port)] } }
            """)
        let run = try enforce(policy, on: cg, ["--watch"])
        try policy.write("default: allow\nrules:\n  - { name: x, action: deny, on: connect, remote: { ports: [99999] } }\n")
        let rejected = try run.waitFor("rejected") { $0.event == "policy" && $0.string("status") == "rejected" }
        #expect(rejected.string("error")?.hasPrefix("\(policy.path):3:") == true, "\(rejected)")
        #expect(rejected.string("error")?.contains("ports are 1 to 65535") == true)
        #expect(run.err.wait(timeout: 5) { $0.first { $0.contains("policy reload rejected") } } != nil)
        #expect(errnoOf(try Helper.run(["connect", "--port", String(port)], via: cg.wrapper)) == EPERM, "still enforced")
        #expect(run.stop() == 0)
        try run.validateStream()
    }

    @Test("--persist: the enforcement stays after sockflow exits; 'policy unload' removes it")
    func persist() throws {
        let port = try freePort()
        let cg = try TestCgroup("ppersist")
        defer { _ = try? runUnload() }
        let policy = try PolicyFile("""
            default: allow
            rules:
              - { name: pinned, action: deny, on: connect, remote: { ports: [\(port)] } }
            """)
        let run = try enforce(policy, on: cg, ["--persist"])
        #expect(run.stop() == 0)
        #expect(errnoOf(try Helper.run(["connect", "--port", String(port)], via: cg.wrapper)) == EPERM, "enforced with sockflow gone")
        // The connect runs the moment 'policy unload' returns: the programs must
        // be detached by then, not after an RCU grace period and a kernel work item.
        let unloadThenConnect = cg.wrapper + ["/bin/sh", "-c", "\"$0\" policy unload && exec \"$@\"", Paths.sockflow]
        let after = try Helper.run(["connect", "--port", String(port)], via: unloadThenConnect)
        #expect(after["kind.removed"] == "1", "\(after)")
        #expect(errnoOf(after) == ECONNREFUSED, "\(after)")
        #expect(try runUnload().hasPrefix("no pinned enforcement"))
    }

    func runUnload() throws -> String {
        try runTool(Paths.sockflow, ["policy", "unload"], stderr: false).output
    }

    @Test("a bad policy at start: one error line with file:line:column, exit non-zero, nothing attached")
    func badPolicyAtStart() throws {
        let cg = try TestCgroup("pstart")
        let policy = try PolicyFile("default: allow\nrules:\n  - name: x\n    action: deny\n    on: [conect]\n")
        let run = try SockflowRun(["monitor", "--policy", policy.path, "--cgroup", cg.relative], waitForStart: false)
        #expect(run.waitForExit() != 0)
        #expect(run.out.snapshot.isEmpty)
        #expect(run.err.snapshot == ["sockflow: \(policy.path):5:10: a hook in 'on' 'conect': use one of listen, connect, accept, udp-send, udp-recv, socket"])
    }
}
}
