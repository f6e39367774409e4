#if canImport(Glibc)
import Glibc
#endif
import CLibBPF

/// A failed libbpf or system call: what sockflow was doing, and the error code.
/// `code` is a positive errno, or one of libbpf's own codes (4000 and up).
public struct BPFError: Error, Sendable, CustomStringConvertible {
    public let operation: String
    public let code: Int32
    /// What a person can do about it, when sockflow knows.
    public var hint: String?

    public init(_ operation: String, code: Int32, hint: String? = nil) {
        self.operation = operation
        self.code = code
        self.hint = hint ?? Self.defaultHint(code)
    }

    /// The text for `code`: libbpf_strerror knows libbpf's codes and errno's.
    public var reason: String {
        var buf = [CChar](repeating: 0, count: 256)
        if libbpf_strerror(code, &buf, buf.count) == 0 {
            return buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        }
        return String(cString: strerror(code))
    }

    public var description: String {
        var s = "\(operation): \(reason)"
        if let hint { s += " (\(hint))" }
        return s
    }

    static func defaultHint(_ code: Int32) -> String? {
        switch code {
        case EPERM, EACCES:
            "needs root, or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN"
        case ENOMEM:
            "the kernel could not allocate it; try a smaller --ring-buffer-size"
        default: nil
        }
    }
}

/// libbpf's int convention: negative is -errno.
@inline(__always)
func check(_ rc: Int32, _ operation: @autoclosure () -> String) throws(BPFError) {
    if rc < 0 { throw BPFError(operation(), code: -rc) }
}

/// libbpf's pointer convention: NULL and errno set.
@inline(__always)
func unwrap<T>(_ p: T?, _ operation: @autoclosure () -> String) throws(BPFError) -> T {
    guard let p else { throw BPFError(operation(), code: errno == 0 ? EINVAL : errno) }
    return p
}
