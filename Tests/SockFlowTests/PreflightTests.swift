import Foundation
import SockFlowBPF
import Testing

@Suite("Preflight: what is missing is named before anything loads")
struct PreflightTests {
    /// A /proc/self/status with this CapEff line, in the temporary directory (the caller removes it).
    func statusFile(capEff: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("status-\(UUID().uuidString)").path
        try "Name:\tsockflow\nCapInh:\t0000000000000000\nCapEff:\t\(capEff)\n".write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("no capabilities: the error names each missing one")
    func noCaps() throws {
        let status = try statusFile(capEff: "0000000000000000")
        defer { try? FileManager.default.removeItem(atPath: status) }
        #expect(Preflight.missingCapabilities(statusFile: status) == ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"])
        do {
            try Preflight.check(statusFile: status, btfFile: "/sys/kernel/btf/vmlinux")
            Issue.record("no error")
        } catch {
            #expect(error.description.contains("missing CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN"))
        }
    }

    @Test("only CAP_NET_ADMIN missing")
    func oneMissing() throws {
        let all: UInt64 = (1 << 39) | (1 << 38) | (1 << 21)
        let status = try statusFile(capEff: String(all, radix: 16))
        defer { try? FileManager.default.removeItem(atPath: status) }
        #expect(Preflight.missingCapabilities(statusFile: status) == ["CAP_NET_ADMIN"])
    }

    @Test("no kernel BTF: named, with the kernel option and minimum version")
    func noBTF() throws {
        let status = try statusFile(capEff: "000001ffffffffff")
        defer { try? FileManager.default.removeItem(atPath: status) }
        do {
            try Preflight.check(statusFile: status, btfFile: "/nonexistent/vmlinux")
            Issue.record("no error")
        } catch {
            #expect(error.description.contains("find kernel BTF at /nonexistent/vmlinux"))
            #expect(error.description.contains("CONFIG_DEBUG_INFO_BTF"))
        }
    }
}
