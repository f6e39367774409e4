import Foundation
import Testing
import SockFlowBPF

#if canImport(Glibc)
import Glibc
#endif

extension Integration {
@Suite("Monitor options, loss and failure")
struct MonitorOptionsTests {
    @Test("--cgroup: sockets of that subtree only (the program is attached there)")
    func cgroupScope() throws {
        let cg = try TestCgroup("scope")
        let run = try SockflowRun(["monitor", "--cgroup", cg.relative])
        #expect(run.records[0].string("sockflow.filters.cgroup") == cg.path)
        #expect((run.records[0][path: "sockflow.hooks"] as? [String])?.contains("sockops:\(cg.path)") == true)
        let outside = try Helper(["listen"])
        let inside = try Helper(["listen"], via: cg.wrapper)
        let rec = try run.waitFor("listen inside the cgroup") { $0.event == "listen" && $0.localPort == inside.port }
        #expect(rec.pid == inside.pid)
        #expect(rec.string("process.cgroup") == cg.relative)
        inside.finish()
        outside.finish()
        _ = try run.waitFor("close inside the cgroup") { $0.event == "close" && $0.localPort == inside.port }
        #expect(run.stop() == 0)
        #expect(!run.records.contains { $0.localPort == outside.port }, "the listener outside the cgroup is not reported")
        #expect(run.records.allSatisfy { $0.event != "listen" || $0.string("process.cgroup") == cg.relative })
        try run.validateStream()
    }

    @Test("--pid: only that process's records")
    func pidFilter() throws {
        let mine = try Helper(["listen", "--wait"])
        let other = try Helper(["listen", "--wait"])
        let run = try SockflowRun(["monitor", "--pid", String(mine.pid)])
        mine.send("go")
        other.send("go")
        _ = try run.waitFor("listen of the pid") { $0.event == "listen" && $0.pid == mine.pid }
        mine.finish()
        other.finish()
        _ = try run.waitFor("close of the pid") { $0.event == "close" && $0.pid == mine.pid }
        #expect(run.stop() == 0)
        let flows = run.records.filter { $0["flow"] != nil }
        #expect(flows.count == 2)
        #expect(flows.allSatisfy { $0.pid == mine.pid })
        try run.validateStream()
    }

    @Test("a batch holding only filtered-out records still counts as activity: the next record is not stranded")
    func filteredBatchDoesNotStrand() throws {
        // With a 1 s delay the kernel wakes the reader at most once a second. `other`'s
        // first record forces a wakeup but is filtered out; `mine`'s close comes right
        // after, without a wakeup. The reader must look again one interval later.
        let mine = try Helper(["listen", "--wait"])
        let other = try Helper(["listen", "--wait"])
        let run = try SockflowRun(["monitor", "--pid", String(mine.pid), "--max-delay", "1000"])
        mine.send("go")
        _ = try run.waitFor("listen of the pid") { $0.event == "listen" && $0.pid == mine.pid }
        other.send("go")
        usleep(50_000)
        mine.finish()
        _ = try run.waitFor("close of the pid", timeout: 5) { $0.event == "close" && $0.pid == mine.pid }
        other.finish()
        #expect(run.stop() == 0)
        try run.validateStream()
    }

    @Test("--port (kernel filter) and --count: exits 0 by itself after N flow records")
    func portAndCount() throws {
        let h = try Helper(["listen", "--wait"])
        let run = try SockflowRun(["monitor", "--port", String(h.port), "--count", "2"])
        #expect(run.records[0].string("sockflow.filters.port") == String(h.port))
        h.send("go")
        h.finish()
        #expect(run.waitForExit() == 0)
        let recs = run.records
        #expect(recs.filter { $0["flow"] != nil }.map(\.event) == ["listen", "close"])
        #expect(recs.allSatisfy { $0["flow"] == nil || $0.localPort == h.port })
        #expect(recs.last?.string("reason") == "count")
        try run.validateStream()
    }

    @Test("--duration: exits 0 by itself")
    func duration() throws {
        let started = Date()
        let run = try SockflowRun(["monitor", "--duration", "0.5", "--port", "1"])
        #expect(run.waitForExit() == 0)
        #expect(Date().timeIntervalSince(started) >= 0.5)
        #expect(run.records.last?.string("reason") == "duration")
        try run.validateStream()
    }

    @Test("--format text: one aligned human line per record")
    func textFormat() throws {
        let h = try Helper(["listen", "--wait"])
        let run = try SockflowRun(["monitor", "--format", "text", "--port", String(h.port)], waitForStart: false)
        _ = run.out.wait(timeout: 10) { $0.first }
        #expect(run.out.snapshot.first?.contains(" start ") == true)
        h.send("go")
        let line = run.out.wait(timeout: 10) { lines in lines.first { $0.contains(" listen ") } }
        let l = try #require(line)
        #expect(l.contains("tcp4"))
        #expect(l.contains("127.0.0.1:\(h.port) -> *"))
        #expect(l.contains("pid=\(h.pid) sfhelper"))
        h.finish()
        #expect(run.stop() == 0)
        #expect(run.out.snapshot.last?.contains(" stop ") == true)
    }

    @Test("batched records: a close staged on one CPU reaches the ring before its connect staged on another; written in order")
    func stagedAcrossCPUs() throws {
        #expect(sysconf(Int32(_SC_NPROCESSORS_ONLN)) >= 2, "needs two CPUs")
        // The second connection's connect and handshake are staged on CPU 0; it is
        // reset from CPU 1, and two more connections on CPU 1 fill CPU 1's stage,
        // which goes to the ring with that close while the connect waits in CPU
        // 0's stage for the reader's next flush (up to a second away).
        let script = """
            import os, socket, struct, sys, time
            os.sched_setaffinity(0, {1})
            l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(16)
            port = l.getsockname()[1]
            sys.stdin.readline()
            a = socket.create_connection(("127.0.0.1", port)); a1, _ = l.accept()
            time.sleep(0.1)
            os.sched_setaffinity(0, {0})
            b = socket.create_connection(("127.0.0.1", port))
            time.sleep(0.1)
            os.sched_setaffinity(0, {1})
            b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            bport = b.getsockname()[1]
            b.close()
            for _ in range(2):
                c = socket.create_connection(("127.0.0.1", port)); c1, _ = l.accept(); c.close(); c1.close()
            print(port, bport, flush=True)
            sys.stdin.readline()
            """
        let python = try PythonScript(script)
        defer { python.reap() }
        let lines = python.lines
        // a second's wakeup interval: the stages hold their records for up to a second
        let run = try SockflowRun(["monitor", "--max-delay", "1000"])
        try python.send("go")
        let ports = try #require(lines.wait(timeout: 10) { $0.first }?.split(separator: " ").compactMap { Int($0) })
        try #require(ports.count == 2)
        let close = try run.waitFor("the reset's close", timeout: 10) { $0.event == "close" && $0.localPort == ports[1] }
        try python.send("done")
        #expect(run.stop() == 0)
        let mine = run.records.filter { $0["flow"] != nil && ($0.localPort == ports[0] || $0.remotePort == ports[0]) }
        let b = mine.filter { $0.localPort == ports[1] }
        #expect(b.map(\.event) == ["connect", "established", "close"], "\(b.map(\.event))")
        #expect(close.string("reason") == "reset")
        let times = mine.compactMap(\.timeNs)
        #expect(times.count == mine.count && times == times.sorted(), "written in kernel time order")
        try run.validateStream()
    }

    @Test("stopping right after a connection: the records still in the kernel's stages are written, none lost")
    func stopDrainsStages() throws {
        let server = try Helper(["serve", "--reply", "10"])
        let run = try SockflowRun(["monitor", "--max-delay", "2000", "--port", String(server.port)])
        // a first connection makes the reader active: it then looks at the ring
        // every 2 s by itself, and the kernel stages records for it
        _ = try Helper.run(["connect", "--port", String(server.port), "--send", "10"])
        usleep(200_000)
        let client = try Helper.run(["connect", "--port", String(server.port), "--send", "10"])
        let cport = try #require(Int(client["lport"] ?? ""))
        #expect(run.stop() == 0)  // at once: the stages hold the records until the next flush
        server.finish()
        let flows = run.records.filter { $0["flow"] != nil }
        #expect(flows.filter { $0.localPort == cport }.map(\.event) == ["connect", "established", "close"])
        #expect(flows.filter { $0.remotePort == cport }.map(\.event) == ["established", "accept", "close"])
        #expect(run.records.last?.int("counters.lost") == 0)
        try run.validateStream()
    }

    @Test("listen and close on both CPUs, SO_REUSEPORT groups among them: the kernel's listener tables are empty after")
    func listenerTablesDrain() throws {
        // Three processes in a cgroup of their own (the programs attach there):
        // one keeps a set of the key index full and spilling, two open
        // SO_REUSEPORT pairs on one port of the same set, so keys are shared,
        // spilled, registered and unregistered concurrently.
        let cgroup = try TestCgroup("listener-tables")
        var options = MonitorProgram.Options()
        options.cgroupPath = cgroup.path
        let program = try MonitorProgram.start(options)
        // five ports whose keys share a set of the index (lindex_set()): three
        // take its ways, two spill into the hash, each time round
        let spilling = listenerPython + """
            ports = []
            for q in range(20000, 65000):
                if len(ports) < 5 and set_of(q) == set_of(20000):
                    try:
                        listener("127.0.0.1", q).close(); ports.append(q)
                    except OSError:
                        pass
            for i in range(1200):
                held = [listener("127.0.0.1", q) for q in ports]
                for l in held[i % 5:] + held[:i % 5]:
                    l.close()
            print("done", flush=True)
            """
        // an SO_REUSEPORT pair on a sixth port of that set (the same one in
        // both processes): its key shares the set too, and spills with two
        // listeners on it as often as not
        let group = listenerPython + """
            def shared(port):
                l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                l.bind(("127.0.0.1", port)); return l
            for q in range(40000, 65000):
                if set_of(q) == set_of(20000):
                    try:
                        shared(q).close(); port = q; break
                    except OSError:
                        pass
            for _ in range(1500):
                pair = [shared(port) for _ in range(2)]
                for l in pair:
                    l.listen(1)
                for l in pair:
                    l.close()
            print("done", flush=True)
            """
        let scripts = try [PythonScript(spilling, in: cgroup), PythonScript(group, in: cgroup),
                           PythonScript(group, in: cgroup)]
        defer { scripts.forEach { $0.reap() } }
        for script in scripts {
            #expect(script.lines.wait(timeout: 60) { $0.contains("done") ? true : nil } == true)
        }
        // the programs saw every listener: each made a listen and a close record,
        // in the ring or counted lost once it was full
        final class Count: @unchecked Sendable { var bytes = 0 }
        let count = Count()
        let ring = try RingBuffer(mapFD: program.ringBufferFD) { count.bytes += $0.count; return true }
        _ = try ring.consume()
        let size = try #require(MonitorProgram.embeddedStructLayout("sf_event")?.size)
        #expect(count.bytes / size + Int(program.lostTotal) == 2 * (5 + 5 * 1200 + 2 * 2 * 1500))
        #expect(program.untrackedSockets == 0)
        let tables = program.listenerTables()
        #expect(tables.slots == 0 && tables.sets == 0 && tables.hashed == 0, "\(tables)")
    }

    @Test("the kernel does not wake a reader that said it will look by itself; it wakes one that sleeps")
    func wakeups() throws {
        // One process, so that only its first record wakes the reader as a
        // process new to it; each line on stdin runs that many connections, 5 ms apart.
        let script = """
            import socket, sys, time
            l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(64)
            port = l.getsockname()[1]
            print(port, flush=True)
            for line in sys.stdin:
                for _ in range(int(line)):
                    c = socket.create_connection(("127.0.0.1", port)); s, _ = l.accept()
                    c.close(); s.close(); time.sleep(0.005)
                print("done", flush=True)
            """
        let python = try PythonScript(script)
        defer { python.reap() }
        let lines = python.lines
        let port = try #require(lines.wait(timeout: 10) { $0.first.flatMap { UInt16($0) } })
        var options = MonitorProgram.Options()
        options.wakeupIntervalNanoseconds = 10_000_000
        options.ports = [port]
        let program = try MonitorProgram.start(options)
        // bytes: a sample is a record, or a stage of up to 8
        final class Count: @unchecked Sendable { var n = 0 }
        let count = Count()
        let ring = try RingBuffer(mapFD: program.ringBufferFD) { count.n += $0.count; return true }
        let size = try #require(MonitorProgram.embeddedStructLayout("sf_event")?.size)
        func woken(_ ms: Int32) -> Bool {  // the ring's epoll fd has an event (a wakeup put it there)
            var fd = pollfd(fd: ring.epollFD, events: Int16(POLLIN), revents: 0)
            return poll(&fd, 1, ms) > 0
        }
        func drain() throws {
            repeat {
                _ = program.flushStages()
                try ring.consume()
            } while woken(0)
        }
        var batches = 0
        func connections(_ n: Int) throws {
            try python.send(String(n))
            batches += 1
            let want = batches
            _ = try #require(lines.wait(timeout: 20) { $0.filter { $0 == "done" }.count >= want ? true : nil })
        }

        // asleep: the first record wakes the reader (and makes the process known)
        try drain()
        try connections(1)
        #expect(woken(2000), "a sleeping reader is woken")
        try drain()

        // active: 30 connections over 15 wakeup intervals and more, and no wakeup;
        // the records wait in the stages and the ring for the reader's own pass
        program.setReaderActive(true)
        count.n = 0
        try connections(30)
        #expect(!woken(0), "the kernel woke a reader that was active")
        _ = program.flushStages()
        try ring.consume()
        #expect(count.n == 30 * 6 * size, "\(count.n / size) records, 180 expected")

        // asleep again: the next record wakes it at once
        program.setReaderActive(false)
        try drain()
        count.n = 0
        try connections(1)
        #expect(woken(2000), "the first record after the reader said it sleeps wakes it")
        try ring.consume()
        #expect(count.n == 6 * size)
        try python.closeInput()
    }

    @Test("a full ring buffer: the kernel counts, 'lost' records say how many, seq never jumps")
    func lostRecords() throws {
        // 4 KiB holds 15 records; the reader is woken only every second.
        let run = try SockflowRun(["monitor", "--ring-buffer-size", "4K", "--max-delay", "1000"])
        let burst = try Helper(["burst", "3000"])
        let mine = { (r: JSON) in r.pid == burst.pid }
        _ = try? run.waitFor("a lost record", timeout: 5) { $0.event == "lost" }
        burst.finish()
        #expect(run.stop() == 0)
        let recs = run.records
        let lost = recs.filter { $0.event == "lost" }
        #expect(!lost.isEmpty)
        #expect(lost.allSatisfy { $0.string("reason") == "ring_buffer_full" && ($0.int("count") ?? 0) > 0 })
        let reportedLoss = lost.reduce(0) { $0 + ($1.int("count") ?? 0) }
        #expect(reportedLoss == recs.last?.int("counters.lost"), "every lost record is reported in-band")
        let seen = recs.filter(mine).count
        #expect(seen < 6000)
        #expect(seen + reportedLoss >= 6000, "seen \(seen) + lost \(reportedLoss) account for all 6000")
        // Listeners whose close was lost are all closed by now: the flow table must
        // have dropped them after comparing itself with the kernel's socket list.
        let closed = Set(recs.filter { mine($0) && $0.event == "close" }.compactMap(\.flowID))
        let leaked = recs.filter { mine($0) && $0.event == "listen" && !closed.contains($0.flowID ?? "") }.count
        let reconciled = recs.last?.int("counters.reconciled_flows") ?? -1
        #expect(reconciled >= leaked, "\(leaked) listeners lost their close; \(reconciled) entries reconciled")
        try run.validateStream()
    }

    @Test("bursts at full speed: every listener and every connection has all its records, none lost")
    func burstsComplete() throws {
        // A ring that holds every record: the test's pipe reader is slower than the
        // bursts, and loss is another test's subject. sockflow drains the ring when it stops.
        let run = try SockflowRun(["monitor", "--ring-buffer-size", "64M"])
        let listens = try Helper(["burst", "5000"])
        let conns = try Helper(["cburst", "3000"])
        listens.finish()
        conns.finish()
        #expect(run.stop() == 0)
        let recs = run.records
        #expect(recs.last?.int("counters.lost") == 0)
        var flows: [String: [String]] = [:]
        var order: [String] = []
        for r in recs {
            guard let id = r.flowID else { continue }
            let mine = r.pid == listens.pid || r.pid == conns.pid || r.localPort == conns.port || r.remotePort == conns.port
            guard mine else { continue }
            if flows[id] == nil { order.append(id) }
            flows[id, default: []].append(r.event)
        }
        let listenFlows = order.filter { flows[$0]?.first == "listen" }
        let outbound = order.filter { flows[$0]?.first == "connect" }
        let inbound = order.filter { flows[$0]?.first == "established" }
        #expect(listenFlows.count == 5001, "5000 burst listeners and the connection burst's one")
        #expect(outbound.count == 3000)
        #expect(inbound.count == 3000)
        #expect(listenFlows.count + outbound.count + inbound.count == order.count, "no flow starts with another record")
        let incomplete = order.filter { id in
            let events = flows[id] ?? []
            return events != ["listen", "close"] && events != ["connect", "established", "close"]
                && events != ["established", "accept", "close"]
        }
        #expect(incomplete.isEmpty, "\(incomplete.count) flows incomplete, e.g. \(incomplete.prefix(3).map { flows[$0] ?? [] })")
        // the schema is checked by the other tests; here only that no record is missing
        #expect(recs.enumerated().allSatisfy { $0.element.int("seq") == $0.offset + 1 }, "seq without gaps")
    }

    @Test("not root: one line naming the missing capabilities, non-zero exit, nothing on stdout")
    func unprivileged() throws {
        let run = try SockflowRun(["monitor"], waitForStart: false, executableUser: "65534")
        let status = try #require(run.waitForExit())
        #expect(status != 0)
        #expect(run.out.snapshot.isEmpty)
        let err = run.err.snapshot
        #expect(err.count == 1, "\(err)")
        #expect(err.first?.hasPrefix("sockflow: check privileges") == true)
        #expect(err.first?.contains("CAP_BPF") == true)
        #expect(err.first?.contains("run as root") == true)
    }

    @Test("stdout closed by its reader after two lines: sockflow notices, detaches and exits 0")
    func outputClosed() throws {
        let h = try Helper(["listen", "--wait"])
        let shell = Process()
        shell.executableURL = URL(fileURLWithPath: "/bin/bash")
        shell.arguments = ["-c", "set -o pipefail; '\(Paths.sockflow)' monitor --port \(h.port) | { read -r a; echo \"$a\"; read -r b; echo \"$b\"; }; echo status=${PIPESTATUS[0]}"]
        let pipe = Pipe()
        shell.standardOutput = pipe
        try shell.run()
        let out = LineCollector(fd: dup(pipe.fileHandleForReading.fileDescriptor))
        try? pipe.fileHandleForReading.close()
        #expect(out.wait(timeout: 10) { $0.first } != nil, "start record")
        h.send("go")  // the listen record: head prints it and exits
        #expect(out.wait(timeout: 10) { $0.count >= 2 ? true : nil } == true)
        h.finish()  // the close record meets a closed pipe
        let status = out.wait(timeout: 10) { lines in lines.first { $0.hasPrefix("status=") } }
        #expect(status == "status=0")
        shell.waitUntilExit()
    }
}
}
