#if canImport(Glibc)
import Glibc
#endif
import CLibBPF
import CSockFlowShims

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
            // Verifier logs run to many kilobytes: format into a buffer of the
            // message's size (vasprintf, through a shim: va_copy is a C macro).
            var text: UnsafeMutablePointer<CChar>?
            let n = sockflow_vasprintf(&text, format, args)
            guard n > 0, let text else { return 0 }
            defer { free(text) }
            var off = 0
            while off < Int(n) {
                let w = write(2, text + off, Int(n) - off)
                if w <= 0 { break }
                off += w
            }
            return n
        }
    }
}
