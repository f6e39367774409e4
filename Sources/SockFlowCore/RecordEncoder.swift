import CSockFlowABI

/// Writes records as JSON lines (the schema in docs/record.schema.json) or as
/// aligned text. Keys always come in the same order; nothing here allocates.
public enum RecordEncoder {
    /// `flows`: the flow objects of recent flows, encoded once (see FlowTextCache).
    public static func json(_ r: borrowing Record, into b: inout ByteBuffer, flows: FlowTextCache? = nil) {
        b.append("{\"seq\":")
        b.appendDecimal(r.seq)
        b.append(",\"time\":\"")
        b.appendRFC3339(nanosecondsSinceEpoch: r.time)
        b.append("\",\"event\":\"")
        b.append(ascii: r.event.rawValue)
        b.append(UInt8(ascii: "\""))
        switch r.event {
        case .start:
            if let s = r.stream { streamStart(s, into: &b) }
        case .stop:
            if let s = r.stream { streamStop(s, into: &b) }
        case .lost:
            b.append(",\"count\":")
            b.appendDecimal(r.lost?.count ?? 0)
            b.append(",\"reason\":\"")
            b.append(ascii: (r.lost?.reason ?? .ringBufferFull).rawValue)
            b.append(UInt8(ascii: "\""))
        case .deny, .log:
            if let p = r.policy {
                b.append(",\"hook\":\"")
                b.append(ascii: p.hook.rawValue)
                b.append("\",\"count\":")
                b.appendDecimal(p.count)
            }
            b.append(",\"flow\":")
            if let f = r.flow { policyFlow(f, hook: r.policy?.hook, into: &b) } else { b.append("null") }
            b.append(",\"process\":")
            if let p = r.process { process(p, into: &b) } else { b.append("null") }
            b.append(",\"verdict\":{\"action\":\"")
            b.append(ascii: r.verdict.action.rawValue)
            b.append("\",\"rule\":")
            if let rule = r.verdict.rule { b.appendJSONString(rule) } else { b.append("null") }
            b.append(UInt8(ascii: "}"))
        case .policy:
            if let s = r.policyStatus {
                b.append(s.loaded ? ",\"status\":\"loaded\"" : ",\"status\":\"rejected\"")
                b.append(",\"file\":")
                b.appendJSONString(s.file)
                b.append(",\"rules\":")
                b.appendDecimal(UInt64(s.rules))
                b.append(",\"destroyed\":")
                b.appendDecimal(UInt64(s.destroyed))
                b.append(",\"error\":")
                if let e = s.error { b.appendJSONString(e) } else { b.append("null") }
            }
        case .overflow:
            b.append(",\"table\":")
            b.appendJSONString(r.overflow?.table ?? "")
            b.append(",\"limit\":")
            b.appendDecimal(UInt64(r.overflow?.limit ?? 0))
            b.append(",\"untracked\":")
            b.appendDecimal(r.overflow?.untracked ?? 0)
        case .listen, .connect, .established, .accept, .close:
            b.append(",\"flow\":")
            if let f = r.flow {
                if let flows { flows.append(f, into: &b) } else { flow(f, into: &b) }
            } else {
                b.append("null")
            }
            b.append(",\"process\":")
            if let p = r.process { process(p, into: &b) } else { b.append("null") }
            b.append(",\"verdict\":{\"action\":\"")
            b.append(ascii: r.verdict.action.rawValue)
            b.append("\",\"rule\":")
            if let rule = r.verdict.rule { b.appendJSONString(rule) } else { b.append("null") }
            b.append(UInt8(ascii: "}"))
            if r.event == .close, let c = r.close {
                b.append(",\"duration_ns\":")
                b.appendDecimal(c.durationNanoseconds)
                b.append(",\"bytes_in\":")
                optional(c.bytesIn, into: &b)
                b.append(",\"bytes_out\":")
                optional(c.bytesOut, into: &b)
                b.append(",\"reason\":\"")
                b.append(ascii: c.reason.rawValue)
                b.append("\",\"errno\":")
                b.appendDecimal(Int64(c.errno))
            }
        }
        b.append("}\n")
    }

    @inline(__always)
    static func optional(_ v: UInt64?, into b: inout ByteBuffer) {
        if let v { b.appendDecimal(v) } else { b.append("null") }
    }

    static func flowID(_ id: FlowID, into b: inout ByteBuffer) {
        b.append(UInt8(ascii: "\""))
        b.appendHex(UInt64(id.boot), width: 8)
        b.appendHex(id.cookie, width: 16)
        b.append(UInt8(ascii: "\""))
    }

    static func endpoint(_ e: Endpoint, into b: inout ByteBuffer) {
        b.append("{\"address\":\"")
        b.appendAddress(e.address)
        b.append("\",\"port\":")
        b.appendDecimal(UInt64(e.port))
        b.append(UInt8(ascii: "}"))
    }

    static func flow(_ f: Flow, into b: inout ByteBuffer) {
        b.append("{\"id\":")
        flowID(f.id, into: &b)
        b.append(",\"cookie\":")
        b.appendDecimal(f.id.cookie)
        b.append(f.proto == .tcp ? ",\"protocol\":\"tcp\",\"family\":" : ",\"protocol\":\"udp\",\"family\":")
        b.append(f.family == .ipv4 ? "\"ipv4\"" : "\"ipv6\"")
        b.append(f.mapped ? ",\"mapped\":true" : ",\"mapped\":false")
        b.append(f.direction == .inbound ? ",\"direction\":\"inbound\"" : ",\"direction\":\"outbound\"")
        b.append(",\"local\":")
        endpoint(f.local, into: &b)
        b.append(",\"remote\":")
        if let r = f.remote { endpoint(r, into: &b) } else { b.append("null") }
        b.append(",\"netns\":")
        b.appendDecimal(UInt64(f.netns))
        b.append(",\"backlog\":")
        if let v = f.backlog { b.appendDecimal(UInt64(v)) } else { b.append("null") }
        b.append(",\"dual_stack\":")
        if let d = f.dualStack { b.append(d ? "true" : "false") } else { b.append("null") }
        b.append(",\"listener\":")
        if let l = f.listener { flowID(l, into: &b) } else { b.append("null") }
        b.append(UInt8(ascii: "}"))
    }

    /// The flow of a policy decision, as far as it exists: no socket cookie for a
    /// dropped packet, no local endpoint before bind, no endpoints at socket().
    static func policyFlow(_ f: Flow, hook: Policy.Hook?, into b: inout ByteBuffer) {
        b.append("{\"id\":")
        if f.id.cookie != 0 { flowID(f.id, into: &b) } else { b.append("null") }
        b.append(",\"cookie\":")
        if f.id.cookie != 0 { b.appendDecimal(f.id.cookie) } else { b.append("null") }
        b.append(f.proto == .tcp ? ",\"protocol\":\"tcp\"" : ",\"protocol\":\"udp\"")
        b.append(",\"family\":")
        b.append(f.family == .ipv4 ? "\"ipv4\"" : "\"ipv6\"")
        b.append(f.mapped ? ",\"mapped\":true" : ",\"mapped\":false")
        b.append(",\"direction\":")
        switch hook {
        case .connect, .udpSend: b.append("\"outbound\"")
        case .listen, .accept, .udpRecv: b.append("\"inbound\"")
        case .socket, nil: b.append("null")
        }
        b.append(",\"local\":")
        if hook != .socket, f.local.port != 0 || !f.local.address.isUnspecified { endpoint(f.local, into: &b) } else { b.append("null") }
        b.append(",\"remote\":")
        if let r = f.remote, hook != .socket, hook != .listen { endpoint(r, into: &b) } else { b.append("null") }
        b.append(",\"netns\":")
        b.appendDecimal(UInt64(f.netns))
        b.append(",\"backlog\":null,\"dual_stack\":null,\"listener\":")
        if let l = f.listener { flowID(l, into: &b) } else { b.append("null") }
        b.append(UInt8(ascii: "}"))
    }

    @inline(__always)
    static func process(_ p: ProcessRecord, into b: inout ByteBuffer) {
        let inst = p.instance
        inst.head.withUnsafeBytes { b.append($0) }
        b.appendDecimal(Int64(p.tid))
        if p.commBytes == inst.commKey {
            inst.middleCommTail.withUnsafeBytes { b.append($0) }
        } else {
            inst.middle.withUnsafeBytes { b.append($0) }
            b.appendJSONString(cString: p.commBytes)
            inst.tail.withUnsafeBytes { b.append($0) }
        }
    }

    static func streamStart(_ s: StreamDetails, into b: inout ByteBuffer) {
        b.append(",\"sockflow\":{\"version\":")
        b.appendJSONString(s.version)
        b.append(",\"abi\":")
        b.appendDecimal(UInt64(SockFlowVersion.abi))
        b.append(",\"kernel\":")
        b.appendJSONString(s.kernel)
        b.append(",\"hooks\":[")
        for (i, h) in s.hooks.enumerated() {
            if i > 0 { b.append(UInt8(ascii: ",")) }
            b.appendJSONString(h)
        }
        b.append("],\"filters\":{")
        for (i, (k, v)) in s.filters.enumerated() {
            if i > 0 { b.append(UInt8(ascii: ",")) }
            b.appendJSONString(k)
            b.append(UInt8(ascii: ":"))
            b.appendJSONString(v)
        }
        b.append("},\"ring_buffer_bytes\":")
        b.appendDecimal(UInt64(s.ringBufferBytes))
        b.append("}")
    }

    static func streamStop(_ s: StreamDetails, into b: inout ByteBuffer) {
        b.append(",\"reason\":")
        b.appendJSONString(s.stopReason)
        b.append(",\"counters\":{")
        for (i, (k, v)) in s.counters.enumerated() {
            if i > 0 { b.append(UInt8(ascii: ",")) }
            b.appendJSONString(k)
            b.append(UInt8(ascii: ":"))
            b.appendDecimal(v)
        }
        b.append("}")
    }

    // MARK: text

    /// One aligned line per record, for people:
    /// `21:00:00.123456 listen      tcp4 0.0.0.0:8080 -> -    pid=4242 python3 ...`
    public static func text(_ r: borrowing Record, into b: inout ByteBuffer) {
        // time of day, microseconds
        let secs = r.time / 1_000_000_000
        let sod = ((secs % 86400) + 86400) % 86400
        b.appendPadded(UInt64(sod / 3600), width: 2); b.append(UInt8(ascii: ":"))
        b.appendPadded(UInt64(sod % 3600 / 60), width: 2); b.append(UInt8(ascii: ":"))
        b.appendPadded(UInt64(sod % 60), width: 2); b.append(UInt8(ascii: "."))
        b.appendPadded(UInt64((r.time % 1_000_000_000 + 1_000_000_000) % 1_000_000_000 / 1000), width: 6)
        b.append(UInt8(ascii: " "))
        let eventStart = b.count
        b.append(ascii: r.event.rawValue)
        pad(&b, from: eventStart, to: 12)
        switch r.event {
        case .start:
            b.append("sockflow ")
            if let s = r.stream {
                b.appendTextSafe(s.version)
                b.append(" on ")
                b.appendTextSafe(s.kernel)
                b.append(", hooks: ")
                b.appendTextSafe(s.hooks.joined(separator: ","))
            }
        case .stop:
            if let s = r.stream {
                b.appendTextSafe(s.stopReason)
                for (k, v) in s.counters {
                    b.append(UInt8(ascii: " "))
                    b.appendTextSafe(k)
                    b.append(UInt8(ascii: "="))
                    b.appendDecimal(v)
                }
            }
        case .lost:
            b.appendDecimal(r.lost?.count ?? 0)
            b.append(" records: ")
            b.append(ascii: (r.lost?.reason ?? .ringBufferFull).rawValue)
        case .deny, .log:
            if let p = r.policy {
                b.append(ascii: p.hook.rawValue)
                b.append(" rule=")
                b.appendTextSafe(r.verdict.rule ?? "(default)")
                b.append(" count=")
                b.appendDecimal(p.count)
            }
            if let f = r.flow, let rem = f.remote {
                b.append(" remote=")
                textEndpoint(rem, into: &b)
            }
            if let p = r.process {
                b.append(" pid=")
                b.appendDecimal(Int64(p.pid))
            }
        case .policy:
            if let s = r.policyStatus {
                b.append(s.loaded ? "loaded " : "rejected ")
                b.appendTextSafe(s.file)
                b.append(" rules=")
                b.appendDecimal(UInt64(s.rules))
                b.append(" destroyed=")
                b.appendDecimal(UInt64(s.destroyed))
                if let e = s.error {
                    b.append(": ")
                    b.appendTextSafe(e)
                }
            }
        case .overflow:
            if let o = r.overflow {
                b.appendTextSafe(o.table)
                b.append(" full at ")
                b.appendDecimal(UInt64(o.limit))
                b.append(", untracked ")
                b.appendDecimal(o.untracked)
            }
        case .listen, .connect, .established, .accept, .close:
            if let f = r.flow {
                let col = b.count
                b.append(f.family == .ipv4 ? "tcp4" : "tcp6")
                if f.dualStack == true { b.append("+4") }
                pad(&b, from: col, to: 7)
                let epStart = b.count
                textEndpoint(f.local, into: &b)
                b.append(" -> ")
                if let rem = f.remote { textEndpoint(rem, into: &b) } else { b.append("*") }
                pad(&b, from: epStart, to: 48)
            }
            if let p = r.process {
                b.append("pid=")
                b.appendDecimal(Int64(p.pid))
                b.append(UInt8(ascii: " "))
                withUnsafeBytes(of: p.commBytes) { raw in
                    let n = raw.firstIndex(of: 0) ?? raw.count
                    b.appendTextSafe(UnsafeRawBufferPointer(rebasing: raw[0..<n]))
                }
                if let exe = p.details?.exe {
                    b.append(UInt8(ascii: " "))
                    b.appendTextSafe(exe)
                }
            } else {
                b.append("pid=-")
            }
            if let c = r.close {
                b.append(" reason=")
                b.append(ascii: c.reason.rawValue)
                b.append(" duration=")
                b.appendDecimal(c.durationNanoseconds / 1000)
                b.append("us")
                if let i = c.bytesIn, let o = c.bytesOut {
                    b.append(" in=")
                    b.appendDecimal(i)
                    b.append(" out=")
                    b.appendDecimal(o)
                }
            }
            if let f = r.flow {
                b.append(" cookie=")
                b.appendDecimal(f.cookie)
                if let l = f.listener {
                    b.append(" listener=")
                    b.appendDecimal(l.cookie)
                }
            }
        }
        b.append(UInt8(ascii: "\n"))
    }

    static func textEndpoint(_ e: Endpoint, into b: inout ByteBuffer) {
        if e.address.family == .ipv6 {
            b.append(UInt8(ascii: "["))
            b.appendAddress(e.address)
            b.append("]:")
        } else {
            b.appendAddress(e.address)
            b.append(UInt8(ascii: ":"))
        }
        b.appendDecimal(UInt64(e.port))
    }

    static func pad(_ b: inout ByteBuffer, from start: Int, to width: Int) {
        let used = b.count - start
        if used < width {
            for _ in used..<width { b.append(UInt8(ascii: " ")) }
        } else if width > 0 {
            b.append(UInt8(ascii: " "))
        }
    }
}

public enum SockFlowVersion {
    public static let version = "0.1.0"
    public static let abi = Int(SF_ABI_VERSION)
}

/// The JSON of recent flows' flow objects, so that a flow's later records copy
/// what its first one encoded: every record of a flow carries the same object,
/// and encoding it (ids in hex, cookie, endpoints, netns) was a third of the
/// consumer's instructions (callgrind, consumer benchmark). Direct-mapped by
/// cookie; a slot is used only when the flow it holds equals the record's
/// flow in every field, so the output is what `RecordEncoder.flow` writes.
/// Fixed memory, nothing allocated after init. One thread uses an instance.
///
/// 1,024 slots: a flow's second record (established after connect, accept
/// after established) nearly always finds its slot; its close does while fewer
/// than about a thousand newer sockets were made meanwhile. `make bench`, RSS
/// with 100,000 flows: 45.0 MB without the cache, 45.7 with 1,024 slots, 47.3
/// with 4,096.
public final class FlowTextCache {
    public static let slots = 1024
    /// Longer objects (IPv6 endpoints with long addresses) are not kept.
    static let stride = 320

    private let flows: UnsafeMutablePointer<Flow?>
    private let lengths: UnsafeMutablePointer<UInt16>
    private let texts: UnsafeMutablePointer<UInt8>
    @exclusivity(unchecked) public private(set) var hits: UInt64 = 0

    public init() {
        flows = .allocate(capacity: Self.slots)
        flows.initialize(repeating: nil, count: Self.slots)
        lengths = .allocate(capacity: Self.slots)
        lengths.initialize(repeating: 0, count: Self.slots)
        texts = .allocate(capacity: Self.slots * Self.stride)
    }

    deinit {
        flows.deinitialize(count: Self.slots)
        flows.deallocate()
        lengths.deallocate()
        texts.deallocate()
    }

    /// `f`'s flow object, as `RecordEncoder.flow` writes it.
    public func append(_ f: Flow, into b: inout ByteBuffer) {
        let slot = Int(truncatingIfNeeded: f.id.cookie) & (Self.slots - 1)
        let text = texts + slot * Self.stride
        if let kept = flows[slot], kept == f {
            hits &+= 1
            b.append(UnsafeRawBufferPointer(start: text, count: Int(lengths[slot])))
            return
        }
        let start = b.count
        RecordEncoder.flow(f, into: &b)
        let n = b.count - start
        guard n <= Self.stride else {
            flows[slot] = nil
            return
        }
        b.withUnsafeBytes { UnsafeMutableRawPointer(text).copyMemory(from: $0.baseAddress! + start, byteCount: n) }
        lengths[slot] = UInt16(n)
        flows[slot] = f
    }
}
