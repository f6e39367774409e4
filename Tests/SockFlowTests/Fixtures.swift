import CSockFlowABI
@testable import SockFlowCore

/// Ring-buffer records built byte by byte at the offsets the ABI documents, so
/// the decoder is tested against the wire format, not against itself.
struct RecordBytes {
    var bytes = [UInt8](repeating: 0, count: 256)

    mutating func put<T: FixedWidthInteger>(_ v: T, at offset: Int) {
        withUnsafeBytes(of: v.littleEndian) { raw in
            for (i, b) in raw.enumerated() { bytes[offset + i] = b }
        }
    }
    mutating func put(bytes b: [UInt8], at offset: Int) {
        for (i, x) in b.enumerated() { bytes[offset + i] = x }
    }
    mutating func put(string s: String, at offset: Int) { put(bytes: Array(s.utf8), at: offset) }

    // offsets (sockflow_abi.h)
    static let tsNs = 0, lost = 8, kind = 16, size = 18, cpu = 20
    static let cookie = 24, laddr = 32, raddr = 48, netns = 64, lport = 68, rport = 70, family = 72, proto = 74, sockFlags = 75
    static let task = 80  // start_ns, exec_id, cgroup_id, exe_ino, exe_dev, pid, tid, ppid, uid, gid, flags, pad, comm, exe_name
    static let startNs = 200, listenerCookie = 208, bytesReceived = 216, bytesAcked = 224
    static let backlog = 232, fd = 236, rule = 240, skErr = 244, tcpState = 246, role = 247, closeFlags = 248
    static let hook = 249, action = 250, generation = 251

    static func event(kind: UInt16, cookie: UInt64 = 42, ts: UInt64 = 5_000_000_000) -> RecordBytes {
        var r = RecordBytes()
        r.put(ts, at: tsNs)
        r.put(kind, at: Self.kind)
        r.put(UInt16(256), at: size)
        r.put(cookie, at: Self.cookie)
        r.put(UInt8(6), at: proto)
        return r
    }

    mutating func ipv4(local: [UInt8], lport: UInt16, remote: [UInt8] = [0, 0, 0, 0], rport: UInt16 = 0) {
        put(UInt16(2), at: Self.family)
        put(bytes: local, at: Self.laddr)
        put(bytes: remote, at: Self.raddr)
        put(lport, at: Self.lport)
        put(rport, at: Self.rport)
    }

    mutating func ipv6(local: [UInt8], lport: UInt16, remote: [UInt8] = [UInt8](repeating: 0, count: 16), rport: UInt16 = 0) {
        put(UInt16(10), at: Self.family)
        put(bytes: local, at: Self.laddr)
        put(bytes: remote, at: Self.raddr)
        put(lport, at: Self.lport)
        put(rport, at: Self.rport)
    }

    mutating func task(pid: UInt32, tid: UInt32? = nil, ppid: UInt32 = 1, uid: UInt32 = 1000, gid: UInt32 = 1000,
                       comm: String, exeName: String = "", startNs: UInt64 = 1_000_000_000, cgroup: UInt64 = 1) {
        let t = Self.task
        put(startNs, at: t)
        put(UInt64(0), at: t + 8)
        put(cgroup, at: t + 16)
        put(UInt64(77), at: t + 24)
        put(UInt32(0xfe00000), at: t + 32)
        put(pid, at: t + 36)
        put(tid ?? pid, at: t + 40)
        put(ppid, at: t + 44)
        put(uid, at: t + 48)
        put(gid, at: t + 52)
        put(UInt32(SF_TASK_VALID.rawValue), at: t + 56)
        put(string: comm, at: t + 64)
        put(string: exeName, at: t + 80)
    }

    func decode() throws -> KernelEvent { try decodeSample(bytes) }
}

/// Collects emitted records.
final class CollectingSink: RecordSink, @unchecked Sendable {
    var records: [Record] = []
    func emit(_ record: borrowing Record) { records.append(copy record) }
}

/// A builder that reads no real /proc and no real cgroup tree.
func makeBuilder(procRoot: String = "/nonexistent-proc") -> (RecordBuilder, CollectingSink) {
    let sink = CollectingSink()
    let b = RecordBuilder(
        sink: sink, bootTag: 0x6599_a47d, clock: WallClock(offset: 1_700_000_000_000_000_000),
        processes: ProcessCache(procRoot: procRoot, cgroups: CgroupCache(mountPoint: nil)))
    return (b, sink)
}

func json(_ r: Record) -> String {
    var b = ByteBuffer()
    RecordEncoder.json(r, into: &b)
    return b.string
}

/// Decodes through a plain-throws path: typed-throws closures through
/// withUnsafeBytes crash the 6.3 compiler's IRGen.
func decodeSample(_ bytes: [UInt8]) throws -> KernelEvent {
    let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 8)
    defer { copy.deallocate() }
    copy.copyBytes(from: bytes)
    return try KernelEvent(bytes: UnsafeRawBufferPointer(rebasing: copy[0..<bytes.count]))
}
