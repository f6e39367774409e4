import CSockFlowABI
import Testing
@testable import SockFlowCore

/// Resolves what tests name, without touching the machine.
struct FakeEnvironment: PolicyEnvironment {
    func executable(_ path: String) -> Result<Policy.Executable, PolicyEnvironmentError> {
        switch path {
        case "/usr/sbin/nginx": .success(.init(path: path, inode: 100, device: 254 << 20))
        case "/usr/bin/curl": .success(.init(path: path, inode: 200, device: 254 << 20))
        default: .failure(.init("\(path): No such file or directory"))
        }
    }
    func cgroup(_ path: String) -> Result<Policy.CgroupMatch, PolicyEnvironmentError> {
        path == "/build.slice" ? .success(.init(path: path, id: 77, level: 1)) : .failure(.init("no cgroup v2 directory \(path)"))
    }
    func uid(named: String) -> UInt32? { named == "www-data" ? 33 : nil }
    func gid(named: String) -> UInt32? { named == "www-data" ? 33 : nil }
}

func parse(_ yaml: String) throws -> Policy {
    try PolicyParser(file: "p.yaml", environment: FakeEnvironment()).parse(yaml)
}

@Suite("Policy language")
struct PolicyParserTests {
    static let example = """
        default: allow
        rules:
          - name: no-smtp-egress
            action: deny
            on: [connect]
            remote: { ports: [25, 465, 587] }
          - name: only-nginx-serves-web
            action: deny
            on: [listen]
            local: { ports: [80, 443] }
            process: { not: { exe: [/usr/sbin/nginx] } }
          - name: build-sandbox
            action: deny
            on: [connect, udp-send]
            process: { cgroup: /build.slice }
            remote: { cidrs: [0.0.0.0/0, "::/0"] }
        """

    @Test("the issue's example parses, with exe and cgroup resolved")
    func parsesExample() throws {
        let p = try parse(Self.example)
        #expect(p.defaultAction == .allow)
        #expect(p.rules.map(\.name) == ["no-smtp-egress", "only-nginx-serves-web", "build-sandbox"])
        #expect(p.rules[0].remote?.ports == [.init(lo: 25, hi: 25), .init(lo: 465, hi: 465), .init(lo: 587, hi: 587)])
        #expect(p.rules[1].notProcess?.exe == [.init(path: "/usr/sbin/nginx", inode: 100, device: 254 << 20)])
        #expect(p.rules[2].hooks == [.connect, .udpSend])
        #expect(p.rules[2].process?.cgroup == [.init(path: "/build.slice", id: 77, level: 1)])
        #expect(p.rules[0].line == 3)
    }

    /// Each malformed policy, the line:column it must name, and words the message must have.
    static let malformed: [(String, String, String)] = [
        ("default: allow\nrules:\n  - name: x\n    action: [deny\n", "5:1", "YAML syntax"),
        ("- just\n- a list\n", "1:1", "the policy must be a mapping"),
        ("default: allow\nrule: []\n", "2:1", "unknown key 'rule' in the policy; expected one of: default, rules"),
        ("rules: []\n", "1:1", "missing 'default'"),
        ("default: maybe\n", "1:10", "'default' 'maybe': use one of allow, deny, log"),
        ("default: allow\nrules:\n  - action: deny\n    on: connect\n", "3:5", "a rule needs a 'name'"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: connect\n  - name: a\n    action: allow\n    on: listen\n",
         "6:5", "duplicate rule name 'a' (first at line 3)"),
        ("default: allow\nrules:\n  - name: a\n    acton: deny\n    on: connect\n", "4:5", "unknown key 'acton' in a rule"),
        ("default: allow\nrules:\n  - name: a\n    action: block\n    on: connect\n", "4:13", "'action' 'block': use one of allow, deny, log"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: [connect, egress]\n", "5:19", "a hook in 'on' 'egress'"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: connect\n    remote: { ports: [70000] }\n",
         "6:23", "port '70000': ports are 1 to 65535"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: connect\n    remote: { ports: [9000-8000] }\n",
         "6:23", "port range '9000-8000' runs backwards"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: connect\n    remote: { cidrs: [10.0.0.0/33] }\n",
         "6:23", "CIDR '10.0.0.0/33': the prefix length must be 0 to 32"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: connect\n    remote: { cidrs: [300.1.2.3/8] }\n",
         "6:23", "CIDR '300.1.2.3/8' is not an IPv4 or IPv6 network"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: listen\n    process: { exe: [/opt/nope] }\n",
         "6:22", "executable /opt/nope: No such file or directory"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: listen\n    process: { exe: [nginx] }\n",
         "6:22", "executable 'nginx' must be an absolute path"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: listen\n    process: { user: [0] }\n",
         "6:16", "unknown key 'user' in 'process'"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: listen\n    process: { uid: [nobody-here] }\n",
         "6:22", "uid 'nobody-here' is neither a number nor a known user"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: listen\n    process: { comm: [a-very-long-command-name] }\n",
         "6:23", "the kernel keeps 1 to 15 bytes"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: listen\n    process: { cgroup: /nope.slice }\n",
         "6:24", "cgroup '/nope.slice': no cgroup v2 directory"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: socket\n    remote: { ports: [80] }\n",
         "6:5", "'remote' cannot apply to 'socket'"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: accept\n    process: { exe: [/usr/sbin/nginx] }\n",
         "6:5", "'accept' decides in softirq"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: udp-send\n    protocol: tcp\n",
         "6:15", "protocol tcp cannot apply to 'udp-send'"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: listen\n    process: { not: { not: { uid: [0] } } }\n",
         "6:23", "unknown key 'not' in 'not'"),
        ("default: allow\nrules:\n  - name: a\n    action: deny\n    on: connect\n    remote: { ports: [1,2,3,4,5,6,7,8,9] }\n",
         "6:39", "too many port entries"),
    ]

    @Test("every malformed policy is rejected with file:line:column and what is wrong", arguments: malformed)
    func rejects(_ yaml: String, _ position: String, _ words: String) {
        do {
            _ = try parse(yaml)
            Issue.record("accepted: \(yaml)")
        } catch let e as PolicyError {
            #expect("\(e.line):\(e.column)" == position, "\(e)")
            #expect(e.message.contains(words), "\(e)")
            #expect(e.description.hasPrefix("p.yaml:\(position): "))
        } catch {
            Issue.record("not a PolicyError: \(error)")
        }
    }

    @Test("too many rules for the kernel maps")
    func tooManyRules() {
        var yaml = "default: allow\nrules:\n"
        for i in 0...Int(SF_MAX_RULES) { yaml += "  - { name: r\(i), action: deny, on: connect, remote: { ports: [\(i % 60000 + 1)] } }\n" }
        #expect(throws: PolicyError.self) { try parse(yaml) }
        do { _ = try parse(yaml) } catch let e as PolicyError {
            #expect(e.message.contains("too many rules: 1025, the kernel maps hold 1024"))
            #expect(e.line == 1027)
        } catch {}
    }
}

@Suite("Policy semantics")
struct PolicySemanticsTests {
    func ctx(_ proto: Policy.TransportProtocol = .tcp, remote: String? = nil, rport: UInt16? = nil, lport: UInt16? = nil,
             exe: UInt64? = nil, comm: String? = nil, uid: UInt32 = 1000, cgroups: [UInt64] = [1]) -> Policy.Context {
        let r = remote.flatMap { IPAddress($0) }
        var p = Policy.Context.Process()
        p.exe = exe.map { ($0, 254 << 20) }
        p.comm = comm
        p.uid = uid
        p.gid = uid
        p.cgroupAncestors = cgroups
        return Policy.Context(proto: proto, family: (r?.unmappedIPv4 ?? r)?.family ?? .ipv4,
                              local: (IPAddress("127.0.0.1"), lport), remote: (r, rport), process: p)
    }

    @Test("first match wins; the default applies when nothing matches")
    func order() throws {
        let p = try parse(PolicyParserTests.example)
        #expect(p.decide(.connect, ctx(remote: "10.0.0.1", rport: 25)) == (.deny, 0))
        #expect(p.decide(.connect, ctx(remote: "10.0.0.1", rport: 443)) == (.allow, nil))
        #expect(p.decide(.connect, ctx(remote: "10.0.0.1", rport: 443, cgroups: [1, 77, 90])) == (.deny, 2))
        #expect(p.decide(.udpSend, ctx(.udp, remote: "::1", rport: 53, cgroups: [1, 77])) == (.deny, 2))
        #expect(p.decide(.listen, ctx(lport: 443, exe: 100)) == (.allow, nil), "nginx may serve the web")
        #expect(p.decide(.listen, ctx(lport: 443, exe: 101, comm: "nginx")) == (.deny, 1), "a copy or a rename is not nginx")
        #expect(p.decide(.listen, ctx(lport: 8443, exe: 101)) == (.allow, nil))
    }

    @Test("CIDRs: IPv4, IPv6, and IPv4-mapped peers count as IPv4")
    func cidrs() throws {
        let p = try parse("""
            default: allow
            rules:
              - { name: v4, action: deny, on: connect, remote: { cidrs: [10.0.0.0/8] } }
              - { name: v6, action: deny, on: connect, remote: { cidrs: ["fd00::/8"] } }
            """)
        #expect(p.decide(.connect, ctx(remote: "10.1.2.3")).rule == 0)
        #expect(p.decide(.connect, ctx(remote: "::ffff:10.1.2.3")).rule == 0)
        #expect(p.decide(.connect, ctx(remote: "11.0.0.1")).rule == nil)
        #expect(p.decide(.connect, ctx(remote: "fd12::1")).rule == 1)
        #expect(p.decide(.connect, ctx(remote: "fe80::1")).rule == nil)
    }

    @Test("ranges, uid names, comm")
    func fields() throws {
        let p = try parse("""
            default: deny
            rules:
              - { name: web, action: allow, on: connect, remote: { ports: [8000-8099] }, process: { uid: [www-data] } }
              - { name: curl, action: log, on: connect, process: { comm: [curl] } }
            """)
        #expect(p.decide(.connect, ctx(rport: 8050, uid: 33)) == (.allow, 0))
        #expect(p.decide(.connect, ctx(rport: 8100, uid: 33)) == (.deny, nil))
        #expect(p.decide(.connect, ctx(rport: 1, comm: "curl")) == (.log, 1))
    }

    @Test("the compiled form carries every field, in order, per hook")
    func compiled() throws {
        let c = PolicyCompiler.compile(try parse(PolicyParserTests.example))
        #expect(c.hookRules[Policy.Hook.connect.index] == [0, 2])
        #expect(c.hookRules[Policy.Hook.listen.index] == [1])
        #expect(c.hookRules[Policy.Hook.udpSend.index] == [2])
        #expect(c.rules[0].remote.nports == 3)
        #expect(c.rules[0].match & SF_MATCH_REMOTE_PORTS.rawValue != 0)
        #expect(c.rules[1].match & SF_MATCH_NOT_PROCESS.rawValue != 0)
        #expect(c.rules[1].not_process.exe.0.ino == 100)
        #expect(c.rules[2].remote.ncidrs == 2)
        #expect(c.rules[2].process.cgroup.0.level == 1)
        #expect(c.rules[0].action == UInt8(SF_ACTION_DENY.rawValue))
    }

    @Test("stat's st_dev to the kernel's dev_t")
    func device() {
        // 254:0 (glibc 0xfe00) and 259:65537 (extended minor)
        #expect(SystemPolicyEnvironment.kernelDevice(0xfe00) == 254 << 20)
        let dev: UInt64 = (259 << 8) | (0x01 & 0xff) | ((65537 & ~0xff) << 12)
        #expect(SystemPolicyEnvironment.kernelDevice(dev) == (259 << 20) | 65537)
    }
}
