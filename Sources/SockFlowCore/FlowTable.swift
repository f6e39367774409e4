#if canImport(Glibc)
import Glibc
#endif

/// The live flows sockflow has reported, by socket cookie. Bounded: past `limit`
/// new flows are not tracked (and counted), so memory never grows without bound;
/// entries leave when their flow closes.
///
/// Entries are kept dense, with an open-addressing index (linear probing; see
/// `home`: cookies are a counter, no attacker chooses them) that holds cookie
/// and position. Entries are updated in place: the event
/// path neither hashes with SipHash nor copies entries around, and memory is
/// about (entry + 2 index slots) per live flow.
public final class FlowTable {
    public struct Entry: Sendable {
        public var flow: Flow
        /// Listener, outbound: who called listen()/connect(). Inbound: who accepted it.
        public var owner: ProcessRecord?
        public var role: FlowRole
        public var accepted: Bool
        /// The kernel stamp (CLOCK_MONOTONIC) of the event that made the entry.
        public var since: UInt64 = 0

        public init(flow: Flow, owner: ProcessRecord?, role: FlowRole, accepted: Bool, since: UInt64 = 0) {
            self.flow = flow
            self.owner = owner
            self.role = role
            self.accepted = accepted
            self.since = since
        }
    }

    public let limit: Int
    /// Entries, dense: 0..<count. Removal moves the last entry into the hole.
    @exclusivity(unchecked) private var entries: UnsafeMutablePointer<Entry>
    @exclusivity(unchecked) private var entryCapacity: Int
    /// Open-addressing index: cookie (0: empty) and the entry's position.
    @exclusivity(unchecked) private var slots: UnsafeMutablePointer<Slot>
    @exclusivity(unchecked) private var mask: Int
    @exclusivity(unchecked) private var shift: UInt64
    @exclusivity(unchecked) public private(set) var count = 0
    /// Flows not tracked because the table was full.
    @exclusivity(unchecked) public private(set) var untracked: UInt64 = 0
    /// The last flows that closed: an accept() that races with its flow's close
    /// (an RST handled on the other CPU) must not leave an entry behind.
    @exclusivity(unchecked) private var recent: [UInt64]

    struct Slot {
        var cookie: UInt64
        var position: Int32
    }

    /// Reserves room for `limit` entries and an index of twice that, as anonymous
    /// memory: pages become resident only when flows use them, so memory follows
    /// the live flows (their high-water mark) and growing never copies.
    public init(limit: Int) {
        self.limit = max(limit, 1)
        var slotCount = 16
        while slotCount < self.limit * 2 { slotCount <<= 1 }
        entryCapacity = self.limit
        entries = Self.reserve(Entry.self, count: self.limit)
        slots = Self.reserve(Slot.self, count: slotCount)  // zero pages: every slot empty
        mask = slotCount - 1
        shift = UInt64(64 - (slotCount >> 3).trailingZeroBitCount)  // picks a block of 8 slots
        recent = [UInt64](repeating: 0, count: 4096)
    }

    deinit {
        entries.deinitialize(count: count)
        munmap(entries, entryCapacity * MemoryLayout<Entry>.stride)
        munmap(slots, capacity * MemoryLayout<Slot>.stride)
    }

    static func reserve<T>(_: T.Type, count: Int) -> UnsafeMutablePointer<T> {
        let bytes = max(count * MemoryLayout<T>.stride, 1)
        let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else { fatalError("cannot reserve \(bytes) bytes for the flow table") }
        return p.bindMemory(to: T.self, capacity: count)
    }

    /// Index slots (a power of two, at least twice the entries' capacity).
    public var capacity: Int { mask + 1 }

    /// Cookies in blocks of 8: the block (cookie / 8) is scattered over the index
    /// by a multiplicative hash, the cookie's place in its block is kept. The
    /// kernel hands cookies out in sequence, so the two ends of a connection and
    /// the flows opened next to it share a block of slots, a cache line or two,
    /// where a hash of the whole cookie made every lookup a cache miss. Blocks
    /// land apart, so probe runs stay short even when 100,000 flows with
    /// consecutive cookies are live (the cookie's low bits alone made one run of
    /// them, and every removal walked it).
    @inline(__always)
    private func home(_ k: UInt64) -> Int {
        let block = Int(truncatingIfNeeded: ((k >> 3) &* 0x9E37_79B9_7F4A_7C15) >> shift)
        return (block << 3 | Int(truncatingIfNeeded: k & 7)) & mask
    }

    /// The slot holding `k`, or nil.
    @inline(__always)
    private func find(_ k: UInt64) -> Int? {
        var i = home(k)
        while true {
            let c = slots[i].cookie
            if c == k { return i }
            if c == 0 { return nil }
            i = (i &+ 1) & mask
        }
    }

    public func contains(_ cookie: UInt64) -> Bool { cookie != 0 && find(cookie) != nil }

    public subscript(cookie: UInt64) -> Entry? {
        guard cookie != 0, let i = find(cookie) else { return nil }
        return entries[Int(slots[i].position)]
    }

    /// The owner of a tracked flow, without copying the entry.
    public func owner(of cookie: UInt64) -> ProcessRecord? {
        guard cookie != 0, let i = find(cookie) else { return nil }
        return entries[Int(slots[i].position)].owner
    }

    /// Runs `body` on the entry in place; nil if the flow is not tracked.
    @inline(__always)
    public func withEntry<R>(_ cookie: UInt64, _ body: (inout Entry) -> R) -> R? {
        guard cookie != 0, let i = find(cookie) else { return nil }
        return body(&entries[Int(slots[i].position)])
    }

    /// Inserts or replaces; false (and counted) when the table is full.
    @discardableResult
    public func insert(_ entry: Entry) -> Bool {
        let k = entry.flow.id.cookie
        guard k != 0 else { return false }
        // one probe: the slot holding k (replace) or the empty one that ends its run (insert)
        var i = home(k)
        while true {
            let c = slots[i].cookie
            if c == k {
                entries[Int(slots[i].position)] = entry
                return true
            }
            if c == 0 { break }
            i = (i &+ 1) & mask
        }
        if count >= limit {
            untracked &+= 1
            return false
        }
        slots[i] = Slot(cookie: k, position: Int32(count))
        (entries + count).initialize(to: entry)
        count += 1
        return true
    }

    /// Removes and returns the entry. The index uses backward-shift deletion (no
    /// tombstones); the last entry moves into the hole so entries stay dense.
    public func remove(_ cookie: UInt64) -> Entry? {
        guard cookie != 0 else { return nil }
        recent[Int(truncatingIfNeeded: cookie) & (recent.count - 1)] = cookie
        guard var i = find(cookie) else { return nil }
        let position = Int(slots[i].position)
        let removed = (entries + position).move()
        let last = count - 1
        if position != last {
            let moved = entries[last].flow.id.cookie
            (entries + position).moveInitialize(from: entries + last, count: 1)
            slots[find(moved)!].position = Int32(position)
        }
        count -= 1
        var j = i
        while true {
            j = (j &+ 1) & mask
            let kj = slots[j].cookie
            if kj == 0 { break }
            let h = home(kj)
            // slots[j] stays if its home lies cyclically in (i, j]
            let stays = i <= j ? (i < h && h <= j) : (i < h || h <= j)
            if stays { continue }
            slots[i] = slots[j]
            i = j
        }
        slots[i] = Slot(cookie: 0, position: 0)
        return removed
    }

    /// Whether this cookie closed recently (a small direct-mapped memory).
    public func closedRecently(_ cookie: UInt64) -> Bool {
        recent[Int(truncatingIfNeeded: cookie) & (recent.count - 1)] == cookie
    }

    /// The longest run of occupied index slots (tests: probe runs stay short).
    var longestRun: Int {
        var longest = 0, run = 0
        for i in 0..<(2 * capacity) {  // twice round: a run may wrap
            if slots[i & mask].cookie != 0 { run += 1; longest = max(longest, min(run, capacity)) } else { run = 0 }
        }
        return longest
    }

    /// Every tracked cookie.
    public var cookies: [UInt64] { (0..<count).map { entries[$0].flow.id.cookie } }

    /// (cookie, netns, since, owner pid) of every entry, for reconciliation.
    public var summary: [(cookie: UInt64, netns: UInt32, since: UInt64, pid: Int32?)] {
        (0..<count).map { i in
            let e = entries[i]
            return (e.flow.id.cookie, e.flow.netns, e.since, e.owner?.pid)
        }
    }
}
