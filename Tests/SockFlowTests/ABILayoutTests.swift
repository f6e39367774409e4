import CSockFlowABI
import SockFlowBPF
import Testing

/// The kernel writes records with the BPF compiler's layout; Swift reads them
/// with the host compiler's view of the same header. They must agree (after
/// Tetragon's alignchecker): sizes and every member offset, from the BTF that
/// is embedded in the binary.
@Suite("ABI layout: Swift vs the BPF object's BTF")
struct ABILayoutTests {
    func check<T>(_ name: String, _ type: T.Type, _ offsets: [(String, Int?)]) throws {
        let btf = try #require(MonitorProgram.embeddedStructLayout(name), "struct \(name) is not in the object's BTF")
        #expect(btf.size == MemoryLayout<T>.size, "sizeof(struct \(name))")
        #expect(btf.members.count == offsets.count, "members of \(name): BTF has \(btf.members.keys.sorted())")
        for (member, swiftOffset) in offsets {
            #expect(btf.members[member] == swiftOffset, "offset of \(name).\(member)")
        }
    }

    @Test func event() throws {
        try check("sf_event", sf_event.self, [
            ("hdr", MemoryLayout<sf_event>.offset(of: \.hdr)),
            ("sock", MemoryLayout<sf_event>.offset(of: \.sock)),
            ("task", MemoryLayout<sf_event>.offset(of: \.task)),
            ("start_ns", MemoryLayout<sf_event>.offset(of: \.start_ns)),
            ("listener_cookie", MemoryLayout<sf_event>.offset(of: \.listener_cookie)),
            ("bytes_received", MemoryLayout<sf_event>.offset(of: \.bytes_received)),
            ("bytes_acked", MemoryLayout<sf_event>.offset(of: \.bytes_acked)),
            ("backlog", MemoryLayout<sf_event>.offset(of: \.backlog)),
            ("fd", MemoryLayout<sf_event>.offset(of: \.fd)),
            ("rule", MemoryLayout<sf_event>.offset(of: \.rule)),
            ("hook", MemoryLayout<sf_event>.offset(of: \.hook)),
            ("action", MemoryLayout<sf_event>.offset(of: \.action)),
            ("generation", MemoryLayout<sf_event>.offset(of: \.generation)),
            ("sk_err", MemoryLayout<sf_event>.offset(of: \.sk_err)),
            ("tcp_state", MemoryLayout<sf_event>.offset(of: \.tcp_state)),
            ("role", MemoryLayout<sf_event>.offset(of: \.role)),
            ("close_flags", MemoryLayout<sf_event>.offset(of: \.close_flags)),
            ("pad", MemoryLayout<sf_event>.offset(of: \.pad)),
        ])
    }

    @Test func header() throws {
        try check("sf_hdr", sf_hdr.self, [
            ("ts_ns", MemoryLayout<sf_hdr>.offset(of: \.ts_ns)),
            ("lost", MemoryLayout<sf_hdr>.offset(of: \.lost)),
            ("kind", MemoryLayout<sf_hdr>.offset(of: \.kind)),
            ("size", MemoryLayout<sf_hdr>.offset(of: \.size)),
            ("cpu", MemoryLayout<sf_hdr>.offset(of: \.cpu)),
        ])
    }

    @Test func sock() throws {
        try check("sf_sock", sf_sock.self, [
            ("cookie", MemoryLayout<sf_sock>.offset(of: \.cookie)),
            ("laddr", MemoryLayout<sf_sock>.offset(of: \.laddr)),
            ("raddr", MemoryLayout<sf_sock>.offset(of: \.raddr)),
            ("netns", MemoryLayout<sf_sock>.offset(of: \.netns)),
            ("lport", MemoryLayout<sf_sock>.offset(of: \.lport)),
            ("rport", MemoryLayout<sf_sock>.offset(of: \.rport)),
            ("family", MemoryLayout<sf_sock>.offset(of: \.family)),
            ("protocol", MemoryLayout<sf_sock>.offset(of: \.protocol)),
            ("flags", MemoryLayout<sf_sock>.offset(of: \.flags)),
            ("pad", MemoryLayout<sf_sock>.offset(of: \.pad)),
        ])
    }

    @Test func task() throws {
        try check("sf_task", sf_task.self, [
            ("start_ns", MemoryLayout<sf_task>.offset(of: \.start_ns)),
            ("exec_id", MemoryLayout<sf_task>.offset(of: \.exec_id)),
            ("cgroup_id", MemoryLayout<sf_task>.offset(of: \.cgroup_id)),
            ("exe_ino", MemoryLayout<sf_task>.offset(of: \.exe_ino)),
            ("exe_dev", MemoryLayout<sf_task>.offset(of: \.exe_dev)),
            ("pid", MemoryLayout<sf_task>.offset(of: \.pid)),
            ("tid", MemoryLayout<sf_task>.offset(of: \.tid)),
            ("ppid", MemoryLayout<sf_task>.offset(of: \.ppid)),
            ("uid", MemoryLayout<sf_task>.offset(of: \.uid)),
            ("gid", MemoryLayout<sf_task>.offset(of: \.gid)),
            ("flags", MemoryLayout<sf_task>.offset(of: \.flags)),
            ("pad", MemoryLayout<sf_task>.offset(of: \.pad)),
            ("comm", MemoryLayout<sf_task>.offset(of: \.comm)),
            ("exe_name", MemoryLayout<sf_task>.offset(of: \.exe_name)),
        ])
    }

    @Test("policy structs: the rule layout the kernel reads")
    func rule() throws {
        try check("sf_rule", sf_rule.self, [
            ("local", MemoryLayout<sf_rule>.offset(of: \.local)),
            ("remote", MemoryLayout<sf_rule>.offset(of: \.remote)),
            ("process", MemoryLayout<sf_rule>.offset(of: \.process)),
            ("not_process", MemoryLayout<sf_rule>.offset(of: \.not_process)),
            ("hooks", MemoryLayout<sf_rule>.offset(of: \.hooks)),
            ("match", MemoryLayout<sf_rule>.offset(of: \.match)),
            ("action", MemoryLayout<sf_rule>.offset(of: \.action)),
            ("protocol", MemoryLayout<sf_rule>.offset(of: \.protocol)),
            ("family", MemoryLayout<sf_rule>.offset(of: \.family)),
            ("pad", MemoryLayout<sf_rule>.offset(of: \.pad)),
        ])
        try check("sf_hook_rules", sf_hook_rules.self, [
            ("count", MemoryLayout<sf_hook_rules>.offset(of: \.count)),
            ("index", MemoryLayout<sf_hook_rules>.offset(of: \.index)),
            ("pad", MemoryLayout<sf_hook_rules>.offset(of: \.pad)),
        ])
    }

    @Test("the fixture offsets the decoding tests use are the ABI's")
    func fixtureOffsets() {
        #expect(MemoryLayout<sf_event>.offset(of: \.sock.cookie) == RecordBytes.cookie)
        #expect(MemoryLayout<sf_event>.offset(of: \.task) == RecordBytes.task)
        #expect(MemoryLayout<sf_event>.offset(of: \.start_ns) == RecordBytes.startNs)
        #expect(MemoryLayout<sf_event>.offset(of: \.close_flags) == RecordBytes.closeFlags)
        #expect(MemoryLayout<sf_event>.offset(of: \.rule) == RecordBytes.rule)
        #expect(MemoryLayout<sf_event>.offset(of: \.hook) == RecordBytes.hook)
        #expect(MemoryLayout<sf_event>.offset(of: \.task.comm) == RecordBytes.task + 64)
    }
}
