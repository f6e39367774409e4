import CSockFlowABI
import Testing
@testable import SockFlowCore

@Suite("Putting staged records back in time order")
struct RecordReorderTests {
    /// One sample holding these records back to back, as a CPU's stage hands them to the ring.
    static func sample(_ records: [(kind: UInt16, cookie: UInt64, ts: UInt64)]) -> [UInt8] {
        records.flatMap { RecordBytes.event(kind: $0.kind, cookie: $0.cookie, ts: $0.ts).bytes }
    }

    static func drain(_ r: RecordReorder, upTo cutoff: UInt64 = .max) -> [(KernelEventKind, UInt64, UInt64)] {
        var out: [(KernelEventKind, UInt64, UInt64)] = []
        r.release(upTo: cutoff) { kind, e in out.append((kind, e.pointee.sock.cookie, e.pointee.hdr.ts_ns)) }
        return out
    }

    @Test("records of two CPUs' batches come out in kernel time order, each batch split into its records")
    func merged() {
        let r = RecordReorder()
        // CPU 1's batch reaches the ring first although CPU 0's records are older
        Self.sample([(5, 7, 300), (5, 8, 500)]).withUnsafeBytes { r.add(sample: $0) }
        Self.sample([(2, 7, 100), (3, 7, 200), (3, 8, 400)]).withUnsafeBytes { r.add(sample: $0) }
        #expect(r.count == 5)
        let out = Self.drain(r)
        #expect(out.map(\.2) == [100, 200, 300, 400, 500])
        #expect(out.map(\.0) == [.connect, .established, .close, .established, .close])
        #expect(r.late == 0)
        #expect(r.count == 0)
    }

    @Test("records newer than the cutoff stay held; equal times keep their arrival order")
    func heldUntilDue() {
        let r = RecordReorder()
        Self.sample([(2, 1, 100), (2, 2, 300), (2, 3, 100)]).withUnsafeBytes { r.add(sample: $0) }
        let first = Self.drain(r, upTo: 200)
        #expect(first.map(\.1) == [1, 3])
        #expect(r.count == 1)
        #expect(r.oldest == 300)
        Self.sample([(5, 1, 250)]).withUnsafeBytes { r.add(sample: $0) }
        #expect(r.oldest == 250)
        #expect(Self.drain(r, upTo: 400).map(\.1) == [1, 2])
        #expect(r.late == 0)
    }

    @Test("past keepAtMost the oldest go out before they are due, in order")
    func bounded() {
        let r = RecordReorder()
        for ts in [UInt64(500), 100, 400, 200, 300] {
            Self.sample([(2, ts, ts)]).withUnsafeBytes { r.add(sample: $0) }
        }
        #expect(Self.drain(r, upTo: 0).isEmpty)
        var out: [UInt64] = []
        r.release(upTo: 0, keepAtMost: 2) { _, e in out.append(e.pointee.hdr.ts_ns) }
        #expect(out == [100, 200, 300])
        #expect(r.count == 2 && r.oldest == 400)
    }

    @Test("a record older than one already released still comes out, counted as late")
    func late() {
        let r = RecordReorder()
        Self.sample([(2, 1, 500)]).withUnsafeBytes { r.add(sample: $0) }
        #expect(Self.drain(r).count == 1)
        Self.sample([(5, 2, 400)]).withUnsafeBytes { r.add(sample: $0) }
        #expect(Self.drain(r).map(\.1) == [2])
        #expect(r.late == 1)
    }

    @Test("a sample that is not whole records is counted undecodable; the whole records before it are kept")
    func undecodable() {
        let r = RecordReorder()
        var bad = 0
        r.onUndecodable = { bad += 1 }
        let bytes = Self.sample([(2, 1, 100), (3, 1, 200)])
        Array(bytes.prefix(256 + 100)).withUnsafeBytes { r.add(sample: $0) }
        RecordBytes.event(kind: 42).bytes.withUnsafeBytes { r.add(sample: $0) }
        #expect(bad == 2)
        #expect(Self.drain(r).map(\.1) == [1])
    }

    @Test("storage grows past its first capacity and slots are reused after release")
    func grows() {
        let r = RecordReorder(initialCapacity: 16)
        for round in 0..<3 {
            let base = UInt64(round) * 1000
            // 40 records, newest first: every one out of order
            for i in (0..<40).reversed() {
                Self.sample([(2, UInt64(i), base + UInt64(i))]).withUnsafeBytes { r.add(sample: $0) }
            }
            let out = Self.drain(r)
            #expect(out.map(\.1) == (0..<40).map(UInt64.init))
        }
        #expect(r.late == 0)
    }
}
