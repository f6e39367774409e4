/// The live flows sockflow has reported, by socket cookie. Bounded: past `limit`
/// new flows are not tracked (and counted), so memory never grows without bound;
/// entries leave when their flow closes.
public struct FlowTable {
    public struct Entry: Sendable {
        public var flow: Flow
        /// Listener, outbound: who called listen()/connect(). Inbound: who accepted it.
        public var owner: ProcessRecord?
        public var role: FlowRole
        public var accepted: Bool
    }

    public let limit: Int
    public private(set) var entries: [UInt64: Entry] = [:]
    /// Flows not tracked because the table was full.
    public private(set) var untracked: UInt64 = 0
    /// Cookies of the last flows that closed: an accept() that races with its
    /// flow's close (an RST on the other CPU) must not leave an entry behind.
    private var recent: RecentCookies

    public init(limit: Int) {
        self.limit = limit
        self.recent = RecentCookies(capacity: 4096)
        entries.reserveCapacity(min(limit, 1 << 16))
    }

    public var count: Int { entries.count }

    public subscript(cookie: UInt64) -> Entry? {
        get { entries[cookie] }
    }

    /// Inserts or replaces; false (and counted) when the table is full.
    @discardableResult
    public mutating func insert(_ entry: Entry) -> Bool {
        let cookie = entry.flow.id.cookie
        if entries[cookie] == nil, entries.count >= limit {
            untracked &+= 1
            return false
        }
        entries[cookie] = entry
        return true
    }

    public mutating func update(_ cookie: UInt64, _ body: (inout Entry) -> Void) {
        if entries[cookie] != nil { body(&entries[cookie]!) }
    }

    public mutating func remove(_ cookie: UInt64) -> Entry? {
        recent.insert(cookie)
        return entries.removeValue(forKey: cookie)
    }

    public func closedRecently(_ cookie: UInt64) -> Bool { recent.contains(cookie) }
}

/// A fixed-size set of the most recently inserted cookies.
struct RecentCookies {
    private var ring: [UInt64]
    private var set: Set<UInt64>
    private var next = 0

    init(capacity: Int) {
        ring = [UInt64](repeating: 0, count: capacity)
        set = Set(minimumCapacity: capacity)
    }

    mutating func insert(_ c: UInt64) {
        if set.contains(c) { return }
        let old = ring[next]
        if old != 0 { set.remove(old) }
        ring[next] = c
        set.insert(c)
        next = (next + 1) % ring.count
    }

    func contains(_ c: UInt64) -> Bool { set.contains(c) }
}
