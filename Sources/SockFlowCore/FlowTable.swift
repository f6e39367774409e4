/// The live flows sockflow has reported, by socket cookie. Bounded: past `limit`
/// new flows are not tracked (and counted), so memory never grows without bound;
/// entries leave when their flow closes.
///
/// Open addressing with linear probing and a multiplicative hash of the cookie
/// (cookies are a counter: no attacker chooses them), entries updated in place:
/// the event path neither hashes with SipHash nor copies entries around.
public final class FlowTable {
    public struct Entry: Sendable {
        public var flow: Flow
        /// Listener, outbound: who called listen()/connect(). Inbound: who accepted it.
        public var owner: ProcessRecord?
        public var role: FlowRole
        public var accepted: Bool
        /// CLOCK_BOOTTIME of the event that made the entry.
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
    @exclusivity(unchecked) private var keys: UnsafeMutablePointer<UInt64>  // 0: empty
    @exclusivity(unchecked) private var values: UnsafeMutablePointer<Entry>
    @exclusivity(unchecked) private var mask: Int
    @exclusivity(unchecked) private var shift: UInt64
    @exclusivity(unchecked) public private(set) var count = 0
    /// Flows not tracked because the table was full.
    @exclusivity(unchecked) public private(set) var untracked: UInt64 = 0
    /// The last flows that closed: an accept() that races with its flow's close
    /// (an RST handled on the other CPU) must not leave an entry behind.
    @exclusivity(unchecked) private var recent: [UInt64]

    public init(limit: Int, initialCapacity: Int = 1024) {
        self.limit = max(limit, 1)
        var cap = 16
        while cap < initialCapacity { cap <<= 1 }
        keys = .allocate(capacity: cap)
        keys.initialize(repeating: 0, count: cap)
        values = .allocate(capacity: cap)
        mask = cap - 1
        shift = UInt64(64 - cap.trailingZeroBitCount)
        recent = [UInt64](repeating: 0, count: 4096)
    }

    deinit {
        for i in 0...mask where keys[i] != 0 { (values + i).deinitialize(count: 1) }
        keys.deallocate()
        values.deallocate()
    }

    public var capacity: Int { mask + 1 }

    @inline(__always)
    private func home(_ k: UInt64) -> Int { Int(truncatingIfNeeded: (k &* 0x9E37_79B9_7F4A_7C15) >> shift) }

    @inline(__always)
    private func find(_ k: UInt64) -> Int? {
        var i = home(k)
        while true {
            let key = keys[i]
            if key == k { return i }
            if key == 0 { return nil }
            i = (i &+ 1) & mask
        }
    }

    public func contains(_ cookie: UInt64) -> Bool { cookie != 0 && find(cookie) != nil }

    public subscript(cookie: UInt64) -> Entry? {
        guard cookie != 0, let i = find(cookie) else { return nil }
        return values[i]
    }

    /// The owner of a tracked flow, without copying the entry.
    public func owner(of cookie: UInt64) -> ProcessRecord? {
        guard cookie != 0, let i = find(cookie) else { return nil }
        return values[i].owner
    }

    /// Runs `body` on the entry in place; nil if the flow is not tracked.
    @inline(__always)
    public func withEntry<R>(_ cookie: UInt64, _ body: (inout Entry) -> R) -> R? {
        guard cookie != 0, let i = find(cookie) else { return nil }
        return body(&values[i])
    }

    /// Inserts or replaces; false (and counted) when the table is full.
    @discardableResult
    public func insert(_ entry: Entry) -> Bool {
        let k = entry.flow.id.cookie
        guard k != 0 else { return false }
        if let i = find(k) {
            values[i] = entry
            return true
        }
        if count >= limit {
            untracked &+= 1
            return false
        }
        if (count + 1) * 4 > capacity * 3 { grow() }
        var i = home(k)
        while keys[i] != 0 { i = (i &+ 1) & mask }
        keys[i] = k
        (values + i).initialize(to: entry)
        count += 1
        return true
    }

    /// Removes and returns the entry (backward-shift deletion: no tombstones).
    public func remove(_ cookie: UInt64) -> Entry? {
        guard cookie != 0 else { return nil }
        recent[Int(truncatingIfNeeded: cookie) & (recent.count - 1)] = cookie
        guard var i = find(cookie) else { return nil }
        let removed = (values + i).move()
        var j = i
        while true {
            j = (j &+ 1) & mask
            let kj = keys[j]
            if kj == 0 { break }
            let h = home(kj)
            // keys[j] stays if its home lies cyclically in (i, j]
            let stays = i <= j ? (i < h && h <= j) : (i < h || h <= j)
            if stays { continue }
            keys[i] = kj
            (values + i).moveInitialize(from: values + j, count: 1)
            i = j
        }
        keys[i] = 0
        count -= 1
        return removed
    }

    /// Whether this cookie closed recently (a small direct-mapped memory).
    public func closedRecently(_ cookie: UInt64) -> Bool {
        recent[Int(truncatingIfNeeded: cookie) & (recent.count - 1)] == cookie
    }

    /// Every tracked cookie.
    public var cookies: [UInt64] {
        (0...mask).compactMap { keys[$0] != 0 ? keys[$0] : nil }
    }

    /// (cookie, netns, since, owner pid) of every entry, for reconciliation.
    public var summary: [(cookie: UInt64, netns: UInt32, since: UInt64, pid: Int32?)] {
        (0...mask).compactMap { i in
            keys[i] == 0 ? nil : (keys[i], values[i].flow.netns, values[i].since, values[i].owner?.pid)
        }
    }

    private func grow() {
        let oldKeys = keys, oldValues = values, oldCap = capacity
        let cap = oldCap * 2
        keys = .allocate(capacity: cap)
        keys.initialize(repeating: 0, count: cap)
        values = .allocate(capacity: cap)
        mask = cap - 1
        shift = UInt64(64 - cap.trailingZeroBitCount)
        for o in 0..<oldCap where oldKeys[o] != 0 {
            var i = home(oldKeys[o])
            while keys[i] != 0 { i = (i &+ 1) & mask }
            keys[i] = oldKeys[o]
            (values + i).moveInitialize(from: oldValues + o, count: 1)
        }
        oldKeys.deallocate()
        oldValues.deallocate()
    }
}
