#if canImport(Glibc)
import Glibc
#endif
import CLibBPF

/// Routes libbpf's own messages to stderr (never stdout, which carries records).
/// Warnings always; info and debug with `verbose`.
public enum LibBPFLog {
    nonisolated(unsafe) static var verbose = false

    public static func install(verbose: Bool) {
        Self.verbose = verbose
        _ = libbpf_set_print { level, format, args in
            guard let format, let args else { return 0 }
            if level == LIBBPF_DEBUG, !LibBPFLog.verbose { return 0 }
            if level == LIBBPF_INFO, !LibBPFLog.verbose { return 0 }
            var buf = [CChar](repeating: 0, count: 4096)
            let n = vsnprintf(&buf, buf.count, format, args)
            guard n > 0 else { return 0 }
            let len = min(Int(n), buf.count - 1)
            buf.withUnsafeBytes { raw in
                var off = 0
                while off < len {
                    let w = write(2, raw.baseAddress! + off, len - off)
                    if w <= 0 { break }
                    off += w
                }
            }
            return n
        }
    }
}
