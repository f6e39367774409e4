#if canImport(Glibc)
import Glibc
#endif
import CSockFlowABI
import SockFlow
import SockFlowCore

/// The consumer without the kernel: ring-buffer samples recorded as bytes are
/// decoded, put in time order (the reorder buffer), joined with the flow table
/// and the owner cache, encoded as JSON and written to a file descriptor, on one
/// thread. Prints records/s.
///
/// The fixtures are connection cycles the way the kernel reports them (connect,
/// established out, established in, accept, close out, close in), owned by this
/// process, so /proc and the cgroup are read once and then served from the cache:
/// the steady state of a busy server.
enum ConsumerBench {
    static func samples(cycles: Int) -> [[UInt8]] {
        var out: [[UInt8]] = []
        out.reserveCapacity(cycles * 6)
        let me = sf_task.current()
        var cookie: UInt64 = 1000
        var listener = sf_event()
        listener.sock.cookie = 999
        for i in 0..<cycles {
            let client = cookie, server = cookie + 1
            cookie += 2
            let cport = UInt16(32768 + i % 28000)
            func ev(_ kind: KernelEventKind, _ c: UInt64, role: FlowRole, task: Bool, out: Bool) -> [UInt8] {
                var e = sf_event()
                e.hdr.kind = kind.rawValue
                e.hdr.size = UInt16(MemoryLayout<sf_event>.size)
                e.hdr.ts_ns = WallClock.kernelNow() + UInt64(i) * 10_000
                e.sock.cookie = c
                e.sock.family = UInt16(AF_INET)
                e.sock.protocol = UInt8(IPPROTO_TCP)
                withUnsafeMutableBytes(of: &e.sock.laddr) { $0[0] = 127; $0[3] = 1 }
                withUnsafeMutableBytes(of: &e.sock.raddr) { $0[0] = 127; $0[3] = 1 }
                e.sock.lport = out ? cport : 8080
                e.sock.rport = out ? 8080 : cport
                e.sock.netns = 4_026_531_840
                e.role = role.rawValue
                if task { e.task = me }
                e.start_ns = e.hdr.ts_ns
                if kind == .close {
                    e.bytes_received = 1001
                    e.bytes_acked = 102
                    e.tcp_state = out ? 5 : 9
                    e.close_flags = 3
                }
                if role == .inbound { e.listener_cookie = listener.sock.cookie }
                return withUnsafeBytes(of: e) { Array($0) }
            }
            out.append(ev(.connect, client, role: .outbound, task: true, out: true))
            out.append(ev(.established, client, role: .outbound, task: true, out: true))
            out.append(ev(.established, server, role: .inbound, task: false, out: false))
            out.append(ev(.accept, server, role: .inbound, task: true, out: false))
            out.append(ev(.close, client, role: .outbound, task: true, out: true))
            out.append(ev(.close, server, role: .inbound, task: false, out: false))
        }
        return out
    }

    /// One pass over `samples`; returns (records, seconds, bytes written).
    static func run(_ samples: [[UInt8]], fd: Int32, batch: Int = 4096) -> (UInt64, Double, UInt64) {
        let writer = LineWriter(fd: fd, format: .json)
        let builder = RecordBuilder(sink: writer, bootTag: BootID.tag())
        // as the monitor runs with batched wakeups: each sample copied into the
        // reorder buffer, released in time order once per batch
        let reorder = RecordReorder()
        let start = WallClock.kernelNow()
        var n = 0
        for s in samples {
            s.withUnsafeBytes { reorder.add(sample: $0) }
            n += 1
            if n == batch {
                reorder.releaseAll { kind, e in builder.handle(kind, e) }
                _ = writer.flush()
                n = 0
            }
        }
        reorder.releaseAll { kind, e in builder.handle(kind, e) }
        _ = writer.flush()
        let secs = Double(WallClock.kernelNow() - start) / 1e9
        return (builder.seq, secs, writer.bytesWritten)
    }
}

extension sf_task {
    /// This process, as the kernel would record it.
    static func current() -> sf_task {
        var t = sf_task()
        t.pid = UInt32(getpid())
        t.tid = t.pid
        t.ppid = UInt32(getppid())
        t.uid = getuid()
        t.gid = getgid()
        t.flags = UInt32(SF_TASK_VALID.rawValue)
        // start time as the kernel has it: /proc's starttime is in clock ticks
        if let stat = FileIO.readString("/proc/self/stat"), let close = stat.lastIndex(of: ")") {
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 19, let ticks = UInt64(fields[19]) {
                t.start_ns = ticks * (1_000_000_000 / UInt64(sysconf(Int32(_SC_CLK_TCK))))
            }
        }
        var st = stat()
        if stat("/proc/self/ns/cgroup", &st) == 0 {}
        t.cgroup_id = CgroupFS.mountPoint().flatMap { root in
            FileIO.readString("/proc/self/cgroup")?.split(separator: "\n").first { $0.hasPrefix("0::") }
                .flatMap { CgroupFS.id(ofDirectory: root + $0.dropFirst(3)) }
        } ?? 1
        withUnsafeMutableBytes(of: &t.comm) { $0.copyBytes(from: Array("sockflow-bench".utf8)) }
        withUnsafeMutableBytes(of: &t.exe_name) { $0.copyBytes(from: Array("sockflow-bench".utf8)) }
        return t
    }
}
