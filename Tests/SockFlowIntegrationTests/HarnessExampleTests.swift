import Foundation
import SockFlow
import SockFlowCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// How a test author uses sockflow as a library: start a server under it, wait
/// until it really listens (no polling, no sleep), drive traffic, assert on the
/// flows it saw, as typed records.
extension Integration {
@Suite("Harness API, as a user writes it")
struct HarnessExampleTests {
    /// A plain HTTP/1.0 GET over a socket: (bytes sent, bytes received, status line).
    func httpGet(port: UInt16) throws -> (sent: Int, received: Int, status: String) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw TestFailure("connect to \(port): \(String(cString: strerror(errno)))") }
        let request = Array("GET / HTTP/1.0\r\nHost: localhost\r\n\r\n".utf8)
        let sent = request.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var response: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            response += buf[0..<n]
        }
        let status = String(decoding: response.prefix { $0 != 0x0d }, as: UTF8.self)
        return (sent, response.count, status)
    }

    @Test("a real HTTP server: await its listen record, make a request, assert accept, close and bytes")
    func httpServer() async throws {
        let run = try await SockFlow.spawn(["python3", "-m", "http.server", "0", "--bind", "127.0.0.1"])
        let listener = try await run.listening()
        let port = try #require(listener.flow?.local.port)
        #expect(listener.process?.pid == run.pid)
        #expect(listener.process?.comm == "python3")

        let (sent, received, status) = try httpGet(port: port)
        #expect(status.hasPrefix("HTTP/1.0 200"))

        let close = try await run.first(where: "closing the request's flow") {
            $0.event == .close && $0.flow?.local.port == port && $0.flow?.remote != nil
        }
        let records = try await run.stop()

        let accept = try #require(records.first { $0.event == .accept && $0.flow?.id == close.flow?.id })
        #expect(accept.process?.pid == run.pid, "the server accepted it")
        #expect(accept.flow?.listener == listener.flow?.id, "linked to its listener")
        #expect(close.close?.bytesIn == UInt64(sent), "the request, exactly")
        #expect(close.close?.bytesOut == UInt64(received), "the response, exactly")
        #expect(close.close?.reason == .normal)
        // The client is this test, outside the run: its connect is not in it.
        #expect(!records.contains { $0.event == .connect })
        #expect(records.allSatisfy { $0.process == nil || $0.process?.pid == run.pid })
        #expect(records.last?.event == .stop)
    }

    @Test("a command that never listens: the timeout error says so, and what was seen")
    func neverListens() async throws {
        let run = try await SockFlow.spawn(["sleep", "30"])
        do {
            _ = try await run.listening(timeout: 1)
            Issue.record("no error")
        } catch let e as FlowRunError {
            #expect(e.reason == .timeout(seconds: 1))
            #expect(e.description.hasPrefix("no record listening within 1.0 s; 0 flow records seen"))
        }
        try await run.stop()
        #expect(run.exitStatus == 128 + SIGTERM)
    }

    @Test("a command that exits at once: the error carries its status")
    func exitsAtOnce() async throws {
        let run = try await SockFlow.spawn(["sh", "-c", "exit 3"])
        do {
            _ = try await run.listening(timeout: 5)
            Issue.record("no error")
        } catch let e as FlowRunError {
            #expect(e.reason == .exited(status: 3))
            #expect(e.description.contains("exited with status 3 before a record listening"))
        }
        #expect(try await run.wait() == 3)
    }

    @Test("a command whose forked child listens: the child's record is in the run")
    func forkedChild() async throws {
        let run = try await SockFlow.spawn(["python3", "-c", """
            import os, socket, time
            if os.fork() == 0:
                s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); time.sleep(30)
            os.wait()
            """])
        let listener = try await run.listening()
        #expect(listener.process?.pid != run.pid, "the child listens, not the command itself")
        #expect(listener.process?.ppid == run.pid)
        try await run.stop()
    }

    @Test("the same through the CLI, from a shell script (sockflow run --until listen)")
    func shellScript() throws {
        let (status, out) = try runTool("/bin/bash", [Paths.repo + "/Tests/harness/cli_example.sh", Paths.sockflow])
        #expect(status == 0, "\(out)")
    }
}
}
