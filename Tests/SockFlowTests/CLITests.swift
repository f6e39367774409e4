import ArgumentParser
import Testing
@testable import SockFlowCLI
import SockFlow

@Suite("CLI parsing")
struct CLITests {
    func parse(_ args: [String]) throws -> MonitorCommand {
        let cmd = try SockflowCommand.parseAsRoot(["monitor"] + args)
        return try #require(cmd as? MonitorCommand)
    }

    func message(_ args: [String]) -> String {
        do {
            _ = try SockflowCommand.parseAsRoot(["monitor"] + args)
            return "(parsed)"
        } catch {
            return SockflowCommand.message(for: error)
        }
    }

    @Test("defaults")
    func defaults() throws {
        let c = try parse([]).configurationValue()
        #expect(c.pids.isEmpty && c.ports.isEmpty && c.cgroupPath == nil)
        #expect(c.ringBufferBytes == 4 << 20)
        #expect(c.count == nil && c.duration == nil)
        #expect(c.handleSignals)
    }

    @Test("all options")
    func options() throws {
        let m = try parse(["--pid", "10", "--pid", "11", "--port", "80", "--port", "443", "--format", "text",
                           "--count", "5", "--duration", "2.5", "--ring-buffer-size", "64K", "--max-delay", "3"])
        let c = m.configurationValue()
        #expect(c.pids == [10, 11])
        #expect(c.ports == [80, 443])
        #expect(m.format == .text)
        #expect(c.count == 5 && c.duration == 2.5)
        #expect(c.ringBufferBytes == 65536)
        #expect(c.maxDelayMilliseconds == 3)
    }

    @Test("sizes", arguments: [("4096", 4096), ("64K", 65536), ("64kib", 65536), ("8M", 8 << 20), ("1G", 1 << 30), ("16MiB", 16 << 20)])
    func sizes(_ text: String, _ bytes: Int) {
        #expect(ByteSize(argument: text)?.bytes == bytes)
    }

    @Test("bad sizes do not parse", arguments: ["", "M", "12Q", "-4K", "1.5M", "99999999999999999999G"])
    func badSizes(_ text: String) {
        #expect(ByteSize(argument: text) == nil)
    }

    @Test("each bad input gets an error that names the option and the problem", arguments: [
        (["--port", "0"], "--port 0"),
        (["--port", "70000"], "port"),
        (["--pid", "0"], "--pid 0: a process id is a positive number"),
        (["--pid=-3"], "--pid -3"),
        (["--count", "0"], "--count 0"),
        (["--duration", "-1"], "--duration"),
        (["--duration", "nan"], "--duration"),
        (["--ring-buffer-size", "3000"], "power of two"),
        (["--ring-buffer-size", "2G"], "power of two"),
        (["--ring-buffer-size", "lots"], "ring-buffer-size"),
        (["--format", "xml"], "format"),
        (["--max-delay", "-5"], "--max-delay"),
        (["--cgroup", "/no/such/cgroup-dir"], "no cgroup v2 directory"),
        (["--bogus"], "--bogus"),
    ])
    func errors(_ args: [String], _ expected: String) {
        let m = message(args)
        #expect(m.contains(expected), "\(args): \(m)")
    }
}
