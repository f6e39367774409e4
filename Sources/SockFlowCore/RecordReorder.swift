import CSockFlowABI

/// Puts the kernel's records back in time order.
///
/// With batched wakeups each CPU hands its TCP records to the ring in batches
/// (bpf/sockflow.bpf.c, "Staging"), so a record of one CPU can reach the ring
/// after later records of another: an accept before the established record of
/// the same connection, a close before its connect. The flow table needs each
/// flow's records in order. Records are held here until the caller knows that
/// nothing older can still arrive, and released sorted by kernel time (ties in
/// arrival order).
///
/// A sample may hold several records. Storage is reused: after the first
/// batches nothing is allocated per record.
public final class RecordReorder {
    /// Records that arrived after a later record had already been released: they
    /// are released at once, out of order (never dropped).
    @exclusivity(unchecked) public private(set) var late: UInt64 = 0
    /// Samples that are not a whole number of records, or hold a record that
    /// does not decode (passed to `onUndecodable`).
    public var onUndecodable: () -> Void = {}

    private struct Key: Comparable {
        var ts: UInt64
        var arrival: UInt64
        var slot: Int
        static func < (a: Key, b: Key) -> Bool { a.ts != b.ts ? a.ts < b.ts : a.arrival < b.arrival }
        static func == (a: Key, b: Key) -> Bool { a.ts == b.ts && a.arrival == b.arrival }
    }

    // One thread uses an instance. With the per-access exclusivity checks the
    // consumer benchmark ran about a fifth slower than without the buffer
    // (swift_beginAccess was among perf's top symbols); without them, as fast.
    @exclusivity(unchecked) private var storage: UnsafeMutablePointer<sf_event>
    @exclusivity(unchecked) private var capacity: Int
    @exclusivity(unchecked) private var free: [Int] = []
    @exclusivity(unchecked) private var keys: [Key] = []
    /// How many of `keys`, from the front, are known to be sorted.
    @exclusivity(unchecked) private var sorted = 0
    @exclusivity(unchecked) private var arrivals: UInt64 = 0
    @exclusivity(unchecked) private var released: UInt64 = 0

    public init(initialCapacity: Int = 4096) {
        capacity = max(initialCapacity, 16)
        storage = .allocate(capacity: capacity)
        free = Array((0..<capacity).reversed())
        free.reserveCapacity(capacity)
        keys.reserveCapacity(capacity)
    }

    deinit { storage.deallocate() }

    /// Records held.
    public var count: Int { keys.count }

    /// Kernel time of the oldest record held.
    public var oldest: UInt64? {
        if sorted == keys.count { return keys.first?.ts }
        return keys.min()?.ts
    }

    /// Copies the records of one ring-buffer sample in.
    public func add(sample: UnsafeRawBufferPointer) {
        let size = KernelEvent.size
        var offset = 0
        while offset < sample.count {
            let chunk = UnsafeRawBufferPointer(rebasing: sample[offset..<min(offset + size, sample.count)])
            guard (try? KernelEvent.validate(chunk)) != nil else {
                onUndecodable()
                return  // without a valid size the next record's start is unknown
            }
            if free.isEmpty { grow() }
            let slot = free.removeLast()
            UnsafeMutableRawPointer(storage + slot).copyMemory(from: chunk.baseAddress!, byteCount: size)
            arrivals &+= 1
            keys.append(Key(ts: storage[slot].hdr.ts_ns, arrival: arrivals, slot: slot))
            offset += size
        }
    }

    /// Hands every held record stamped at or before `cutoff` to `body`, oldest
    /// first; then, while more than `keepAtMost` are held, the oldest of the rest
    /// (before they are due: a bound on memory in a burst).
    public func release(upTo cutoff: UInt64, keepAtMost: Int = .max,
                        _ body: (KernelEventKind, UnsafePointer<sf_event>) -> Void) {
        guard !keys.isEmpty else { return }
        if sorted < keys.count {
            // Per CPU the records arrive nearly in order: the sort merges runs.
            keys.sort()
        }
        var n = 0
        while n < keys.count, keys[n].ts <= cutoff || keys.count - n > keepAtMost {
            let key = keys[n]
            let e = UnsafePointer(storage + key.slot)
            if key.ts < released { late &+= 1 } else { released = key.ts }
            if let kind = KernelEventKind(rawValue: e.pointee.hdr.kind) { body(kind, e) }
            free.append(key.slot)
            n += 1
        }
        keys.removeFirst(n)
        sorted = keys.count
    }

    /// Hands every held record to `body`, oldest first.
    public func releaseAll(_ body: (KernelEventKind, UnsafePointer<sf_event>) -> Void) {
        release(upTo: .max, body)
    }

    private func grow() {
        let bigger = UnsafeMutablePointer<sf_event>.allocate(capacity: capacity * 2)
        bigger.moveInitialize(from: storage, count: capacity)
        storage.deallocate()
        storage = bigger
        free.append(contentsOf: (capacity..<capacity * 2).reversed())
        capacity *= 2
    }
}
