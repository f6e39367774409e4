/// An IPv4 or IPv6 address held in 16 bytes, network order; IPv4 in the first four.
public struct IPAddress: Sendable, Hashable, CustomStringConvertible {
    public enum Family: Sendable, Hashable {
        case ipv4, ipv6
    }

    public let family: Family
    /// Network-order bytes, as two words so the value stays trivially copyable.
    let hi: UInt64
    let lo: UInt64

    public init(family: Family, bytes: (UInt64, UInt64)) {
        self.family = family
        if family == .ipv4 {
            self.hi = bytes.0 & 0xffff_ffff
            self.lo = 0
        } else {
            self.hi = bytes.0
            self.lo = bytes.1
        }
    }

    /// From 16 network-order bytes.
    public init(family: Family, raw: UnsafeRawBufferPointer) {
        precondition(raw.count >= (family == .ipv4 ? 4 : 16))
        var h: UInt64 = 0
        var l: UInt64 = 0
        withUnsafeMutableBytes(of: &h) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[0..<(family == .ipv4 ? 4 : 8)])) }
        if family == .ipv6 {
            withUnsafeMutableBytes(of: &l) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[8..<16])) }
        }
        self.init(family: family, bytes: (h, l))
    }

    /// Parses dotted IPv4 or RFC 4291 IPv6 text; nil if it is neither.
    public init?(_ text: String) {
        if let v4 = Self.parseIPv4(Substring(text)) {
            var h: UInt64 = 0
            withUnsafeMutableBytes(of: &h) { buf in
                for i in 0..<4 { buf[i] = v4[i] }
            }
            self.init(family: .ipv4, bytes: (h, 0))
        } else if let v6 = Self.parseIPv6(text) {
            self = v6
        } else {
            return nil
        }
    }

    /// The 16 network-order bytes (IPv4: four bytes then zeros).
    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: family == .ipv4 ? 4 : 16)
        withUnsafeBytes(of: hi) { h in
            for i in 0..<min(8, out.count) { out[i] = h[i] }
        }
        if family == .ipv6 {
            withUnsafeBytes(of: lo) { l in for i in 0..<8 { out[8 + i] = l[i] } }
        }
        return out
    }

    /// `::ffff:a.b.c.d`
    public var isIPv4Mapped: Bool {
        guard family == .ipv6 else { return false }
        var mapped = false
        withUnsafeBytes(of: hi) { h in
            withUnsafeBytes(of: lo) { l in
                mapped = h.allSatisfy { $0 == 0 } && l[0] == 0 && l[1] == 0 && l[2] == 0xff && l[3] == 0xff
            }
        }
        return mapped
    }

    /// The IPv4 address inside an IPv4-mapped IPv6 address.
    public var unmappedIPv4: IPAddress? {
        guard isIPv4Mapped else { return nil }
        return IPAddress(family: .ipv4, bytes: (lo >> 32, 0))
    }

    public var isUnspecified: Bool { hi == 0 && lo == 0 }

    public var description: String {
        var buffer = ByteBuffer(capacity: 48)
        buffer.appendAddress(self)
        return buffer.string
    }

    static func parseIPv4(_ s: Substring) -> [UInt8]? {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard !p.isEmpty, p.count <= 3, p.allSatisfy(\.isASCII), let v = UInt8(p) else { return nil }
            out.append(v)
        }
        return out
    }

    static func parseIPv6(_ s: String) -> IPAddress? {
        var groups: [UInt16] = []
        var tail: [UInt16] = []
        var sawGap = false
        let u = Array(s.utf8)
        var gaps: [Int] = []
        for i in 0..<max(u.count - 1, 0) where u[i] == UInt8(ascii: ":") && u[i + 1] == UInt8(ascii: ":") {
            gaps.append(i)
        }
        guard gaps.count <= 1 else { return nil }
        let halves: [String] = gaps.first.map {
            [String(decoding: u[..<$0], as: UTF8.self), String(decoding: u[($0 + 2)...], as: UTF8.self)]
        } ?? [s]
        func parse(_ part: String, into out: inout [UInt16], allowV4: Bool) -> Bool {
            if part.isEmpty { return true }
            let fields = part.split(separator: ":", omittingEmptySubsequences: false)
            for (i, f) in fields.enumerated() {
                if allowV4, i == fields.count - 1, f.contains(".") {
                    guard let v4 = parseIPv4(f) else { return false }
                    out.append(UInt16(v4[0]) << 8 | UInt16(v4[1]))
                    out.append(UInt16(v4[2]) << 8 | UInt16(v4[3]))
                } else {
                    guard !f.isEmpty, f.count <= 4, let v = UInt16(f, radix: 16) else { return false }
                    out.append(v)
                }
            }
            return true
        }
        if halves.count == 2 {
            sawGap = true
            guard parse(halves[0], into: &groups, allowV4: false),
                parse(halves[1], into: &tail, allowV4: true)
            else { return nil }
        } else {
            guard parse(halves[0], into: &groups, allowV4: true) else { return nil }
        }
        let total = groups.count + tail.count
        if sawGap {
            guard total <= 7 else { return nil }
            groups += [UInt16](repeating: 0, count: 8 - total) + tail
        } else {
            guard total == 8 else { return nil }
        }
        var raw = [UInt8]()
        for g in groups { raw.append(UInt8(g >> 8)); raw.append(UInt8(g & 0xff)) }
        return raw.withUnsafeBytes { IPAddress(family: .ipv6, raw: $0) }
    }
}

/// An address and a port (host order).
public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
    public var address: IPAddress
    public var port: UInt16

    public init(address: IPAddress, port: UInt16) {
        self.address = address
        self.port = port
    }

    public var description: String {
        address.family == .ipv6 ? "[\(address)]:\(port)" : "\(address):\(port)"
    }
}
