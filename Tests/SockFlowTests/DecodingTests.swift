import CSockFlowABI
import Testing
@testable import SockFlowCore

@Suite("Decoding ring-buffer records")
struct DecodingTests {
    @Test("a listen record decodes field by field from its bytes")
    func listen() throws {
        var r = RecordBytes.event(kind: 1, cookie: 8123)
        r.ipv4(local: [0, 0, 0, 0], lport: 8080)
        r.put(UInt32(128), at: RecordBytes.backlog)
        r.put(UInt32(4_026_531_840), at: RecordBytes.netns)
        r.task(pid: 4242, tid: 4243, ppid: 1, uid: 1000, gid: 100, comm: "python3", exeName: "python3.11")
        let e = try r.decode()
        #expect(e.kind == .listen)
        #expect(e.raw.sock.cookie == 8123)
        #expect(e.raw.sock.lport == 8080)
        #expect(e.raw.backlog == 128)
        #expect(e.raw.sock.netns == 4_026_531_840)
        #expect(e.raw.task.pid == 4242)
        #expect(e.raw.task.tid == 4243)
        #expect(e.raw.task.gid == 100)
        #expect(e.hasTask)
        let owner = ProcessCache(procRoot: "/nonexistent", cgroups: CgroupCache(mountPoint: nil)).record(for: e.raw.task)
        #expect(owner.comm == "python3")
        #expect(owner.exeName == "python3.11")
        #expect(owner.exe == nil, "no /proc entry: null, not guessed")
    }

    @Test("a sample shorter than the header is rejected as truncated")
    func truncatedHeader() {
        let r = RecordBytes.event(kind: 1)
        #expect(throws: DecodeError(code: .truncated(size: 10, needed: 24))) {
            _ = try decodeSample(Array(r.bytes.prefix(10)))
        }
    }

    @Test("a sample cut inside the body is rejected as truncated, not read past its end")
    func truncatedBody() {
        let r = RecordBytes.event(kind: 5)
        #expect(throws: DecodeError(code: .truncated(size: 200, needed: 256))) {
            _ = try decodeSample(Array(r.bytes.prefix(200)))
        }
    }

    @Test("an unknown kind is rejected, not trusted", arguments: [UInt16(0), 7, 99, 0xffff])
    func unknownKind(kind: UInt16) {
        let r = RecordBytes.event(kind: kind)
        #expect(throws: DecodeError(code: .unknownKind(kind))) { try r.decode() }
    }

    @Test("a size field that disagrees with the layout is rejected")
    func badSize() {
        var r = RecordBytes.event(kind: 1)
        r.put(UInt16(128), at: RecordBytes.size)
        #expect(throws: DecodeError(code: .badSize(declared: 128, expected: 256))) { try r.decode() }
    }

    @Test("an undecodable sample becomes a counted 'lost' record at the end of the batch")
    func undecodableIsCounted() {
        let (builder, sink) = makeBuilder()
        let bad = RecordBytes.event(kind: 42)
        bad.bytes.withUnsafeBytes { builder.handle(sample: $0) }
        [UInt8](repeating: 0, count: 3).withUnsafeBytes { builder.handle(sample: $0) }
        #expect(sink.records.isEmpty)
        builder.flushPendingLoss()
        #expect(sink.records.count == 1)
        #expect(sink.records[0].event == .lost)
        #expect(sink.records[0].lost?.count == 2)
        #expect(sink.records[0].lost?.reason == .undecodable)
    }
}
