import CSockFlowABI
import Foundation
import Testing
@testable import SockFlowCore

@Suite("Records from kernel events")
struct RecordBuilderTests {
    @Test("listen: fields, remote null, owner from the kernel, JSON keys in order")
    func listenRecord() throws {
        let (builder, sink) = makeBuilder()
        var r = RecordBytes.event(kind: 1, cookie: 0x1fbb)
        r.ipv4(local: [0, 0, 0, 0], lport: 8080)
        r.put(UInt32(128), at: RecordBytes.backlog)
        r.put(UInt32(4_026_531_840), at: RecordBytes.netns)
        r.task(pid: 4242, comm: "python3", exeName: "python3.11")
        builder.handle(try r.decode())
        let rec = try #require(sink.records.first)
        #expect(rec.seq == 1)
        #expect(rec.event == .listen)
        let line = json(rec)
        #expect(line.hasPrefix(#"{"seq":1,"time":"2023-11-14T22:13:25.000000000Z","event":"listen","flow":{"id":"6599a47d0000000000001fbb","cookie":8123,"protocol":"tcp","family":"ipv4","mapped":false,"direction":"inbound","local":{"address":"0.0.0.0","port":8080},"remote":null,"netns":4026531840,"backlog":128,"dual_stack":false,"listener":null},"process":{"pid":4242,"tid":4242,"ppid":1,"uid":1000,"gid":1000,"comm":"python3","exe_name":"python3.11","exe":null,"cmdline":null,"cgroup_id":1,"cgroup":null,"container":null},"verdict":{"action":"allow","rule":null}}"#))
        #expect(line.hasSuffix("}\n"))
    }

    @Test("each record names the thread that acted: its tid and its own comm, escaped, within one process instance")
    func threadComm() throws {
        let (builder, sink) = makeBuilder()
        for (i, (tid, comm)) in [(UInt32(50), "server"), (51, "worker \"1\""), (52, "server"), (53, "tab\there")].enumerated() {
            var r = RecordBytes.event(kind: 1, cookie: UInt64(100 + i))
            r.ipv4(local: [0, 0, 0, 0], lport: UInt16(8000 + i))
            r.task(pid: 50, tid: tid, comm: comm, exeName: "server")
            builder.handle(try r.decode())
        }
        let procs = sink.records.map { json($0) }.map { line in
            String(line[line.range(of: #""process":"#)!.upperBound...].prefix { $0 != "}" })
        }
        let rest = #","ppid":1,"uid":1000,"gid":1000,"comm":"#
        #expect(procs == [
            #"{"pid":50,"tid":50"# + rest + #""server","exe_name":"server","exe":null,"cmdline":null,"cgroup_id":1,"cgroup":null,"container":null"#,
            #"{"pid":50,"tid":51"# + rest + #""worker \"1\"","exe_name":"server","exe":null,"cmdline":null,"cgroup_id":1,"cgroup":null,"container":null"#,
            #"{"pid":50,"tid":52"# + rest + #""server","exe_name":"server","exe":null,"cmdline":null,"cgroup_id":1,"cgroup":null,"container":null"#,
            #"{"pid":50,"tid":53"# + rest + #""tab\there","exe_name":"server","exe":null,"cmdline":null,"cgroup_id":1,"cgroup":null,"container":null"#,
        ])
    }

    @Test("a Record is a value: a copy's loss, policy and stream fields are its own")
    func recordIsAValue() {
        var a = Record(seq: 1, time: 0, event: .lost)
        a.lost = LostDetails(count: 1, reason: .undecodable)
        var b = a
        b.lost?.count = 5
        b.policy = PolicyDetails(hook: .connect, count: 2)
        #expect(a.lost?.count == 1)
        #expect(a.policy == nil)
        #expect(b.lost?.count == 5)
        #expect(b.policy?.count == 2)
        a.stream = StreamDetails()
        a.stream?.stopReason = "count"
        #expect(b.stream == nil)
        #expect(a.stream?.stopReason == "count")
        b.lost = nil
        #expect(b.lost == nil)
        #expect(a.lost?.count == 1)
    }

    @Test("a dual-stack listener is ipv6 with dual_stack true; V6ONLY or a specific address is not")
    func dualStack() throws {
        let (builder, sink) = makeBuilder()
        var any = RecordBytes.event(kind: 1, cookie: 1)
        any.ipv6(local: [UInt8](repeating: 0, count: 16), lport: 80)
        any.task(pid: 1, comm: "x")
        builder.handle(try any.decode())
        var only = any
        only.put(UInt64(2), at: RecordBytes.cookie)
        only.put(UInt8(SF_SOCK_V6ONLY.rawValue), at: RecordBytes.sockFlags)
        builder.handle(try only.decode())
        var loop = RecordBytes.event(kind: 1, cookie: 3)
        loop.ipv6(local: [UInt8](repeating: 0, count: 15) + [1], lport: 80)
        loop.task(pid: 1, comm: "x")
        builder.handle(try loop.decode())
        #expect(sink.records.map { $0.flow?.dualStack } == [true, false, false])
        #expect(sink.records.allSatisfy { $0.flow?.family == .ipv6 })
    }

    @Test("IPv4-mapped endpoints are reported as IPv4 with mapped: true")
    func mapped() throws {
        let (builder, sink) = makeBuilder()
        var r = RecordBytes.event(kind: 2, cookie: 9)
        let prefix: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
        r.ipv6(local: prefix + [127, 0, 0, 1], lport: 40000, remote: prefix + [10, 0, 0, 2], rport: 443)
        r.task(pid: 7, comm: "curl")
        builder.handle(try r.decode())
        let f = try #require(sink.records.first?.flow)
        #expect(f.family == .ipv4)
        #expect(f.mapped)
        #expect(f.local.description == "127.0.0.1:40000")
        #expect(f.remote?.description == "10.0.0.2:443")
    }

    @Test("a lost count in a record's header becomes a 'lost' record before it; seq has no gap")
    func lostBeforeRecord() throws {
        let (builder, sink) = makeBuilder()
        var a = RecordBytes.event(kind: 1, cookie: 1)
        a.ipv4(local: [127, 0, 0, 1], lport: 1)
        a.task(pid: 1, comm: "a")
        builder.handle(try a.decode())
        var b = a
        b.put(UInt64(2), at: RecordBytes.cookie)
        b.put(UInt64(17), at: RecordBytes.lost)
        builder.handle(try b.decode())
        builder.noteKernelLoss(ringBuffer: 20)
        builder.noteKernelLoss(ringBuffer: 20)
        #expect(sink.records.map(\.event) == [.listen, .lost, .listen, .lost])
        #expect(sink.records.map(\.seq) == [1, 2, 3, 4])
        #expect(sink.records[1].lost?.count == 17)
        #expect(sink.records[3].lost?.count == 3)
    }

    @Test("--count stops the builder after N flow records")
    func countLimit() throws {
        let (builder, sink) = makeBuilder()
        builder.flowRecordLimit = 2
        for c in 1...5 {
            var r = RecordBytes.event(kind: 1, cookie: UInt64(c))
            r.ipv4(local: [127, 0, 0, 1], lport: UInt16(c))
            r.task(pid: 1, comm: "a")
            builder.handle(try r.decode())
        }
        #expect(sink.records.count == 2)
        #expect(builder.isFinished)
    }

    @Test("--pid keeps the process's records and its listener's unaccepted flows")
    func pidFilter() throws {
        let (builder, sink) = makeBuilder()
        builder.filter = RecordFilter(pids: [10])
        var l = RecordBytes.event(kind: 1, cookie: 1)
        l.ipv4(local: [127, 0, 0, 1], lport: 80)
        l.task(pid: 10, comm: "srv")
        builder.handle(try l.decode())
        var other = RecordBytes.event(kind: 2, cookie: 2)
        other.ipv4(local: [127, 0, 0, 1], lport: 5000, remote: [127, 0, 0, 1], rport: 80)
        other.task(pid: 11, comm: "cli")
        builder.handle(try other.decode())
        var est = RecordBytes.event(kind: 3, cookie: 3)
        est.ipv4(local: [127, 0, 0, 1], lport: 80, remote: [127, 0, 0, 1], rport: 5000)
        est.put(UInt8(3), at: RecordBytes.role)
        est.put(UInt64(1), at: RecordBytes.listenerCookie)
        builder.handle(try est.decode())
        #expect(sink.records.map(\.event) == [.listen, .established])
        #expect(sink.records[1].flow?.listener == FlowID(boot: 0x6599_a47d, cookie: 1))
    }

    @Test("close reasons from the state left and sk_err")
    func closeReasons() {
        typealias B = RecordBuilder
        #expect(B.closeReason(role: .outbound, oldState: 2, skErr: ECONNREFUSED, accepted: true) == .refused)
        #expect(B.closeReason(role: .outbound, oldState: 2, skErr: ETIMEDOUT, accepted: true) == .timeout)
        #expect(B.closeReason(role: .outbound, oldState: 1, skErr: ECONNRESET, accepted: true) == .reset)
        #expect(B.closeReason(role: .outbound, oldState: 8, skErr: EPIPE, accepted: true) == .reset)
        #expect(B.closeReason(role: .outbound, oldState: 1, skErr: 0, accepted: true) == .reset)
        #expect(B.closeReason(role: .outbound, oldState: 5, skErr: 0, accepted: true) == .normal)
        #expect(B.closeReason(role: .inbound, oldState: 9, skErr: 0, accepted: true) == .normal)
        #expect(B.closeReason(role: .inbound, oldState: 1, skErr: ECONNRESET, accepted: false) == .aborted)
        #expect(B.closeReason(role: .outbound, oldState: 2, skErr: 0, accepted: true) == .aborted)
        #expect(B.closeReason(role: .outbound, oldState: 2, skErr: EHOSTUNREACH, accepted: true) == .error)
        #expect(B.closeReason(role: .listener, oldState: 10, skErr: 0, accepted: true) == .normal)
    }

    @Test("payload bytes: the peer's FIN, our FIN and our SYN are not payload")
    func payload() {
        var e = sf_event()
        e.bytes_received = 251
        e.bytes_acked = 102
        e.close_flags = UInt8(SF_CLOSE_FIN_RCVD.rawValue | SF_CLOSE_FIN_ACKED.rawValue)
        #expect(RecordBuilder.payloadBytes(e, role: .outbound) == (250, 100))
        e.bytes_received = 101
        e.bytes_acked = 251
        #expect(RecordBuilder.payloadBytes(e, role: .inbound) == (100, 250))
        e.close_flags = 0
        e.bytes_received = 0
        e.bytes_acked = 0
        #expect(RecordBuilder.payloadBytes(e, role: .outbound) == (0, 0), "refused: nothing, never negative")
    }
}

@Suite("Process metadata from /proc")
struct ProcessCacheTests {
    /// A fake /proc/PID with stat, exe and cmdline, in a directory of its own
    /// under the temporary directory (the caller removes it).
    func fakeProc(pid: UInt32, startTicks: UInt64, exe: String, cmdline: [String]) throws -> String {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("proc-\(UUID().uuidString)").path
        let dir = root + "/\(pid)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // comm with spaces and a ')' as a hostile process could name itself
        var fields = ["S"] + [String](repeating: "0", count: 18)
        fields.append(String(startTicks))
        fields += ["0", "0"]
        try "\(pid) (evil) comm) \(fields.joined(separator: " "))\n".write(toFile: dir + "/stat", atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: dir + "/exe", withDestinationPath: exe)
        try (cmdline.joined(separator: "\0") + "\0").write(toFile: dir + "/cmdline", atomically: true, encoding: .utf8)
        return root
    }

    func task(pid: UInt32, startNs: UInt64, execID: UInt64 = 0) -> sf_task {
        var t = sf_task()
        t.pid = pid
        t.tid = pid
        t.start_ns = startNs
        t.exec_id = execID
        t.flags = UInt32(SF_TASK_VALID.rawValue)
        return t
    }

    @Test("reads exe and cmdline when /proc's start time is the event's")
    func matching() throws {
        let root = try fakeProc(pid: 321, startTicks: 1234, exe: "/usr/bin/python3.11", cmdline: ["python3", "-m", "http.server"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let cache = ProcessCache(procRoot: root, cgroups: CgroupCache(mountPoint: nil))
        let d = try #require(cache.details(for: task(pid: 321, startNs: 12_340_000_000)))
        #expect(d.exe == "/usr/bin/python3.11")
        #expect(d.cmdline == ["python3", "-m", "http.server"])
        _ = cache.details(for: task(pid: 321, startNs: 12_340_000_000))
        #expect(cache.procReads == 1, "cached per process instance")
    }

    @Test("a reused pid (different start time) never lends its name: nil")
    func reusedPid() throws {
        let root = try fakeProc(pid: 321, startTicks: 9999, exe: "/usr/bin/other", cmdline: ["other"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let cache = ProcessCache(procRoot: root, cgroups: CgroupCache(mountPoint: nil))
        #expect(cache.details(for: task(pid: 321, startNs: 12_340_000_000)) == nil)
    }

    @Test("a gone process: nil")
    func gone() {
        let cache = ProcessCache(procRoot: "/nonexistent-proc", cgroups: CgroupCache(mountPoint: nil))
        #expect(cache.details(for: task(pid: 1, startNs: 1)) == nil)
    }

    @Test("one instance per process: records share it; a new uid makes a new instance without rereading /proc")
    func instances() throws {
        let root = try fakeProc(pid: 5, startTicks: 1, exe: "/bin/sh", cmdline: ["sh"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let cache = ProcessCache(procRoot: root, cgroups: CgroupCache(mountPoint: nil))
        var t = task(pid: 5, startNs: 10_000_000)
        let a = cache.instance(for: t)
        #expect(cache.instance(for: t) === a)
        t.uid = 1234
        let b = cache.instance(for: t)
        #expect(b !== a)
        #expect(b.uid == 1234)
        #expect(b.details?.exe == "/bin/sh")
        #expect(cache.procReads == 1)
    }

    @Test("an exec (same pid and start, new exec count) reads /proc again")
    func exec() throws {
        let root = try fakeProc(pid: 5, startTicks: 1, exe: "/bin/sh", cmdline: ["sh"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let cache = ProcessCache(procRoot: root, cgroups: CgroupCache(mountPoint: nil))
        _ = cache.details(for: task(pid: 5, startNs: 10_000_000, execID: 1))
        _ = cache.details(for: task(pid: 5, startNs: 10_000_000, execID: 2))
        #expect(cache.procReads == 2)
    }

    @Test("stat parsing counts fields after the last ')'")
    func statParsing() throws {
        let root = try fakeProc(pid: 9, startTicks: 77, exe: "/x", cmdline: ["x"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        #expect(ProcessCache.startTicks(statPath: root + "/9/stat") == 77)
    }
}

@Suite("cgroups and containers")
struct CgroupTests {
    @Test("container ids from the runtimes' cgroup names")
    func containers() {
        let id = String(repeating: "ab12", count: 16)
        #expect(ContainerInfo.from(cgroupPath: "/system.slice/docker-\(id).scope") == ContainerInfo(id: id, runtime: "docker"))
        #expect(ContainerInfo.from(cgroupPath: "/docker/\(id)") == ContainerInfo(id: id, runtime: "docker"))
        #expect(ContainerInfo.from(cgroupPath: "/kubepods.slice/kubepods-pod1.slice/cri-containerd-\(id).scope")
            == ContainerInfo(id: id, runtime: "containerd"))
        #expect(ContainerInfo.from(cgroupPath: "/kubepods/besteffort/pod1/\(id)") == ContainerInfo(id: id, runtime: "kubernetes"))
        #expect(ContainerInfo.from(cgroupPath: "/machine.slice/libpod-\(id).scope")?.runtime == "podman")
        #expect(ContainerInfo.from(cgroupPath: "/user.slice/user-1000.slice/session-1.scope") == nil)
    }

    @Test("the cgroup2 mount is found in /proc/mounts, not assumed")
    func mountPoint() throws {
        let f = FileManager.default.temporaryDirectory.appendingPathComponent("mounts-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: f) }
        try "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/un\\040ified cgroup2 rw 0 0\n"
            .write(toFile: f, atomically: true, encoding: .utf8)
        #expect(CgroupFS.mountPoint(mountsFile: f) == "/sys/fs/cgroup/un ified")
    }
}
