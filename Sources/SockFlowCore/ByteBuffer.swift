#if canImport(Glibc)
import Glibc
#endif

/// A growable byte buffer that owns its memory. The record encoders write into it
/// with memcpy and hand-rolled number and string formatting, so encoding a record
/// allocates nothing once the buffer has reached its working size.
///
/// Non-copyable: one owner, freed in `deinit`.
public struct ByteBuffer: ~Copyable {
    @usableFromInline var base: UnsafeMutablePointer<UInt8>
    @usableFromInline var capacity: Int
    public private(set) var count: Int = 0
    /// The last second `appendRFC3339` formatted, and its 20-byte
    /// "YYYY-MM-DDTHH:MM:SS." prefix: records of one second share it.
    private var timeSecond = Int64.min
    private var timePrefix: (UInt64, UInt64, UInt64) = (0, 0, 0)

    public init(capacity: Int = 4096) {
        self.capacity = max(capacity, 64)
        self.base = .allocate(capacity: self.capacity)
    }

    deinit { base.deallocate() }

    public var isEmpty: Bool { count == 0 }

    @inline(__always) @usableFromInline
    mutating func reserve(_ n: Int) {
        if count &+ n > capacity { grow(to: count + n) }
    }

    @usableFromInline
    mutating func grow(to needed: Int) {
        var newCapacity = capacity * 2
        while newCapacity < needed { newCapacity *= 2 }
        let newBase = UnsafeMutablePointer<UInt8>.allocate(capacity: newCapacity)
        newBase.update(from: base, count: count)
        base.deallocate()
        base = newBase
        capacity = newCapacity
    }

    public mutating func removeAll() { count = 0 }

    /// Drops the first `n` bytes (those a partial write already sent).
    public mutating func removeFirst(_ n: Int) {
        precondition(n <= count)
        if n == count { count = 0; return }
        (base).update(from: base + n, count: count - n)
        count -= n
    }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    public var string: String {
        String(decoding: UnsafeBufferPointer(start: base, count: count), as: UTF8.self)
    }

    public var bytes: [UInt8] { Array(UnsafeBufferPointer(start: base, count: count)) }

    // MARK: raw appends

    @inline(__always)
    public mutating func append(_ byte: UInt8) {
        reserve(1)
        base[count] = byte
        count &+= 1
    }

    @inline(__always)
    public mutating func append(_ s: StaticString) {
        let n = s.utf8CodeUnitCount
        reserve(n)
        (base + count).update(from: s.utf8Start, count: n)
        count &+= n
    }

    @inline(__always)
    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        let n = bytes.count
        guard n > 0 else { return }
        reserve(n)
        UnsafeMutableRawPointer(base + count).copyMemory(from: bytes.baseAddress!, byteCount: n)
        count &+= n
    }

    public mutating func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    /// The bytes of `text`, unescaped: for trusted ASCII only.
    public mutating func append(ascii text: String) {
        var t = text
        t.withUTF8 { append(UnsafeRawBufferPointer($0)) }
    }

    // MARK: numbers

    /// "00" ... "99": two digits per division (a StaticString: no lazy global).
    @usableFromInline static let digitPairs: StaticString =
        "00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899"

    /// Decimal digits, written back to front two at a time. Above 2^32 the value
    /// is cut into 8-digit chunks first, so every division is a 32-bit one: the
    /// 64-bit divide-by-100 (a 128-bit multiply) was the longest dependency chain
    /// in the consumer's profile.
    public mutating func appendDecimal(_ value: UInt64) {
        if value < 10 {
            append(UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: value))
            return
        }
        let digits = Self.decimalDigits(value)
        reserve(digits)
        var pos = count &+ digits
        var v = value
        while v > UInt64(UInt32.max) {
            let chunk = UInt32(truncatingIfNeeded: v % 100_000_000)
            v /= 100_000_000
            pos &-= 8
            writeEightDigits(chunk, at: pos)
        }
        writeDigits(UInt32(truncatingIfNeeded: v), endingAt: pos)
        count &+= digits
    }

    /// `v` in exactly 8 digits, zero-padded, at `pos`.
    @inline(__always) @usableFromInline
    func writeEightDigits(_ value: UInt32, at pos: Int) {
        let pairs = Self.digitPairs.utf8Start
        var v = value
        var p = pos &+ 8
        for _ in 0..<4 {
            let r = Int(v % 100)
            v /= 100
            p &-= 2
            base[p] = pairs[2 &* r]
            base[p &+ 1] = pairs[2 &* r &+ 1]
        }
    }

    /// `v`'s digits (no padding), the last one just before `end`.
    @inline(__always) @usableFromInline
    func writeDigits(_ value: UInt32, endingAt end: Int) {
        let pairs = Self.digitPairs.utf8Start
        var v = value
        var pos = end
        while v >= 100 {
            let r = Int(v % 100)
            v /= 100
            pos &-= 2
            base[pos] = pairs[2 &* r]
            base[pos &+ 1] = pairs[2 &* r &+ 1]
        }
        if v >= 10 {
            let r = Int(v)
            pos &-= 2
            base[pos] = pairs[2 &* r]
            base[pos &+ 1] = pairs[2 &* r &+ 1]
        } else {
            pos &-= 1
            base[pos] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: v)
        }
    }

    @inline(__always)
    static func decimalDigits(_ v: UInt64) -> Int {
        if v < 100_000 {
            return v < 10 ? 1 : v < 100 ? 2 : v < 1000 ? 3 : v < 10000 ? 4 : 5
        }
        var n = 6
        var p: UInt64 = 1_000_000
        while n < 20 && v >= p {
            n &+= 1
            p &*= 10
        }
        return n
    }

    public mutating func appendDecimal(_ value: Int64) {
        if value < 0 {
            append(UInt8(ascii: "-"))
            appendDecimal(value.magnitude)
        } else {
            appendDecimal(UInt64(value))
        }
    }

    @inline(__always)
    public mutating func appendDecimal<T: BinaryInteger>(_ value: T) {
        if T.isSigned { appendDecimal(Int64(value)) } else { appendDecimal(UInt64(value)) }
    }

    /// Exactly `width` digits, zero-padded (for dates and fractions).
    @usableFromInline
    mutating func appendPadded(_ value: UInt64, width: Int) {
        reserve(width)
        var v = value
        var pos = count &+ width
        for _ in 0..<width {
            pos &-= 1
            base[pos] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: v % 10)
            v /= 10
        }
        count &+= width
    }

    static let hexDigits: StaticString = "0123456789abcdef"

    public mutating func appendHex(_ value: UInt64, width: Int) {
        reserve(width)
        var v = value
        var pos = count &+ width
        let hex = Self.hexDigits.utf8Start
        let pairs = Self.hexPairs.utf8Start
        // a byte (two digits) at a time, then the odd digit if there is one
        for _ in 0..<(width >> 1) {
            let b = Int(v & 0xff)
            pos &-= 2
            base[pos] = pairs[2 &* b]
            base[pos &+ 1] = pairs[2 &* b &+ 1]
            v >>= 8
        }
        if width & 1 == 1 {
            base[pos &- 1] = hex[Int(v & 0xf)]
        }
        count &+= width
    }

    /// "00" ... "ff".
    static let hexPairs: StaticString =
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"

    // MARK: strings

    /// A JSON string: quotes, escapes (`"`, `\`, every control character, DEL), and
    /// invalid UTF-8 replaced by U+FFFD. Whatever the input bytes, the output is one
    /// valid JSON string on one line.
    public mutating func appendJSONString(_ bytes: UnsafeRawBufferPointer) {
        append(UInt8(ascii: "\""))
        appendEscaped(bytes, json: true)
        append(UInt8(ascii: "\""))
    }

    public mutating func appendJSONString(_ text: String) {
        var t = text
        t.withUTF8 { appendJSONString(UnsafeRawBufferPointer($0)) }
    }

    /// For the text format: control characters and invalid UTF-8 as `\xNN`, so a
    /// hostile name cannot break a line or forge a column.
    public mutating func appendTextSafe(_ bytes: UnsafeRawBufferPointer) {
        appendEscaped(bytes, json: false)
    }

    public mutating func appendTextSafe(_ text: String) {
        var t = text
        t.withUTF8 { appendTextSafe(UnsafeRawBufferPointer($0)) }
    }

    /// A NUL-terminated C string in a fixed array (comm, exe name): up to the first NUL.
    public mutating func appendJSONString<T>(cString tuple: T) {
        Swift.withUnsafeBytes(of: tuple) { raw in
            let n = raw.firstIndex(of: 0) ?? raw.count
            appendJSONString(UnsafeRawBufferPointer(rebasing: raw[0..<n]))
        }
    }

    mutating func appendEscaped(_ bytes: UnsafeRawBufferPointer, json: Bool) {
        guard let p = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return }
        let n = bytes.count
        var i = 0
        while i < n {
            let start = i
            while i < n {
                let c = p[i]
                if c < 0x20 || c == 0x22 || c == 0x5c || c >= 0x7f { break }
                i &+= 1
            }
            if i > start { append(UnsafeRawBufferPointer(start: p + start, count: i - start)) }
            if i == n { break }
            let c = p[i]
            if c < 0x80 {
                if json {
                    switch c {
                    case 0x22: append("\\\"")
                    case 0x5c: append("\\\\")
                    case 0x0a: append("\\n")
                    case 0x0d: append("\\r")
                    case 0x09: append("\\t")
                    case 0x08: append("\\b")
                    case 0x0c: append("\\f")
                    default:
                        append("\\u00")
                        appendHex(UInt64(c), width: 2)
                    }
                } else if c == 0x22 || c == 0x5c {
                    append(c)  // quotes and backslashes are harmless in text
                } else {
                    append("\\x")
                    appendHex(UInt64(c), width: 2)
                }
                i &+= 1
            } else {
                let len = Self.validUTF8Length(p, i, n)
                if len > 0 {
                    append(UnsafeRawBufferPointer(start: p + i, count: len))
                    i &+= len
                } else {
                    if json {
                        append(0xEF); append(0xBF); append(0xBD)  // U+FFFD
                    } else {
                        append("\\x")
                        appendHex(UInt64(c), width: 2)
                    }
                    i &+= 1
                }
            }
        }
    }

    /// Length of the well-formed UTF-8 sequence at `i` (Unicode 15, table 3-7), or 0.
    @usableFromInline
    static func validUTF8Length(_ p: UnsafePointer<UInt8>, _ i: Int, _ n: Int) -> Int {
        let b0 = p[i]
        @inline(__always) func cont(_ k: Int, _ lo: UInt8 = 0x80, _ hi: UInt8 = 0xBF) -> Bool {
            i + k < n && p[i + k] >= lo && p[i + k] <= hi
        }
        switch b0 {
        case 0xC2...0xDF: return cont(1) ? 2 : 0
        case 0xE0: return cont(1, 0xA0) && cont(2) ? 3 : 0
        case 0xE1...0xEC, 0xEE...0xEF: return cont(1) && cont(2) ? 3 : 0
        case 0xED: return cont(1, 0x80, 0x9F) && cont(2) ? 3 : 0
        case 0xF0: return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0
        case 0xF1...0xF3: return cont(1) && cont(2) && cont(3) ? 4 : 0
        case 0xF4: return cont(1, 0x80, 0x8F) && cont(2) && cont(3) ? 4 : 0
        default: return 0
        }
    }

    // MARK: addresses

    /// Dotted quad, in place: one reserve, no call per octet.
    @usableFromInline
    mutating func appendIPv4(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        reserve(15)
        var pos = writeOctet(a, at: count)
        base[pos] = UInt8(ascii: ".")
        pos = writeOctet(b, at: pos &+ 1)
        base[pos] = UInt8(ascii: ".")
        pos = writeOctet(c, at: pos &+ 1)
        base[pos] = UInt8(ascii: ".")
        count = writeOctet(d, at: pos &+ 1)
    }

    /// An octet's 1 to 3 digits at `pos`; returns the position after them.
    @inline(__always) @usableFromInline
    func writeOctet(_ octet: UInt8, at pos: Int) -> Int {
        let end = pos &+ (octet >= 100 ? 3 : octet >= 10 ? 2 : 1)
        writeDigits(UInt32(octet), endingAt: end)
        return end
    }

    /// IPv4 dotted quad; IPv6 per RFC 5952 (lowercase, longest zero run compressed).
    public mutating func appendAddress(_ a: IPAddress) {
        Swift.withUnsafeBytes(of: a.hi) { h in
            Swift.withUnsafeBytes(of: a.lo) { l in
                if a.family == .ipv4 {
                    appendIPv4(h[0], h[1], h[2], h[3])
                    return
                }
                var groups = (UInt16(0), UInt16(0), UInt16(0), UInt16(0), UInt16(0), UInt16(0), UInt16(0), UInt16(0))
                withUnsafeMutableBytes(of: &groups) { g in
                    let words = g.bindMemory(to: UInt16.self)
                    for k in 0..<4 { words[k] = UInt16(h[2 * k]) << 8 | UInt16(h[2 * k + 1]) }
                    for k in 0..<4 { words[4 + k] = UInt16(l[2 * k]) << 8 | UInt16(l[2 * k + 1]) }
                }
                Swift.withUnsafeBytes(of: groups) { g in
                    let w = g.bindMemory(to: UInt16.self)
                    // IPv4-mapped: ::ffff:a.b.c.d (RFC 5952 section 5)
                    if w[0] == 0, w[1] == 0, w[2] == 0, w[3] == 0, w[4] == 0, w[5] == 0xffff {
                        append("::ffff:")
                        appendDecimal(UInt64(l[4])); append(UInt8(ascii: "."))
                        appendDecimal(UInt64(l[5])); append(UInt8(ascii: "."))
                        appendDecimal(UInt64(l[6])); append(UInt8(ascii: "."))
                        appendDecimal(UInt64(l[7]))
                        return
                    }
                    var bestStart = -1, bestLen = 0, runStart = -1
                    for k in 0...8 {
                        if k < 8 && w[k] == 0 {
                            if runStart < 0 { runStart = k }
                        } else if runStart >= 0 {
                            let len = k - runStart
                            if len > bestLen && len >= 2 { bestStart = runStart; bestLen = len }
                            runStart = -1
                        }
                    }
                    var k = 0
                    while k < 8 {
                        if k == bestStart {
                            append("::")
                            k += bestLen
                            continue
                        }
                        if k > 0 && k != bestStart + bestLen { append(UInt8(ascii: ":")) }
                        appendHexTrimmed(w[k])
                        k += 1
                    }
                }
            }
        }
    }

    mutating func appendHexTrimmed(_ v: UInt16) {
        var width = 1
        if v > 0xfff { width = 4 } else if v > 0xff { width = 3 } else if v > 0xf { width = 2 }
        appendHex(UInt64(v), width: width)
    }

    // MARK: time

    /// RFC 3339 UTC with nanoseconds: `2026-11-21T21:00:00.123456789Z`.
    public mutating func appendRFC3339(nanosecondsSinceEpoch ns: Int64) {
        let secs = ns >= 0 ? ns / 1_000_000_000 : (ns - 999_999_999) / 1_000_000_000
        let frac = UInt64(ns - secs * 1_000_000_000)
        if secs != timeSecond {
            let start = count
            let days = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400
            let sod = secs - days * 86400
            let (y, m, d) = Self.civil(fromDays: days)
            appendPadded(UInt64(y), width: 4); append(UInt8(ascii: "-"))
            appendPadded(UInt64(m), width: 2); append(UInt8(ascii: "-"))
            appendPadded(UInt64(d), width: 2); append(UInt8(ascii: "T"))
            appendPadded(UInt64(sod / 3600), width: 2); append(UInt8(ascii: ":"))
            appendPadded(UInt64(sod % 3600 / 60), width: 2); append(UInt8(ascii: ":"))
            appendPadded(UInt64(sod % 60), width: 2); append(UInt8(ascii: "."))
            if count - start == 20 {  // years 0...9999 (always, in practice)
                Swift.withUnsafeMutableBytes(of: &timePrefix) { $0.copyMemory(from: UnsafeRawBufferPointer(start: base + start, count: 20)) }
                timeSecond = secs
            }
        } else {
            reserve(20)
            Swift.withUnsafeBytes(of: timePrefix) { UnsafeMutableRawPointer(base + count).copyMemory(from: $0.baseAddress!, byteCount: 20) }
            count &+= 20
        }
        // nine digits and the Z: the first alone, then eight in pairs
        reserve(10)
        base[count] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: frac / 100_000_000)
        writeEightDigits(UInt32(truncatingIfNeeded: frac % 100_000_000), at: count &+ 1)
        base[count &+ 9] = UInt8(ascii: "Z")
        count &+= 10
    }

    /// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
    static func civil(fromDays z0: Int64) -> (Int64, Int64, Int64) {
        let z = z0 + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (m <= 2 ? y + 1 : y, m, d)
    }
}
