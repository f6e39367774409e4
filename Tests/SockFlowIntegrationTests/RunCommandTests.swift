import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension Integration {
@Suite("sockflow run")
struct RunCommandTests {
    /// The cgroups `sockflow run` made that still exist.
    func leftoverCgroups() -> [String] {
        guard let root = TestCgroup.root(), let names = try? FileManager.default.contentsOfDirectory(atPath: root) else { return [] }
        return names.filter { $0.hasPrefix("sockflow-run-") }
    }

    @Test("exit status, records of the command only, the command's stdout kept out of the record stream")
    func statusAndScope() throws {
        let outsider = try Helper(["listen", "--wait"])
        let run = try SockflowRun(["run", "--", Paths.helper, "listen", "--exit-now"], waitForStart: false)
        outsider.send("go")  // listens while the run is on: must not appear in it
        #expect(run.waitForExit() == 0)
        outsider.finish()
        let recs = run.records
        #expect(recs.first?.event == "start" && recs.last?.event == "stop")
        #expect(recs.last?.string("reason") == "exited")
        #expect(recs.last?.int("counters.exit_status") == 0)
        let listens = recs.filter { $0.event == "listen" }
        #expect(listens.count == 1)
        #expect(listens.first?.string("process.comm") == "sfhelper")
        #expect(!recs.contains { $0.pid == outsider.pid })
        #expect(run.err.snapshot.contains { $0.hasPrefix("ready pid=") }, "the command's stdout went to stderr")
        #expect(leftoverCgroups().isEmpty)
        try run.validateStream()
    }

    @Test("SIGTERM to sockflow goes to the command; sockflow exits with 128+15 and removes its cgroup")
    func forwardsSignals() throws {
        let run = try SockflowRun(["run", "--", "python3", "-m", "http.server", "0", "--bind", "127.0.0.1"])
        let listen = try run.waitFor("listen") { $0.event == "listen" }
        #expect(leftoverCgroups().count == 1)
        #expect(run.stop(signal: SIGTERM) == 128 + SIGTERM)
        #expect(run.records.last?.int("counters.exit_status") == Int(128 + SIGTERM))
        #expect(run.records.contains { $0.event == "close" && $0.flowID == listen.flowID })
        #expect(leftoverCgroups().isEmpty)
    }

    @Test("a command that cannot start: exit 127, one error line, no cgroup left", arguments: [[], ["--until", "listen"]])
    func cannotStart(until: [String]) throws {
        let run = try SockflowRun(["run"] + until + ["--", "/nonexistent/command"], waitForStart: false)
        #expect(run.waitForExit() == 127)
        #expect(run.err.snapshot == ["sockflow: start /nonexistent/command: command not found"])
        #expect(leftoverCgroups().isEmpty)
    }

    @Test("--policy: enforced on the command, not on anything else")
    func policy() throws {
        let server = try Helper(["serve", "--reply", "1"])
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("run-policy-\(getpid()).yaml").path
        try "default: allow\nrules:\n  - { name: no-server, action: deny, on: connect, remote: { ports: [\(server.port)] } }\n"
            .write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let run = try SockflowRun(["run", "--policy", file, "--", Paths.helper, "connect", "--port", String(server.port)],
                                  waitForStart: false)
        #expect(run.waitForExit() == 0)
        #expect(run.err.snapshot.contains { $0.contains("errno=\(EPERM)") }, "\(run.err.snapshot)")
        let deny = run.records.first { $0.event == "deny" }
        #expect(deny?.string("verdict.rule") == "no-server")
        #expect(try Helper.run(["connect", "--port", String(server.port), "--send", "1"])["kind.done"] == "1", "outside the run")
        server.finish()
        try run.validateStream()
    }
}
}
