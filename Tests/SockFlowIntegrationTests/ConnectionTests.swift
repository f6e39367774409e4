import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Connection flows with the real BPF programs: every client and server is its
/// own process, so a record that names the wrong one (the task a packet happened
/// to interrupt) fails. Records are selected by the test's own ports.
extension Integration {
@Suite("Connection flows and attribution")
struct ConnectionTests {
    static var ownNetns: Int {
        var st = stat()
        return stat("/proc/self/ns/net", &st) == 0 ? Int(st.st_ino) : -1
    }

    /// The records of one flow, found by the client's local port on either side.
    func flowRecords(_ run: SockflowRun, clientPort: Int) -> (client: [JSON], server: [JSON]) {
        let recs = run.records.filter { $0["flow"] != nil }
        let client = recs.filter { $0.string("flow.direction") == "outbound" && $0.localPort == clientPort }
        let server = recs.filter { $0.string("flow.direction") == "inbound" && $0.remotePort == clientPort }
        return (client, server)
    }

    @Test("client and server are different processes: connect names the client, accept the server; bytes exact")
    func clientServer() throws {
        let server = try Helper(["serve", "--reply", "2500"])
        let run = try SockflowRun(["monitor", "--port", String(server.port)])
        let before = wallNanoseconds()
        let client = try Helper.run(["connect", "--port", String(server.port), "--send", "1000"])
        let cport = try #require(Int(client["lport"] ?? ""))
        let cpid = try #require(Int(client["pid"] ?? ""))
        #expect(client["in"] == "2500" && client["out"] == "1000")
        try run.waitFor("server close") { $0.event == "close" && $0.remotePort == cport }
        try run.waitFor("client close") { $0.event == "close" && $0.localPort == cport }
        let after = wallNanoseconds()
        server.finish()
        #expect(run.stop() == 0)

        let (c, s) = flowRecords(run, clientPort: cport)
        #expect(c.map(\.event) == ["connect", "established", "close"])
        #expect(s.map(\.event) == ["established", "accept", "close"])
        #expect(c.allSatisfy { $0.pid == cpid }, "the client's records name the client")
        #expect(c.allSatisfy { $0.flowID == c.first?.flowID })
        #expect(c[0].int("flow.remote.port") == server.port)
        #expect(s[0][path: "process"] == nil, "before accept() nobody holds the connection")
        #expect(s[1].pid == server.pid && s[2].pid == server.pid, "accept and close name the server")
        #expect(s.allSatisfy { $0.flowID == s.first?.flowID })
        let listenID = run.records.first { $0.event == "listen" && $0.localPort == server.port }?.flowID
        if let listenID { #expect(s.allSatisfy { $0.string("flow.listener") == listenID }) }
        #expect(c[2].string("reason") == "normal" && s[2].string("reason") == "normal")
        #expect(c[2].int("bytes_out") == 1000 && c[2].int("bytes_in") == 2500)
        #expect(s[2].int("bytes_in") == 1000 && s[2].int("bytes_out") == 2500)
        #expect((c[2].int("duration_ns") ?? 0) > 0)
        // Times (some from TCP's own clock): wall-clock times of this test, in the
        // order things happened on each side.
        let times = (c + s).compactMap(\.timeNs)
        #expect(times.count == 6 && times.allSatisfy { $0 >= before && $0 <= after }, "\(before) \(times) \(after)")
        let ct = c.compactMap(\.timeNs), st = s.compactMap(\.timeNs)
        #expect(ct == ct.sorted() && st == st.sorted() && ct[1] <= st[0])
        try run.validateStream()
    }

    @Test("close() in FIN_WAIT2, long after the peer's last ACK: the close has the time of the close()")
    func closeInFinWait2() throws {
        let server = try Helper(["serve", "--no-accept"])  // acks our FIN, never sends its own
        let run = try SockflowRun(["monitor", "--port", String(server.port)])
        let client = try Helper.run(["connect", "--port", String(server.port), "--send", "10", "--fin-wait-ms", "600"])
        let cport = try #require(Int(client["lport"] ?? ""))
        let close = try run.waitFor("client close") { $0.event == "close" && $0.localPort == cport }
        server.finish()
        #expect(run.stop() == 0)
        let (c, _) = flowRecords(run, clientPort: cport)
        #expect(c.map(\.event) == ["connect", "established", "close"])
        let established = try #require(c[1].timeNs), closed = try #require(close.timeNs)
        #expect(closed - established >= 600_000_000, "the close() came 600 ms after the last packet")
        #expect((close.int("duration_ns") ?? 0) >= 600_000_000)
        #expect(close.int("bytes_out") == 10 && close.pid == Int(client["pid"] ?? ""))
        try run.validateStream()
    }

    @Test("pre-forked server: the listener is the parent's, each accept names the child that accepted")
    func prefork() throws {
        let run = try SockflowRun(["monitor"])
        let server = try Helper(["serve", "--workers", "3", "--reply", "10"])
        let workers = Set((server.ready["workers"] ?? "").split(separator: ",").compactMap { Int($0) })
        #expect(workers.count == 3)
        let listen = try run.waitFor("listen") { $0.event == "listen" && $0.localPort == server.port }
        #expect(listen.pid == server.pid)
        var clientPorts: [Int] = []
        for _ in 0..<9 {
            let c = try Helper.run(["connect", "--port", String(server.port), "--send", "7"])
            clientPorts.append(try #require(Int(c["lport"] ?? "")))
        }
        for port in clientPorts {
            try run.waitFor("server close for \(port)") { $0.event == "close" && $0.remotePort == port }
        }
        let served = server.connections
        server.finish()
        #expect(run.stop() == 0)
        for port in clientPorts {
            let (_, s) = flowRecords(run, clientPort: port)
            let accept = try #require(s.first { $0.event == "accept" })
            let worker = try #require(served[port]?.pid, "a worker served \(port)")
            #expect(workers.contains(worker))
            #expect(accept.pid == worker, "accept of \(port) names the worker that accepted it")
            #expect(accept.pid != server.pid)
            #expect(s.allSatisfy { $0.string("flow.listener") == listen.flowID })
            #expect(s.last?.pid == worker)
            #expect(s.last?.int("bytes_in") == 7 && s.last?.int("bytes_out") == 10)
        }
        try run.validateStream()
    }

    @Test("SO_REUSEPORT: two servers share a port; each flow links to the listener that queued it")
    func reuseport() throws {
        let a = try Helper(["serve", "--reuseport", "--reply", "1"])
        let b = try Helper(["serve", "--reuseport", "--port", String(a.port), "--reply", "1"])
        let run = try SockflowRun(["monitor", "--port", String(a.port)])
        // restart both listeners under the monitor: it learns listeners when they listen
        a.finish()
        b.finish()
        let a2 = try Helper(["serve", "--reuseport", "--port", String(a.port), "--reply", "1"])
        let b2 = try Helper(["serve", "--reuseport", "--port", String(a.port), "--reply", "1"])
        let la = try run.waitFor("listen a") { $0.event == "listen" && $0.pid == a2.pid }
        let lb = try run.waitFor("listen b") { $0.event == "listen" && $0.pid == b2.pid }
        #expect(la.flowID != lb.flowID)
        var ports: [Int] = []
        for _ in 0..<16 {
            let c = try Helper.run(["connect", "--port", String(a.port), "--send", "1"])
            ports.append(try #require(Int(c["lport"] ?? "")))
        }
        for p in ports { try run.waitFor("close \(p)") { $0.event == "close" && $0.remotePort == p } }
        let served = a2.connections.merging(b2.connections) { x, _ in x }
        a2.finish()
        b2.finish()
        #expect(run.stop() == 0)
        var perListener: [String: Int] = [:]
        for p in ports {
            let (_, s) = flowRecords(run, clientPort: p)
            let accept = try #require(s.first { $0.event == "accept" })
            let server = try #require(served[p]?.pid)
            let expected = server == a2.pid ? la.flowID : lb.flowID
            #expect(accept.pid == server)
            #expect(s.allSatisfy { $0.string("flow.listener") == expected }, "flow of \(p) links to its own listener")
            perListener[expected ?? "", default: 0] += 1
        }
        #expect(perListener.count == 2, "the kernel spread 16 connections over both listeners: \(perListener)")
        try run.validateStream()
    }

    @Test("two listeners on one port at different addresses: each flow links to the one it reached")
    func sameportDifferentAddresses() throws {
        let run = try SockflowRun(["monitor"])
        let one = try Helper(["serve", "--addr", "127.0.0.1", "--reply", "1"])
        let two = try Helper(["serve", "--addr", "127.0.0.2", "--port", String(one.port), "--reply", "1"])
        let l1 = try run.waitFor("listen 1") { $0.event == "listen" && $0.pid == one.pid }
        let l2 = try run.waitFor("listen 2") { $0.event == "listen" && $0.pid == two.pid }
        let c1 = try Helper.run(["connect", "--addr", "127.0.0.1", "--port", String(one.port), "--send", "1"])
        let c2 = try Helper.run(["connect", "--addr", "127.0.0.2", "--port", String(one.port), "--send", "1"])
        let p1 = try #require(Int(c1["lport"] ?? "")), p2 = try #require(Int(c2["lport"] ?? ""))
        let a1 = try run.waitFor("accept 1") { $0.event == "accept" && $0.remotePort == p1 }
        let a2 = try run.waitFor("accept 2") { $0.event == "accept" && $0.remotePort == p2 }
        one.finish()
        two.finish()
        #expect(run.stop() == 0)
        #expect(a1.string("flow.listener") == l1.flowID && a1.pid == one.pid)
        #expect(a2.string("flow.listener") == l2.flowID && a2.pid == two.pid)
        try run.validateStream()
    }

    @Test("listeners whose keys fill a set of the kernel's listener index and spill into its hash, close and come back: each flow links to its own")
    func listenerIndexSets() throws {
        // The keys (127.0.0.1, port) of a, b1, b2 and b3 hash to one set of the
        // index (bpf/sockflow.bpf.c, lindex_set()), which has three ways: b3's
        // key spills into the hash. a closes; d comes while b3 is still spilled,
        // so it spills too. When all have closed, e1-e4 take the set again, e4
        // on b3's port: it spills, and must not meet what b3 left in the hash.
        // Then wildcard listeners on a's and c's ports: the exact keys, all
        // closed, must say "none" so that the wildcards are found. Each line
        // the script prints is a client port and the cookie of the listener
        // its connection must name (listenerPython's connect()).
        let script = listenerPython + """
            def colliding(port, taken):
                for q in range(20000, 65000):
                    if q not in taken and set_of(q) == set_of(port):
                        try:
                            return listener("127.0.0.1", q)
                        except OSError:
                            pass
            a = listener("127.0.0.1", 0); p = a.getsockname()[1]
            taken = {p}
            b = []
            for _ in range(3):
                b.append(colliding(p, taken)); taken.add(b[-1].getsockname()[1])
            c = listener("127.0.0.1", 0); r = c.getsockname()[1]
            for l in [a] + b + [c]:
                connect(l)
            a.close()
            d = colliding(p, taken)
            connect(d); connect(b[2])
            q = [l.getsockname()[1] for l in b]
            for l in b + [d, c]:
                l.close()
            e = [listener("127.0.0.1", port) for port in (q[0], q[1], p, q[2])]
            connect(e[3]); connect(e[0])
            for l in e:
                l.close()
            w, v = listener("0.0.0.0", p), listener("0.0.0.0", r)
            connect(w); connect(v)
            w.close(); v.close()
            print("done", flush=True)
            """
        let run = try SockflowRun(["monitor"])
        let python = try PythonScript(script)
        defer { python.reap() }
        let lines = try #require(python.lines.wait(timeout: 20) { $0.last == "done" ? $0 : nil })
        try #require(lines.filter { $0.hasPrefix("flow ") }.count == 11, "\(lines)")
        try expectListenersNamed(run, lines)
        #expect(run.stop() == 0)
        try run.validateStream()
    }

    @Test("a listener whose cookie maps to a live listener's slot is kept in the hash: both close whole, flows link to each")
    func listenerSlotTaken() throws {
        // The kernel keeps a listener's owner in a slot chosen by its cookie
        // (lslots, cookie & 16383). Cookies come in sequence: b is the socket
        // 16384 cookies after a's, made while a still listens.
        let script = listenerPython + """
            def listen(l):
                l.bind(("127.0.0.1", 0)); l.listen(16); return l
            a = listen(socket.socket())
            for _ in range(1 << 20):
                b = socket.socket()
                if cookie(b) % 16384 == cookie(a) % 16384:
                    break
                b.close()
            listen(b)
            print("listeners", a.getsockname()[1], b.getsockname()[1], "%016x" % cookie(a), "%016x" % cookie(b), flush=True)
            connect(a); connect(b)
            b.close(); a.close()
            print("done", flush=True)
            """
        let run = try SockflowRun(["monitor"])
        let python = try PythonScript(script)
        defer { python.reap() }
        let lines = try #require(python.lines.wait(timeout: 20) { $0.last == "done" ? $0 : nil })
        let listeners = try #require(lines.first { $0.hasPrefix("listeners ") }?.split(separator: " "))
        let ports = [Int(listeners[1]), Int(listeners[2])], cookies = [String(listeners[3]), String(listeners[4])]
        let values = cookies.compactMap { UInt64($0, radix: 16) }
        try #require(values.count == 2 && values[0] != values[1] && values[0] & 16383 == values[1] & 16383)
        let pid = Int(python.process.processIdentifier)
        for (port, cookie) in zip(ports, cookies) {
            let listen = try run.waitFor("listen \(cookie)") { $0.event == "listen" && $0.localPort == port }
            #expect(listen.string("flow.id")?.hasSuffix(cookie) == true && listen.pid == pid)
            let close = try run.waitFor("close of listener \(cookie)") {
                $0.event == "close" && $0.flowID == listen.flowID
            }
            #expect(close.pid == pid, "the owner the kernel kept: \(close)")
            #expect(close.string("process.comm") != nil)
        }
        try expectListenersNamed(run, lines)
        #expect(run.stop() == 0)
        try run.validateStream()
    }

    @Test("a connection reset by the client before anyone accepted it: 'aborted', no accept, no owner")
    func abortedBeforeAccept() throws {
        let server = try Helper(["serve", "--no-accept"])
        let run = try SockflowRun(["monitor", "--port", String(server.port)])
        let client = try Helper.run(["connect", "--port", String(server.port), "--linger0", "--hold-ms", "50"])
        let cport = try #require(Int(client["lport"] ?? ""))
        try run.waitFor("server-side close") { $0.event == "close" && $0.remotePort == cport }
        try run.waitFor("client close") { $0.event == "close" && $0.localPort == cport }
        server.finish()
        #expect(run.stop() == 0)
        let (c, s) = flowRecords(run, clientPort: cport)
        #expect(s.map(\.event) == ["established", "close"], "never accepted")
        #expect(s.last?.string("reason") == "aborted")
        #expect(s.last?[path: "process"] == nil)
        #expect(s.last?.int("errno") == Int(ECONNRESET))
        #expect(c.last?.string("reason") == "reset", "the client aborted with an RST")
        try run.validateStream()
    }

    @Test("reset by the peer while its process still holds the socket: the close comes at the reset, errno 104")
    func resetWhileHeld() throws {
        let server = try Helper(["serve", "--no-accept"])
        let run = try SockflowRun(["monitor", "--port", String(server.port)])
        let client = try Helper(["connect", "--port", String(server.port), "--hold-ms", "8000"], waitReady: false)
        let line = try #require(client.out.wait(timeout: 10) { $0.first { $0.hasPrefix("connected") } })
        let cport = try #require(line.split(separator: " ").first { $0.hasPrefix("lport=") }.flatMap { Int($0.dropFirst(6)) })
        try run.waitFor("client established") { $0.event == "established" && $0.localPort == cport }
        // The listener closes with the connection still in its accept queue: the
        // kernel resets it, and the client's socket dies under its process.
        server.finish()
        let close = try run.waitFor("client close", timeout: 5) { $0.event == "close" && $0.localPort == cport }
        #expect(client.process.isRunning, "reported while the client still holds the socket")
        #expect(close.string("reason") == "reset")
        #expect(close.int("errno") == Int(ECONNRESET))
        #expect(close.pid == Int(client.process.processIdentifier))
        let serverClose = try run.waitFor("server close") { $0.event == "close" && $0.remotePort == cport }
        #expect(serverClose.string("reason") == "aborted", "never accepted")
        Helper.reap(client.process)
        #expect(run.stop() == 0)
        let (c, _) = flowRecords(run, clientPort: cport)
        #expect(c.map(\.event) == ["connect", "established", "close"], "one close, not another at close()")
        try run.validateStream()
    }

    @Test("a connection that outlives its kernel slot (64 slots, 100 newer connections): its close still comes, whole")
    func outlivesSlot() throws {
        let server = try Helper(["serve", "--workers", "2"])
        let run = try SockflowRun(["monitor", "--port", String(server.port), "--max-flows", "64"])
        let held = try Helper(["connect", "--port", String(server.port), "--send", "3", "--hold-ms", "6000"], waitReady: false)
        let line = try #require(held.out.wait(timeout: 10) { $0.first { $0.hasPrefix("connected") } })
        let hport = try #require(line.split(separator: " ").first { $0.hasPrefix("lport=") }.flatMap { Int($0.dropFirst(6)) })
        for _ in 0..<100 {
            let c = try Helper.run(["connect", "--port", String(server.port)])
            #expect(c["errno"] == "0")
        }
        let close = try run.waitFor("the held connection's close", timeout: 15) { $0.event == "close" && $0.localPort == hport }
        server.finish()
        #expect(run.stop() == 0)
        #expect(close.string("reason") == "normal")
        #expect(close.pid == Int(held.process.processIdentifier), "the owner user space kept")
        #expect(close.int("bytes_out") == 3 && close.int("bytes_in") == 0)
        #expect((close.int("duration_ns") ?? 0) > 1_000_000_000)
        #expect(run.records.filter { $0.event == "close" && $0.localPort == hport }.count == 1)
        try run.validateStream()
    }

    @Test("connect to a closed port: 'refused', errno 111, no established")
    func refused() throws {
        let free = try Helper(["listen"])  // a port that is surely free once this closes
        let port = free.port
        free.finish()
        let run = try SockflowRun(["monitor", "--port", String(port)])
        let client = try Helper.run(["connect", "--port", String(port)])
        #expect(client["errno"] == String(ECONNREFUSED))
        let cport = try #require(Int(client["lport"] ?? ""))
        let close = try run.waitFor("close") { $0.event == "close" && $0.localPort == cport }
        #expect(run.stop() == 0)
        let (c, _) = flowRecords(run, clientPort: cport)
        #expect(c.map(\.event) == ["connect", "close"])
        #expect(close.string("reason") == "refused")
        #expect(close.int("errno") == Int(ECONNREFUSED))
        #expect(close.pid == Int(client["pid"] ?? ""))
        #expect(close.int("bytes_in") == 0 && close.int("bytes_out") == 0)
        try run.validateStream()
    }

    @Test("SYN never answered (a blackhole in a test namespace, TCP_SYNCNT 1): 'timeout', errno 110, the namespace's netns")
    func timeout() throws {
        let ns = try TestNetns("to")
        let run = try SockflowRun(["monitor", "--port", "80"])
        let client = try Helper.run(
            ["connect", "--addr", ns.blackhole, "--port", "80", "--syncnt", "1"], via: ns.wrapper, timeout: 30)
        #expect(client["errno"] == String(ETIMEDOUT))
        let cport = try #require(Int(client["lport"] ?? ""))
        let close = try run.waitFor("close") { $0.event == "close" && $0.localPort == cport && $0.int("flow.netns") == ns.inode }
        #expect(run.stop() == 0)
        #expect(close.string("reason") == "timeout")
        #expect(close.int("errno") == Int(ETIMEDOUT))
        #expect((close.int("duration_ns") ?? 0) > 2_500_000_000)
        #expect(close.pid == Int(client["pid"] ?? ""))
        #expect(close.string("flow.remote.address") == ns.blackhole)
        try run.validateStream()
    }

    @Test("server in its own namespace reached over veth (softirq receive path): exact owner, netns and bytes")
    func vethNamespace() throws {
        let ns = try TestNetns("veth")
        let run = try SockflowRun(["monitor"])
        let server = try Helper(["serve", "--addr", ns.nsAddress, "--reply", "3000"], via: ns.wrapper)
        let client = try Helper.run(["connect", "--addr", ns.nsAddress, "--port", String(server.port), "--send", "500"])
        let cport = try #require(Int(client["lport"] ?? ""))
        let cpid = try #require(Int(client["pid"] ?? ""))
        try run.waitFor("server close") { $0.event == "close" && $0.remotePort == cport && $0.localPort == server.port }
        try run.waitFor("client close") { $0.event == "close" && $0.localPort == cport }
        server.finish()
        #expect(run.stop() == 0)
        let (c, s) = flowRecords(run, clientPort: cport)
        #expect(s.map(\.event) == ["established", "accept", "close"])
        #expect(s.allSatisfy { $0.int("flow.netns") == ns.inode })
        #expect(c.allSatisfy { $0.int("flow.netns") == Self.ownNetns })
        #expect(s[0][path: "process"] == nil)
        #expect(s[1].pid == server.pid && s[2].pid == server.pid)
        #expect(c.allSatisfy { $0.pid == cpid })
        #expect(!s.contains { $0.pid == cpid }, "no server-side record names the client")
        #expect(s[2].int("bytes_in") == 500 && s[2].int("bytes_out") == 3000)
        #expect(c.last?.int("bytes_in") == 3000 && c.last?.int("bytes_out") == 500)
        #expect(s[1].string("flow.local.address") == ns.nsAddress)
        #expect(s[1].string("flow.remote.address") == ns.hostAddress)
        let listen = run.records.first { $0.event == "listen" && $0.localPort == server.port }
        #expect(listen?.int("flow.netns") == ns.inode)
        #expect(s.allSatisfy { $0.string("flow.listener") == listen?.flowID })
        try run.validateStream()
    }

    @Test("IPv4 client on a dual-stack listener: the accepted flow is IPv4 with mapped: true")
    func mappedPeer() throws {
        let server = try Helper(["serve", "--family", "dual", "--addr", "::", "--reply", "5"])
        let run = try SockflowRun(["monitor", "--port", String(server.port)])
        let client = try Helper.run(["connect", "--addr", "127.0.0.1", "--port", String(server.port), "--send", "3"])
        let cport = try #require(Int(client["lport"] ?? ""))
        try run.waitFor("server close") { $0.event == "close" && $0.remotePort == cport }
        server.finish()
        #expect(run.stop() == 0)
        let (c, s) = flowRecords(run, clientPort: cport)
        #expect(s.count == 3)
        for r in s {
            #expect(r.string("flow.family") == "ipv4")
            #expect(r[path: "flow.mapped"] as? Bool == true)
            #expect(r.string("flow.local.address") == "127.0.0.1")
            #expect(r.string("flow.remote.address") == "127.0.0.1")
        }
        #expect(c.allSatisfy { $0[path: "flow.mapped"] as? Bool == false && $0.string("flow.family") == "ipv4" })
        #expect(s.last?.int("bytes_in") == 3 && s.last?.int("bytes_out") == 5)
        try run.validateStream()
    }

    @Test("IPv6 on both ends")
    func ipv6() throws {
        let server = try Helper(["serve", "--family", "6", "--addr", "::1", "--reply", "64"])
        let run = try SockflowRun(["monitor", "--port", String(server.port)])
        let client = try Helper.run(["connect", "--addr", "::1", "--port", String(server.port), "--send", "32"])
        let cport = try #require(Int(client["lport"] ?? ""))
        try run.waitFor("server close") { $0.event == "close" && $0.remotePort == cport }
        try run.waitFor("client close") { $0.event == "close" && $0.localPort == cport }
        server.finish()
        #expect(run.stop() == 0)
        let (c, s) = flowRecords(run, clientPort: cport)
        #expect(c.map(\.event) == ["connect", "established", "close"])
        #expect(s.map(\.event) == ["established", "accept", "close"])
        #expect((c + s).allSatisfy { $0.string("flow.family") == "ipv6" && $0.string("flow.local.address") == "::1" })
        #expect(c.last?.int("bytes_in") == 64 && s.last?.int("bytes_in") == 32)
        try run.validateStream()
    }

    @Test("a full flow table: an in-band 'overflow' record, records still written, never unbounded")
    func tableLimit() throws {
        let run = try SockflowRun(["monitor", "--max-flows", "2"])
        // Three listeners alive at once: the third cannot be tracked.
        let listeners = try (0..<3).map { _ in try Helper(["listen"]) }
        let overflow = try run.waitFor("overflow") { $0.event == "overflow" }
        #expect(overflow.string("table") == "flows")
        #expect(overflow.int("limit") == 2)
        #expect((overflow.int("untracked") ?? 0) >= 1)
        for l in listeners {
            try run.waitFor("listen \(l.port)") { $0.event == "listen" && $0.localPort == l.port }
        }
        for l in listeners { l.finish() }
        for l in listeners {
            // Every close is reported and names its owner, which the kernel keeps with
            // each listener even when user space had no room for the flow.
            let close = try run.waitFor("close \(l.port)") { $0.event == "close" && $0.localPort == l.port }
            #expect(close.pid == l.pid)
            #expect(close.string("process.comm") == "sfhelper")
        }
        #expect(run.stop() == 0)
        #expect((run.records.last?.int("counters.untracked_flows") ?? 0) >= 1)
        try run.validateStream()
    }
}
}
