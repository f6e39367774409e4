import Foundation
import Testing
@testable import SockFlowCore

@Suite("JSON writing: escaping, numbers, addresses, time")
struct JSONWriterTests {
    func encode(_ bytes: [UInt8]) -> String {
        var b = ByteBuffer()
        bytes.withUnsafeBytes { b.appendJSONString($0) }
        return b.string
    }

    func parse(_ jsonString: String) throws -> String {
        let wrapped = "[" + jsonString + "]"
        let v = try JSONSerialization.jsonObject(with: Data(wrapped.utf8)) as? [String]
        return try #require(v?.first)
    }

    static let hostile: [[UInt8]] = [
        Array("plain".utf8),
        Array("quote\" backslash\\ slash/".utf8),
        Array("new\nline\r\ttab\u{8}\u{c}".utf8),
        [0x01, 0x02, 0x1b, 0x5b, 0x33, 0x31, 0x6d, 0x7f, 0x00, 0x41],
        Array("\"}\n{\"seq\":1,\"event\":\"listen\"}".utf8),
        Array("héllo wörld ✓ 🐛 \u{2028}\u{2029}".utf8),
    ]

    @Test("hostile valid UTF-8 round-trips exactly and stays on one line", arguments: hostile)
    func roundTrip(_ input: [UInt8]) throws {
        let out = encode(input)
        #expect(!out.utf8.contains(0x0a) && !out.utf8.contains(0x0d), "no raw line breaks")
        #expect(!out.utf8.contains { $0 < 0x20 }, "no raw control bytes")
        #expect(try parse(out) == String(decoding: input, as: UTF8.self))
    }

    @Test("invalid UTF-8 becomes U+FFFD per bad byte; the line stays valid JSON")
    func invalidUTF8() throws {
        let cases: [([UInt8], String)] = [
            ([0xff], "\u{FFFD}"),
            ([0xc3, 0x28], "\u{FFFD}("),
            ([0xe2, 0x82], "\u{FFFD}\u{FFFD}"),  // truncated 3-byte sequence
            ([0xed, 0xa0, 0x80], "\u{FFFD}\u{FFFD}\u{FFFD}"),  // UTF-16 surrogate
            ([0xc0, 0xaf], "\u{FFFD}\u{FFFD}"),  // overlong '/'
            ([0xf4, 0x90, 0x80, 0x80], "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}"),  // > U+10FFFF
            ([0x61, 0xf0, 0x9f, 0x90, 0x9b, 0x62], "a🐛b"),
        ]
        for (input, expected) in cases {
            #expect(try parse(encode(input)) == expected, "\(input)")
        }
    }

    @Test("control characters use the short escapes JSON has, \\u00XX otherwise")
    func escapes() {
        #expect(encode(Array("a\"b\\c\n\r\t".utf8)) == #""a\"b\\c\n\r\t""#)
        #expect(encode([0x00, 0x1f, 0x7f]) == #""\u0000\u001f\u007f""#)
    }

    @Test("text output escapes control bytes and invalid UTF-8 visibly")
    func textSafe() {
        var b = ByteBuffer()
        ([0x61, 0x0a, 0x1b, 0xff, 0x62] as [UInt8]).withUnsafeBytes { b.appendTextSafe($0) }
        #expect(b.string == "a\\x0a\\x1b\\xffb")
    }

    @Test("integers", arguments: [UInt64(0), 7, 9, 10, 99, 100, 101, 12345, 99_999_999, 100_000_000, 4_026_531_840,
                                   4_294_967_295, 4_294_967_296, 10_000_000_000_000_000_000, UInt64.max])
    func decimals(_ v: UInt64) {
        var b = ByteBuffer(capacity: 1)
        b.appendDecimal(v)
        #expect(b.string == String(v))
    }

    @Test("hex digits, odd and even widths", arguments: 1...16)
    func hex(_ width: Int) {
        let v: UInt64 = 0xfedc_ba98_7654_3210
        var b = ByteBuffer(capacity: 1)
        b.appendHex(v, width: width)
        #expect(b.string == String(String(v, radix: 16).suffix(width)))
        var z = ByteBuffer(capacity: 1)
        z.appendHex(0xa, width: width)
        #expect(z.string == String(repeating: "0", count: width - 1) + "a")
    }

    @Test("integers of every length, and either side of each power of ten")
    func decimalLengths() {
        var values: [UInt64] = [0, UInt64.max, UInt64.max - 1]
        var p: UInt64 = 1
        for _ in 0..<20 {
            values += [p, p - 1, p + 1]
            if p <= UInt64.max / 10 { p *= 10 }
        }
        var rng = SystemRandomNumberGenerator()
        for bits in 1...64 {
            for _ in 0..<50 { values.append(UInt64.random(in: 0...(bits == 64 ? .max : (1 << bits) - 1), using: &rng)) }
        }
        for v in values {
            var b = ByteBuffer(capacity: 1)
            b.appendDecimal(v)
            #expect(b.string == String(v))
        }
    }

    @Test("8 and 16 hex digits of random values, as String(radix:) pads them")
    func hexWords() {
        var rng = SystemRandomNumberGenerator()
        for v in [0, UInt64.max, 0x0123_4567_89ab_cdef, 0xa0a0_9f9f_0a0a_f9f9] + (0..<2000).map({ _ in rng.next() }) {
            var b = ByteBuffer(capacity: 1)
            b.appendHex(v, width: 16)
            b.appendHex(v, width: 8)
            let full = String(repeating: "0", count: 16 - String(v, radix: 16).count) + String(v, radix: 16)
            #expect(b.string == full + full.suffix(8))
        }
    }

    @Test("every octet value in every place of a dotted quad")
    func ipv4Octets() throws {
        for o in 0...255 {
            for place in 0..<4 {
                var octets = [1, 22, 203, 4]
                octets[place] = o
                let text = octets.map(String.init).joined(separator: ".")
                var b = ByteBuffer(capacity: 1)
                b.appendAddress(try #require(IPAddress(text)))
                b.append(UInt8(ascii: "|"))
                #expect(b.string == text + "|")
            }
        }
    }

    @Test func negativeIntegers() {
        var b = ByteBuffer()
        b.appendDecimal(Int64(-42))
        b.append(UInt8(ascii: " "))
        b.appendDecimal(Int64.min)
        #expect(b.string == "-42 \(Int64.min)")
    }

    @Test("RFC 3339 with nanoseconds, UTC")
    func time() {
        let cases: [(Int64, String)] = [
            (0, "1970-01-01T00:00:00.000000000Z"),
            (1_795_294_800_123_456_789, "2026-11-21T21:00:00.123456789Z"),
            (951_782_400_000_000_001, "2000-02-29T00:00:00.000000001Z"),
            (4_107_542_399_999_999_999, "2100-02-28T23:59:59.999999999Z"),
            (1_795_294_800_100_000_000, "2026-11-21T21:00:00.100000000Z"),
            (1_795_294_800_900_000_009, "2026-11-21T21:00:00.900000009Z"),
        ]
        for (ns, text) in cases {
            var b = ByteBuffer()
            b.appendRFC3339(nanosecondsSinceEpoch: ns)
            #expect(b.string == text)
        }
        // one buffer: the second time in the same second comes from the cached prefix
        var b = ByteBuffer()
        b.appendRFC3339(nanosecondsSinceEpoch: 1_795_294_800_123_456_789)
        b.appendRFC3339(nanosecondsSinceEpoch: 1_795_294_800_987_654_321)
        b.appendRFC3339(nanosecondsSinceEpoch: 1_795_294_801_000_000_000)
        #expect(b.string == "2026-11-21T21:00:00.123456789Z2026-11-21T21:00:00.987654321Z2026-11-21T21:00:01.000000000Z")
    }

    @Test("IPv6 text per RFC 5952", arguments: [
        ("::", "::"), ("::1", "::1"), ("2001:db8::1", "2001:db8::1"),
        ("2001:0db8:0000:0000:0001:0000:0000:0001", "2001:db8::1:0:0:1"),
        ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"), ("fe80::a:b", "fe80::a:b"),
        ("::ffff:10.1.2.3", "::ffff:10.1.2.3"), ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
        ("ABCD:EF01:2345:6789:ABCD:EF01:2345:6789", "abcd:ef01:2345:6789:abcd:ef01:2345:6789"),
    ])
    func ipv6(_ input: String, _ expected: String) throws {
        let a = try #require(IPAddress(input))
        #expect(a.family == .ipv6)
        #expect(a.description == expected)
    }

    @Test func ipv4() throws {
        #expect(try #require(IPAddress("192.168.0.255")).description == "192.168.0.255")
        // octets of one, two and three digits, at each place
        for text in ["0.9.10.99", "100.199.200.255", "1.22.103.4", "255.0.255.0"] {
            #expect(try #require(IPAddress(text)).description == text)
        }
        #expect(IPAddress("256.1.1.1") == nil)
        #expect(IPAddress("1:2:3") == nil)
        #expect(IPAddress("1::2::3") == nil)
        let mapped = try #require(IPAddress("::ffff:127.0.0.1"))
        #expect(mapped.isIPv4Mapped)
        #expect(mapped.unmappedIPv4?.description == "127.0.0.1")
    }
}

@Suite("FlowTextCache: a flow's object copied from its first encoding, byte for byte")
struct FlowTextCacheTests {
    func encoded(_ f: Flow, cache: FlowTextCache? = nil) -> String {
        var b = ByteBuffer(capacity: 1)
        if let cache { cache.append(f, into: &b) } else { RecordEncoder.flow(f, into: &b) }
        return b.string
    }

    func flow(_ cookie: UInt64, listener: UInt64? = nil, remote: String? = "10.1.2.3", port: UInt16 = 443,
              local: String = "127.0.0.1") throws -> Flow {
        let l = try #require(IPAddress(local))
        let r = try remote.map { try #require(IPAddress($0)) }
        return Flow(id: FlowID(boot: 0x1234_abcd, cookie: cookie), family: l.family, mapped: false,
                    direction: listener == nil ? .outbound : .inbound, local: Endpoint(address: l, port: 40000),
                    remote: r.map { Endpoint(address: $0, port: port) }, netns: 4_026_531_840,
                    listener: listener.map { FlowID(boot: 0x1234_abcd, cookie: $0) })
    }

    @Test("the same flow again is a hit; any field that differs, or a cookie that shares the slot, is encoded anew")
    func exact() throws {
        let cache = FlowTextCache()
        let slots = UInt64(FlowTextCache.slots)
        let long = "fe80:1234:5678:9abc:def0:1234:5678:9abc"
        let flows = [
            try flow(7), try flow(7), try flow(7, port: 444), try flow(7, remote: nil), try flow(7, listener: 3),
            try flow(7, listener: 4), try flow(7 + slots), try flow(7), try flow(7 + slots, remote: "::1", local: "::1"),
            try flow(9, remote: long, local: long), try flow(9, remote: long, local: long), try flow(9),
        ]
        for f in flows {
            #expect(encoded(f, cache: cache) == encoded(f), "\(f)")
        }
        // hits: the second flow(7), and nothing else: every other one changed
        // a field or the slot's flow, and the long IPv6 object is never kept
        #expect(cache.hits == 1)
        #expect(encoded(try flow(9), cache: cache) == encoded(try flow(9)))
        #expect(cache.hits == 2)
    }
}
