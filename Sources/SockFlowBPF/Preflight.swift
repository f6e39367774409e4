#if canImport(Glibc)
import Glibc
#endif
import SockFlowCore

/// What sockflow needs from the machine, checked before anything is loaded so
/// the error names the missing piece instead of a verifier or EPERM dump.
public enum Preflight {
    /// Capability numbers from linux/capability.h.
    static let required: [(Int, String)] = [
        (39, "CAP_BPF"), (38, "CAP_PERFMON"), (12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN"),
    ]

    public static func check(statusFile: String = "/proc/self/status", btfFile: String = "/sys/kernel/btf/vmlinux")
        throws(BPFError)
    {
        if let missing = missingCapabilities(statusFile: statusFile), !missing.isEmpty {
            throw BPFError(
                "check privileges", code: EPERM,
                hint: "missing \(missing.joined(separator: ", ")): run as root")
        }
        if access(btfFile, R_OK) != 0 {
            throw BPFError(
                "find kernel BTF at \(btfFile)", code: errno,
                hint: "the kernel needs CONFIG_DEBUG_INFO_BTF=y; sockflow needs Linux 6.15 or newer")
        }
    }

    /// Names of required capabilities not in the effective set; nil if unknown.
    public static func missingCapabilities(statusFile: String = "/proc/self/status") -> [String]? {
        guard let text = FileIO.readString(statusFile) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("CapEff:") {
            guard let mask = UInt64(line.dropFirst(7).trimmingPrefix(while: { $0 == "\t" || $0 == " " }), radix: 16)
            else { return nil }
            // CAP_SYS_ADMIN implies CAP_BPF and CAP_PERFMON on kernels that predate them.
            return required.filter { mask & (1 << UInt64($0.0)) == 0 }.map(\.1)
        }
        return nil
    }

    /// libbpf attaches tracepoints through tracefs; mount it if nobody has.
    public static func ensureTracefs() throws(BPFError) {
        if access("/sys/kernel/tracing/events", F_OK) == 0 || access("/sys/kernel/debug/tracing/events", F_OK) == 0 {
            return
        }
        if mount("nodev", "/sys/kernel/tracing", "tracefs", 0, nil) != 0 {
            throw BPFError(
                "mount tracefs at /sys/kernel/tracing", code: errno,
                hint: "the accept tracepoints need tracefs (CONFIG_TRACING)")
        }
    }
}
