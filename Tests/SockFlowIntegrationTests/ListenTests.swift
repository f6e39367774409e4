import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `sockflow monitor` with the real BPF programs, against listeners in separate
/// processes. Every assertion is on records filtered by the helper's pid or port:
/// other processes on the machine make sockets too.
extension Integration {
@Suite("Listen monitor")
struct ListenTests {
    static let helperExe = URL(fileURLWithPath: Paths.helper).resolvingSymlinksInPath().path

    func listenRecord(_ run: SockflowRun, port: Int) throws -> JSON {
        try run.waitFor("listen on \(port)") { $0.event == "listen" && $0.localPort == port }
    }

    func closeRecord(_ run: SockflowRun, id: String) throws -> JSON {
        try run.waitFor("close of \(id)") { $0.event == "close" && $0.flowID == id }
    }

    /// The fields every listener record must carry, owned by `pid`.
    func expectListener(_ r: JSON, pid: Int, port: Int, family: String, address: String, comm: String = "sfhelper") {
        #expect(r.string("flow.protocol") == "tcp")
        #expect(r.string("flow.family") == family)
        #expect(r.string("flow.direction") == "inbound")
        #expect(r.string("flow.local.address") == address)
        #expect(r.int("flow.local.port") == port)
        #expect(r[path: "flow.remote"] == nil, "a listener has no remote end")
        #expect((r["flow"] as? JSON)?.keys.contains("remote") == true, "remote is present, as null")
        #expect(r.int("flow.backlog") == 16)
        #expect(r.pid == pid)
        #expect(r.int("process.tid") == pid)
        #expect(r.string("process.comm") == comm)
        #expect(r.string("process.exe_name") == "sfhelper")
        #expect(r.int("process.uid") == Int(getuid()))
        #expect(r.string("verdict.action") == "allow")
        #expect((r.int("flow.cookie") ?? 0) > 0)
        #expect(r.int("flow.netns") == Self.ownNetns)
    }

    static var ownNetns: Int? {
        var st = stat()
        return stat("/proc/self/ns/net", &st) == 0 ? Int(st.st_ino) : nil
    }

    @Test("start and stop records bracket the stream; SIGINT exits 0")
    func startAndStop() throws {
        let run = try SockflowRun(["monitor", "--port", "1"])
        let start = run.records[0]
        #expect(start.int("seq") == 1)
        #expect(start.string("sockflow.version")?.isEmpty == false)
        #expect(start.string("sockflow.kernel") == Self.kernelRelease)
        let hooks = start[path: "sockflow.hooks"] as? [String] ?? []
        #expect(hooks.contains { $0.hasPrefix("sockops:") })
        #expect(hooks.contains("tracepoint:syscalls:sys_exit_accept4"))
        #expect(run.stop() == 0)
        let stop = try #require(run.records.last)
        #expect(stop.event == "stop")
        #expect(stop.string("reason") == "signal")
        #expect(stop.int("counters.lost") == 0)
        try run.validateStream()
    }

    static var kernelRelease: String {
        var u = utsname()
        uname(&u)
        return withUnsafeBytes(of: u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    @Test("IPv4 listener: listen and close records with owner, endpoint and one flow id")
    func ipv4() throws {
        let run = try SockflowRun(["monitor"])
        let h = try Helper(["listen", "--family", "4", "--addr", "127.0.0.1"])
        let listen = try listenRecord(run, port: h.port)
        expectListener(listen, pid: h.pid, port: h.port, family: "ipv4", address: "127.0.0.1")
        #expect(listen.string("process.exe") == Self.helperExe)
        #expect((listen[path: "process.cmdline"] as? [String])?.first == Paths.helper)
        #expect(listen[path: "flow.dual_stack"] as? Bool == false)
        h.finish()
        let id = try #require(listen.flowID)
        let close = try closeRecord(run, id: id)
        #expect(close.string("reason") == "normal")
        #expect(close.pid == h.pid)
        #expect(close.int("flow.local.port") == h.port)
        #expect((close.int("duration_ns") ?? 0) > 0)
        #expect(close[path: "bytes_in"] == nil, "listeners carry no byte counts")
        #expect(run.stop() == 0)
        try run.validateStream()
    }

    @Test("IPv6 listener with IPV6_V6ONLY: family ipv6, not dual-stack")
    func ipv6() throws {
        let run = try SockflowRun(["monitor"])
        let h = try Helper(["listen", "--family", "6", "--addr", "::1"])
        let listen = try listenRecord(run, port: h.port)
        expectListener(listen, pid: h.pid, port: h.port, family: "ipv6", address: "::1")
        #expect(listen[path: "flow.dual_stack"] as? Bool == false)
        h.finish()
        _ = try closeRecord(run, id: try #require(listen.flowID))
        #expect(run.stop() == 0)
        try run.validateStream()
    }

    @Test("dual-stack listener [::]:P without IPV6_V6ONLY is one ipv6 flow marked dual_stack")
    func dualStack() throws {
        let run = try SockflowRun(["monitor"])
        let h = try Helper(["listen", "--family", "dual", "--addr", "::"])
        let listen = try listenRecord(run, port: h.port)
        expectListener(listen, pid: h.pid, port: h.port, family: "ipv6", address: "::")
        #expect(listen[path: "flow.dual_stack"] as? Bool == true)
        h.finish()
        _ = try closeRecord(run, id: try #require(listen.flowID))
        let mine = run.records.filter { $0.localPort == h.port && $0.event == "listen" }
        #expect(mine.count == 1, "one flow, not one per family")
        #expect(run.stop() == 0)
        try run.validateStream()
    }

    @Test("socket made by a parent, listen() called by its forked child: the child owns the listener")
    func forkThenListen() throws {
        let run = try SockflowRun(["monitor"])
        let h = try Helper(["listen", "--fork-listen"])
        let listen = try listenRecord(run, port: h.port)
        expectListener(listen, pid: h.pid, port: h.port, family: "ipv4", address: "127.0.0.1", comm: "sfh-child")
        #expect(h.pid != h.parent)
        #expect(listen.int("process.ppid") == h.parent)
        h.finish()
        let close = try closeRecord(run, id: try #require(listen.flowID))
        #expect(close.pid == h.pid)
        #expect(run.stop() == 0)
        try run.validateStream()
    }

    @Test("listener made by a parent that forks and exits: one flow, owned by the process that called listen()")
    func listenThenFork() throws {
        let run = try SockflowRun(["monitor"])
        let h = try Helper(["listen", "--listen-fork"])
        let listen = try listenRecord(run, port: h.port)
        #expect(listen.pid == h.parent, "the owner of a listener is the process that called listen()")
        #expect(listen.string("process.comm") == "sfhelper")
        h.finish()  // the child, which inherited the socket, closes it
        let close = try closeRecord(run, id: try #require(listen.flowID))
        #expect(close.pid == h.parent)
        #expect(close.int("flow.cookie") == listen.int("flow.cookie"))
        #expect(run.stop() == 0)
        try run.validateStream()
    }

    @Test("exe_name: the executable's file name as the kernel has it, NUL-terminated, cut at 39 bytes")
    func exeNameLengths() throws {
        // The BPF side copies the name in 8-byte words and clears what follows
        // its end: lengths around the word boundaries, the 40-byte inline limit
        // of a dentry's name, and a name kept outside the dentry.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sfexe-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let letters = Array("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        let names = [1, 7, 8, 9, 15, 16, 23, 24, 31, 32, 38, 39, 40, 41, 60].map { String(letters.prefix($0)) }
        let run = try SockflowRun(["monitor"])
        for name in names {
            let path = dir.appendingPathComponent(name).path
            try FileManager.default.copyItem(atPath: Paths.helper, toPath: path)
            let h = try Helper(["listen"], via: ["/bin/sh", "-c", "shift; exec '\(path)' \"$@\"", "sh"])
            let listen = try listenRecord(run, port: h.port)
            h.finish()
            #expect(listen.pid == h.pid)
            #expect(listen.string("process.exe_name") == String(name.prefix(39)), "a name of \(name.count) bytes")
        }
        #expect(run.stop() == 0)
        try run.validateStream()
    }

    @Test("a process that listens and exits at once: listen and close, kernel fields present, exe never guessed")
    func listenAndExit() throws {
        let run = try SockflowRun(["monitor"])
        let h = try Helper(["listen", "--exit-now"])
        h.process.waitUntilExit()
        let listen = try listenRecord(run, port: h.port)
        #expect(listen.pid == h.pid)
        #expect(listen.string("process.comm") == "sfhelper")
        #expect(listen.string("process.exe_name") == "sfhelper")
        // /proc may already be gone by the time sockflow reads it: then null, never another process's.
        let exe = listen.string("process.exe")
        #expect(exe == nil || exe == Self.helperExe)
        let close = try closeRecord(run, id: try #require(listen.flowID))
        #expect(close.pid == h.pid)
        #expect(close.string("reason") == "normal")
        #expect(run.stop() == 0)
        try run.validateStream()
    }

    @Test("hostile comm and argv (quotes, newlines, control bytes, invalid UTF-8) cannot break or forge a line")
    func hostileNames() throws {
        let run = try SockflowRun(["monitor"])
        let h = try Helper(["hostile"])
        let listen = try listenRecord(run, port: h.port)
        #expect(listen.string("process.comm") == "x\"}\n{\"seq\":1")
        let cmdline = try #require(listen[path: "process.cmdline"] as? [String])
        #expect(cmdline.contains("quote\" backslash\\ brace}"))
        #expect(cmdline.contains("new\nline\r\ttab"))
        #expect(cmdline.contains("\u{01}\u{02}\u{1b}[31mred\u{7f}"))
        #expect(cmdline.contains("\u{FFFD}\u{FFFD}\u{FFFD}( invalid utf-8 \u{FFFD}\u{FFFD}"))
        #expect(cmdline.contains("{\"event\":\"listen\",\"forged\":true}"))
        #expect(cmdline.contains("\u{2028} line separator, \u{1F41B} ok"))
        h.finish()
        _ = try closeRecord(run, id: try #require(listen.flowID))
        #expect(run.stop() == 0)
        let all = run.records
        #expect(!all.contains { $0["forged"] != nil }, "no line is a record the process wrote")
        #expect(all.count == run.out.snapshot.count, "every line is exactly one record")
        try run.validateStream()
    }
}
}
