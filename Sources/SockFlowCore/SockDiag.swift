#if canImport(Glibc)
import Glibc
#endif
import CSockFlowShims

/// The kernel's list of sockets, through sock_diag netlink (what `ss` reads).
public enum SockDiag {
    public struct Failure: Error, CustomStringConvertible {
        public let operation: String
        public let code: Int32
        public var description: String { "\(operation): \(FileIO.errnoText(code))" }
    }

    /// Cookies of every TCP socket (IPv4 and IPv6, any state) in the calling
    /// thread's network namespace. Dumping assigns cookies to sockets that had none.
    public static func tcpCookies() throws(Failure) -> Set<UInt64> {
        var cookies = Set<UInt64>()
        for family in [UInt8(AF_INET), UInt8(AF_INET6)] {
            try dump(family: family, protocol: UInt8(IPPROTO_TCP)) { msg in
                cookies.insert(UInt64(msg.id.idiag_cookie.0) | UInt64(msg.id.idiag_cookie.1) << 32)
            }
        }
        return cookies
    }

    /// One socket of a dump.
    public struct Socket: Sendable {
        public let family: IPAddress.Family
        public let proto: TransportProtocol
        public let state: UInt8
        public let local: Endpoint
        public let remote: Endpoint
        public let cookie: UInt64
        public let uid: UInt32
        public let inode: UInt32
        let id: inet_diag_sockid

        public var isListener: Bool { proto == .tcp && state == TCPState.listen.rawValue }
        /// TIME_WAIT and request sockets have no owner and nothing to destroy.
        public var isLive: Bool {
            proto == .udp || (state != TCPState.timeWait.rawValue && state != TCPState.newSynRecv.rawValue
                && state != TCPState.close.rawValue)
        }
    }

    /// Every TCP and UDP socket (IPv4 and IPv6) in the calling thread's namespace.
    public static func sockets() throws(Failure) -> [Socket] {
        var out: [Socket] = []
        for proto in [TransportProtocol.tcp, .udp] {
            for family in [UInt8(AF_INET), UInt8(AF_INET6)] {
                try dump(family: family, protocol: proto == .tcp ? UInt8(IPPROTO_TCP) : UInt8(IPPROTO_UDP)) { m in
                    let fam: IPAddress.Family = m.idiag_family == UInt8(AF_INET) ? .ipv4 : .ipv6
                    func addr(_ w: (UInt32, UInt32, UInt32, UInt32)) -> IPAddress {
                        withUnsafeBytes(of: w) { IPAddress(family: fam, raw: $0) }
                    }
                    out.append(Socket(
                        family: fam, proto: proto, state: m.idiag_state,
                        local: Endpoint(address: addr(m.id.idiag_src), port: UInt16(bigEndian: m.id.idiag_sport)),
                        remote: Endpoint(address: addr(m.id.idiag_dst), port: UInt16(bigEndian: m.id.idiag_dport)),
                        cookie: UInt64(m.id.idiag_cookie.0) | UInt64(m.id.idiag_cookie.1) << 32,
                        uid: m.idiag_uid, inode: m.idiag_inode, id: m.id))
                }
            }
        }
        return out
    }

    /// Closes a socket from outside, as `ss -K` does: its owner sees ECONNABORTED.
    public static func destroy(_ s: Socket) throws(Failure) {
        let fd = try request(
            type: SOCK_DESTROY, flags: NLM_F_ACK, family: s.family == .ipv4 ? UInt8(AF_INET) : UInt8(AF_INET6),
            protocol: s.proto == .tcp ? UInt8(IPPROTO_TCP) : UInt8(IPPROTO_UDP), id: s.id, what: "SOCK_DESTROY")
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n >= MemoryLayout<nlmsghdr>.size + 4 else { throw Failure(operation: "read the SOCK_DESTROY answer", code: errno) }
        let code = buf.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: MemoryLayout<nlmsghdr>.size, as: Int32.self) }
        if code != 0 { throw Failure(operation: "destroy socket \(s.local) -> \(s.remote)", code: -code) }
    }

    /// Opens a sock_diag socket and sends one inet_diag request (all states) on it;
    /// the caller reads the answer and closes the descriptor.
    static func request(type: Int32, flags: Int32, family: UInt8, protocol proto: UInt8, id: inet_diag_sockid,
                        what: String) throws(Failure) -> Int32 {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), NETLINK_SOCK_DIAG)
        guard fd >= 0 else { throw Failure(operation: "open a sock_diag socket", code: errno) }
        struct Request {
            var nlh = nlmsghdr()
            var req = inet_diag_req_v2()
        }
        var r = Request()
        r.nlh.nlmsg_len = UInt32(MemoryLayout<Request>.size)
        r.nlh.nlmsg_type = UInt16(type)
        r.nlh.nlmsg_flags = UInt16(NLM_F_REQUEST | flags)
        r.req.sdiag_family = family
        r.req.sdiag_protocol = proto
        r.req.idiag_states = ~0
        r.req.id = id
        let sent = withUnsafeBytes(of: &r) { send(fd, $0.baseAddress, $0.count, 0) }
        guard sent == MemoryLayout<Request>.size else {
            let code = errno
            close(fd)
            throw Failure(operation: "send \(what)", code: code)
        }
        return fd
    }

    /// Walks an inet_diag dump of one family and protocol.
    static func dump(family: UInt8, protocol proto: UInt8, _ each: (inet_diag_msg) -> Void) throws(Failure) {
        let fd = try request(
            type: SOCK_DIAG_BY_FAMILY, flags: NLM_F_DUMP, family: family, protocol: proto, id: inet_diag_sockid(),
            what: "a sock_diag dump request")
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure(operation: "read the sock_diag dump", code: errno)
            }
            if n == 0 { return }
            var done = false
            var failure: Failure?
            buf.withUnsafeBytes { raw in
                var off = 0
                while off + MemoryLayout<nlmsghdr>.size <= n {
                    let h = raw.loadUnaligned(fromByteOffset: off, as: nlmsghdr.self)
                    let len = Int(h.nlmsg_len)
                    guard len >= MemoryLayout<nlmsghdr>.size, off + len <= n else { break }
                    if h.nlmsg_type == UInt16(NLMSG_DONE) {
                        done = true
                        return
                    }
                    if h.nlmsg_type == UInt16(NLMSG_ERROR) {
                        let code = raw.loadUnaligned(fromByteOffset: off + MemoryLayout<nlmsghdr>.size, as: Int32.self)
                        failure = Failure(operation: "dump sockets", code: -code)
                        return
                    }
                    let body = off + MemoryLayout<nlmsghdr>.size
                    if len - MemoryLayout<nlmsghdr>.size >= MemoryLayout<inet_diag_msg>.size {
                        each(raw.loadUnaligned(fromByteOffset: body, as: inet_diag_msg.self))
                    }
                    off += (len + 3) & ~3
                }
            }
            if let failure { throw failure }
            if done { return }
        }
    }

    /// Runs `body` with the calling thread in the network namespace `fd` refers to,
    /// then moves it back.
    public static func inNamespace<T>(_ fd: Int32, _ body: () throws -> T) throws -> T {
        let own = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard own >= 0 else { throw Failure(operation: "open this thread's network namespace", code: errno) }
        defer { close(own) }
        guard sockflow_setns(fd, sockflow_clone_newnet()) == 0 else {
            throw Failure(operation: "enter a network namespace", code: errno)
        }
        defer { _ = sockflow_setns(own, sockflow_clone_newnet()) }
        return try body()
    }
}
