import Testing
@testable import SockFlowCore

@Suite("Flow table")
struct FlowTableTests {
    func entry(_ cookie: UInt64, port: UInt16 = 1) -> FlowTable.Entry {
        let a = IPAddress(family: .ipv4, bytes: (0x0100_007f, 0))
        return .init(
            flow: Flow(id: FlowID(boot: 1, cookie: cookie), family: .ipv4, mapped: false, direction: .outbound,
                       local: Endpoint(address: a, port: port), remote: nil, netns: 1),
            owner: nil, role: .outbound, accepted: false)
    }

    @Test("100,000 flows with consecutive cookies (as the kernel hands them out) leave only short probe runs")
    func consecutiveCookies() {
        let table = FlowTable(limit: 131_072)
        let first: UInt64 = 1 << 20
        for k in first..<(first + 100_000) { #expect(table.insert(entry(k)), "insert \(k)") }
        #expect(table.count == 100_000)
        // runs of whole blocks of 8 only where blocks happen to land side by side
        #expect(table.longestRun < 128, "longest probe run: \(table.longestRun)")
        for k in stride(from: first, to: first + 100_000, by: 7) { #expect(table[k]?.flow.id.cookie == k) }
        for k in first..<(first + 100_000) { #expect(table.remove(k) != nil) }
        #expect(table.count == 0 && table.longestRun == 0)
    }

    @Test("random inserts, updates and removes agree with a Dictionary, through growth and collisions")
    func model() {
        var rng = SystemRandomNumberGenerator()
        let table = FlowTable(limit: 100_000)
        var model: [UInt64: UInt16] = [:]
        for step in 0..<200_000 {
            // small key space: many collisions and re-inserts
            let k = UInt64.random(in: 1...5_000, using: &rng)
            switch step % 5 {
            case 0, 1:
                let port = UInt16(truncatingIfNeeded: step)
                table.insert(entry(k, port: port))
                model[k] = port
            case 2:
                #expect(table.remove(k)?.flow.local.port == model.removeValue(forKey: k))
            case 3:
                _ = table.withEntry(k) { $0.flow.local.port &+= 1 }
                if let p = model[k] { model[k] = p &+ 1 }
            default:
                #expect(table[k]?.flow.local.port == model[k])
            }
        }
        #expect(table.count == model.count)
        #expect(Set(table.cookies) == Set(model.keys))
        for (k, p) in model { #expect(table[k]?.flow.local.port == p) }
    }

    @Test("bounded: past the limit new flows are counted, not stored; removal makes room")
    func limit() {
        let table = FlowTable(limit: 3)
        for k in 1...5 { table.insert(entry(UInt64(k))) }
        #expect(table.count == 3)
        #expect(table.untracked == 2)
        #expect(table.insert(entry(2)), "replacing a tracked flow is not growth")
        _ = table.remove(1)
        #expect(table.insert(entry(9)))
        #expect(table.count == 3)
    }

    @Test("cookie 0 (never assigned) is not tracked; recently closed cookies are remembered")
    func zeroAndRecent() {
        let table = FlowTable(limit: 10)
        #expect(!table.insert(entry(0)))
        table.insert(entry(77))
        _ = table.remove(77)
        #expect(table.closedRecently(77))
        #expect(!table.closedRecently(78))
    }
}
