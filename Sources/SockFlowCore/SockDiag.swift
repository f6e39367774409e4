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
            try dump(family: family) { msg in
                cookies.insert(UInt64(msg.id.idiag_cookie.0) | UInt64(msg.id.idiag_cookie.1) << 32)
            }
        }
        return cookies
    }

    /// Walks an inet_diag dump of TCP sockets of one family.
    static func dump(family: UInt8, _ each: (inet_diag_msg) -> Void) throws(Failure) {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), NETLINK_SOCK_DIAG)
        guard fd >= 0 else { throw Failure(operation: "open a sock_diag socket", code: errno) }
        defer { close(fd) }
        struct Request {
            var nlh = nlmsghdr()
            var req = inet_diag_req_v2()
        }
        var r = Request()
        r.nlh.nlmsg_len = UInt32(MemoryLayout<Request>.size)
        r.nlh.nlmsg_type = UInt16(SOCK_DIAG_BY_FAMILY)
        r.nlh.nlmsg_flags = UInt16(NLM_F_REQUEST | NLM_F_DUMP)
        r.req.sdiag_family = family
        r.req.sdiag_protocol = UInt8(IPPROTO_TCP)
        r.req.idiag_states = ~0
        let sent = withUnsafeBytes(of: &r) { send(fd, $0.baseAddress, $0.count, 0) }
        guard sent == MemoryLayout<Request>.size else { throw Failure(operation: "send a sock_diag dump request", code: errno) }
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
                        failure = Failure(operation: "dump TCP sockets", code: -code)
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
