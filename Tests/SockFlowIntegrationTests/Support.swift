import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Every integration suite nests in this one: they run one at a time (each
/// attaches real programs to the kernel) and only as root, or under CI where a
/// missing privilege must fail the run.
@Suite("Integration (root, real BPF)", .serialized, .enabled(if: Privileges.canRun, "needs root to load BPF programs"))
struct Integration {}

/// Where the binaries under test are. `make test` sets both; the fallbacks are
/// what `make` builds.
enum Paths {
    static let repo: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()
    static let sockflow = ProcessInfo.processInfo.environment["SOCKFLOW_BIN"] ?? repo + "/.build/release/sockflow"
    static let helper = ProcessInfo.processInfo.environment["SOCKFLOW_HELPER"] ?? repo + "/build/sfhelper"
    static let schema = repo + "/docs/record.schema.json"
    static let validator = repo + "/Tests/tools/validate_records.py"
}

/// Integration tests run as root. Under CI=true they run regardless, so a missing
/// privilege fails the run instead of skipping it.
enum Privileges {
    static let isRoot = getuid() == 0
    static let inCI = ProcessInfo.processInfo.environment["CI"] == "true"
    static let canRun = isRoot || inCI
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Runs a program to its end, stdin from /dev/null: its exit status and what it
/// wrote to stdout (and to stderr, with `stderr: true`).
func runTool(_ path: String, _ arguments: [String], stderr: Bool = true) throws -> (status: Int32, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = arguments
    let pipe = Pipe()
    p.standardOutput = pipe
    if stderr { p.standardError = pipe }
    p.standardInput = FileHandle.nullDevice
    try p.run()
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    return (p.terminationStatus, output)
}

typealias JSON = [String: Any]

extension Dictionary where Key == String, Value == Any {
    subscript(path path: String) -> Any? {
        var cur: Any? = self
        for key in path.split(separator: ".") {
            guard let d = cur as? JSON else { return nil }
            cur = d[String(key)]
        }
        if cur is NSNull { return nil }
        return cur
    }
    func int(_ path: String) -> Int? { (self[path: path] as? NSNumber)?.intValue }
    func string(_ path: String) -> String? { self[path: path] as? String }
    var event: String { string("event") ?? "" }
    var flowID: String? { string("flow.id") }
    var pid: Int? { int("process.pid") }
    var localPort: Int? { int("flow.local.port") }
    var remotePort: Int? { int("flow.remote.port") }
    /// `time` as nanoseconds since the epoch ("2026-11-21T21:00:00.123456789Z").
    var timeNs: Int? {
        guard let t = string("time").map(Array.init), t.count == 30 else { return nil }
        func number(_ from: Int, _ to: Int) -> Int32? { Int32(String(t[from..<to])) }
        guard let year = number(0, 4), let month = number(5, 7), let day = number(8, 10),
              let hour = number(11, 13), let minute = number(14, 16), let second = number(17, 19),
              let fraction = Int(String(t[20..<29])) else { return nil }
        var tm = Glibc.tm()
        (tm.tm_year, tm.tm_mon, tm.tm_mday) = (year - 1900, month - 1, day)
        (tm.tm_hour, tm.tm_min, tm.tm_sec) = (hour, minute, second)
        return timegm(&tm) * 1_000_000_000 + fraction
    }
}

/// Now, in nanoseconds since the epoch (to compare with record times).
func wallNanoseconds() -> Int {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Collects the lines a child process writes to a pipe, on a background thread.
final class LineCollector: @unchecked Sendable {
    private let cond = NSCondition()
    private var lines: [String] = []
    private var partial = Data()
    private(set) var closed = false
    private var thread: Thread?

    init(fd: Int32) {
        let t = Thread { [self] in
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                cond.lock()
                partial.append(contentsOf: buf[0..<n])
                while let nl = partial.firstIndex(of: 0x0a) {
                    let line = partial[partial.startIndex..<nl]
                    lines.append(String(decoding: line, as: UTF8.self))
                    partial.removeSubrange(partial.startIndex...nl)
                }
                cond.broadcast()
                cond.unlock()
            }
            cond.lock()
            if !partial.isEmpty { lines.append(String(decoding: partial, as: UTF8.self) + "<no newline>") }
            closed = true
            cond.broadcast()
            cond.unlock()
            close(fd)
        }
        thread = t
        t.start()
    }

    var snapshot: [String] {
        cond.lock(); defer { cond.unlock() }
        return lines
    }

    /// Waits until `body` over all lines so far returns non-nil, or the timeout.
    func wait<T>(timeout: Double, _ body: ([String]) -> T?) -> T? {
        let deadline = Date().addingTimeInterval(timeout)
        cond.lock(); defer { cond.unlock() }
        while true {
            if let v = body(lines) { return v }
            if closed || !cond.wait(until: deadline) { return body(lines) }
        }
    }

    func waitClosed(timeout: Double) -> Bool {
        wait(timeout: timeout) { _ in closed ? true : nil } ?? false
    }
}

/// A running `sockflow monitor`.
final class SockflowRun: @unchecked Sendable {
    let process = Process()
    let out: LineCollector
    let err: LineCollector
    let arguments: [String]

    /// Starts sockflow and waits for its `start` record (the hooks are attached then).
    init(_ arguments: [String], waitForStart: Bool = true, executableUser: String? = nil) throws {
        self.arguments = arguments
        guard FileManager.default.isExecutableFile(atPath: Paths.sockflow) else {
            throw TestFailure("no sockflow binary at \(Paths.sockflow): run the tests with `make test`")
        }
        if let executableUser {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            process.arguments = ["--reuid=\(executableUser)", "--regid=\(executableUser)", "--clear-groups",
                                 "--inh-caps=-all", "--", Paths.sockflow] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: Paths.sockflow)
            process.arguments = arguments
        }
        let o = Pipe(), e = Pipe()
        process.standardOutput = o
        process.standardError = e
        process.standardInput = FileHandle.nullDevice
        try process.run()
        out = LineCollector(fd: dup(o.fileHandleForReading.fileDescriptor))
        err = LineCollector(fd: dup(e.fileHandleForReading.fileDescriptor))
        try? o.fileHandleForReading.close()
        try? e.fileHandleForReading.close()
        if waitForStart {
            guard out.wait(timeout: 30, { $0.first }) != nil, let first = records.first, first.event == "start" else {
                stop()
                throw TestFailure("sockflow did not start: stderr: \(err.snapshot.joined(separator: "\n"))")
            }
        }
    }

    deinit { Helper.reap(process) }

    /// Every line so far, parsed (a line that is not one JSON object fails the test).
    var records: [JSON] {
        out.snapshot.map { line in
            guard let data = line.data(using: .utf8),
                let obj = try? JSONSerialization.jsonObject(with: data, options: []) as? JSON
            else {
                Issue.record("not a JSON object: \(line)")
                return [:]
            }
            return obj
        }
    }

    /// Waits for a record matching `match`.
    @discardableResult
    func waitFor(_ what: String, timeout: Double = 10, _ match: @escaping (JSON) -> Bool) throws -> JSON {
        let found = out.wait(timeout: timeout) { lines -> JSON? in
            for line in lines {
                guard let d = line.data(using: .utf8), let obj = try? JSONSerialization.jsonObject(with: d) as? JSON
                else { continue }
                if match(obj) { return obj }
            }
            return nil
        }
        guard let found else {
            throw TestFailure("no \(what) record within \(timeout) s; got:\n" + out.snapshot.suffix(20).joined(separator: "\n"))
        }
        return found
    }

    /// SIGINT, then waits for exit; returns the exit status.
    @discardableResult
    func stop(signal sig: Int32 = SIGINT, timeout: Double = 10) -> Int32 {
        if process.isRunning { kill(process.processIdentifier, sig) }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        Helper.reap(process)
        _ = out.waitClosed(timeout: 5)
        _ = err.waitClosed(timeout: 5)
        return process.terminationStatus
    }

    /// Exit status of a run that stops by itself.
    func waitForExit(timeout: Double = 20) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { return nil }
        _ = out.waitClosed(timeout: 5)
        _ = err.waitClosed(timeout: 5)
        return process.terminationStatus
    }

    /// Checks every line against docs/record.schema.json and the stream rules:
    /// one JSON object per line, seq from 1 without gaps, `start` first, `stop` last.
    func validateStream(expectStop: Bool = true) throws {
        let lines = out.snapshot
        try SchemaValidator.validate(lines)
        let recs = records
        for (i, r) in recs.enumerated() {
            #expect(r.int("seq") == i + 1, "seq \(String(describing: r.int("seq"))) at line \(i + 1)")
        }
        #expect(recs.first?.event == "start")
        if expectStop { #expect(recs.last?.event == "stop") }
    }
}

/// Runs the project's JSON Schema over records with python's jsonschema
/// (Draft 2020-12), the reference implementation.
enum SchemaValidator {
    static func validate(_ lines: [String]) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sockflow-records-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("records.jsonl")
        try (lines.joined(separator: "\n") + "\n").write(to: file, atomically: true, encoding: .utf8)
        let (status, output) = try runTool("/usr/bin/env", ["python3", Paths.validator, Paths.schema, file.path])
        if status != 0 { throw TestFailure("records do not match the schema:\n" + output) }
    }
}

/// Starts `argv` with `stdin` as its standard input; its stdout as lines.
func launch(_ process: Process, _ argv: [String], stdin: Pipe) throws -> LineCollector {
    process.executableURL = URL(fileURLWithPath: argv[0])
    process.arguments = Array(argv.dropFirst())
    let o = Pipe()
    process.standardOutput = o
    process.standardInput = stdin
    try process.run()
    defer { try? o.fileHandleForReading.close() }
    return LineCollector(fd: dup(o.fileHandleForReading.fileDescriptor))
}

/// Python for scripts about listeners: `set_of(port)`, the set of the kernel's
/// listener index that the key (127.0.0.1, port) maps to (bpf/sockflow.bpf.c,
/// lindex_set()); `cookie(s)`, a socket's cookie; `listener(addr, port)`, with
/// SO_REUSEADDR; `connect(l)`, one connection to `l`, accepted and closed,
/// printed as "flow <client port> <l's cookie, 16 hex digits>" for
/// `expectListenersNamed`.
let listenerPython = """
    import os, socket
    netns = os.stat("/proc/self/ns/net").st_ino
    def set_of(port):
        x = int.from_bytes(socket.inet_aton("127.0.0.1"), "little") ^ netns ^ (port | 2 << 16)
        return ((x * 0x9E3779B1) & 0xffffffff) >> 20
    def cookie(s):
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 57, 8), "little")  # SO_COOKIE
    def listener(addr, port):
        l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        l.bind((addr, port)); l.listen(16); return l
    def connect(l):
        c = socket.create_connection(("127.0.0.1", l.getsockname()[1])); s, _ = l.accept()
        print("flow", c.getsockname()[1], "%016x" % cookie(l), flush=True); c.close(); s.close()

    """

/// For each "flow <client port> <cookie>" line: the accept record of that
/// client's connection names that listener.
func expectListenersNamed(_ run: SockflowRun, _ lines: [String]) throws {
    for line in lines where line.hasPrefix("flow ") {
        let parts = line.split(separator: " ")
        let client = try #require(Int(parts[1])), cookie = String(parts[2])
        let accept = try run.waitFor("accept from \(client)") { $0.event == "accept" && $0.remotePort == client }
        #expect(accept.string("flow.listener")?.hasSuffix(cookie) == true, "client port \(client): \(accept)")
    }
}

/// A running sfhelper.
final class Helper: @unchecked Sendable {
    let process = Process()
    let out: LineCollector
    let stdin = Pipe()
    private(set) var ready: [String: String] = [:]

    init(_ arguments: [String], via wrapper: [String] = [], waitReady: Bool = true) throws {
        guard FileManager.default.isExecutableFile(atPath: Paths.helper) else {
            throw TestFailure("no helper at \(Paths.helper): run the tests with `make test`")
        }
        out = try launch(process, wrapper + [Paths.helper] + arguments, stdin: stdin)
        if waitReady {
            guard let line = out.wait(timeout: 10, { $0.first { $0.hasPrefix("ready") } }) else {
                throw TestFailure("helper \(arguments) never got ready")
            }
            for part in line.split(separator: " ").dropFirst() {
                let kv = part.split(separator: "=", maxSplits: 1)
                if kv.count == 2 { ready[String(kv[0])] = String(kv[1]) }
            }
        }
    }

    var pid: Int { Int(ready["pid"] ?? "") ?? -1 }
    var port: Int { Int(ready["port"] ?? "") ?? -1 }
    var parent: Int { Int(ready["parent"] ?? "") ?? -1 }

    func send(_ line: String) {
        try? stdin.fileHandleForWriting.write(contentsOf: Data((line + "\n").utf8))
    }

    /// Asks the helper to close and waits for it to exit.
    func finish(timeout: Double = 10) {
        send("close")
        try? stdin.fileHandleForWriting.close()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(5_000) }
        Self.reap(process)
    }

    deinit { Self.reap(process) }

    /// SIGTERM, then SIGKILL after a second: a failed test must not leave helpers behind.
    static func reap(_ p: Process) {
        guard p.isRunning else { return }
        kill(p.processIdentifier, SIGTERM)
        for _ in 0..<100 where p.isRunning { usleep(10_000) }
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
    }
}

/// A Python script run for one test, for what the C helper has no mode for:
/// its stdout as lines, its stdin line by line; killed when the test ends.
final class PythonScript: @unchecked Sendable {
    let process = Process()
    let lines: LineCollector
    private let stdin = Pipe()

    /// `cgroup`: the script runs in it from its first instruction.
    init(_ script: String, in cgroup: TestCgroup? = nil) throws {
        lines = try launch(process, (cgroup?.wrapper ?? []) + ["/usr/bin/env", "python3", "-c", script], stdin: stdin)
    }

    func send(_ line: String) throws {
        try stdin.fileHandleForWriting.write(contentsOf: Data((line + "\n").utf8))
    }

    func closeInput() throws { try stdin.fileHandleForWriting.close() }

    /// Kills it if it still runs; `defer` it, which also keeps it alive until then.
    func reap() { Helper.reap(process) }

    deinit { reap() }
}

/// A child cgroup for one test, removed when the test ends (also when it fails):
/// the kernel is shared state.
final class TestCgroup: @unchecked Sendable {
    let path: String
    let relative: String

    init(_ name: String) throws {
        guard let root = Self.root() else { throw TestFailure("no cgroup2 mount") }
        relative = "/sockflow-test-\(name)-\(getpid())"
        path = root + relative
        if mkdir(path, 0o755) != 0 && errno != EEXIST {
            throw TestFailure("mkdir \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// A command prefix that moves itself into this cgroup, then execs the rest:
    /// helpers are in the cgroup before they make a socket; the test runner never is.
    var wrapper: [String] {
        ["/bin/sh", "-c", "echo $$ > '\(path)/cgroup.procs' && exec \"$@\"", "sh"]
    }

    deinit {
        // Processes left inside (a failed test) go back to the root first.
        if let procs = try? String(contentsOfFile: path + "/cgroup.procs", encoding: .utf8), let root = Self.root() {
            for pid in procs.split(separator: "\n") {
                try? (String(pid) + "\n").write(toFile: root + "/cgroup.procs", atomically: false, encoding: .utf8)
            }
        }
        for _ in 0..<50 {
            if rmdir(path) == 0 || errno == ENOENT { return }
            usleep(20_000)
        }
    }

    static func root() -> String? {
        guard let mounts = try? String(contentsOfFile: "/proc/mounts", encoding: .utf8) else { return nil }
        for line in mounts.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count > 2, f[2] == "cgroup2" { return String(f[1]) }
        }
        return nil
    }
}

/// A network namespace joined to the test's namespace by a veth pair, removed
/// when the test ends (also when it fails). Host side 10.213.N.1/24, namespace
/// side 10.213.N.2/24; 10.213.N.99 is a blackhole: a permanent neighbour entry
/// with a MAC nobody has, so SYNs leave and are never answered.
final class TestNetns: @unchecked Sendable {
    let name: String
    let hostDevice: String
    let subnet: Int
    private(set) var inode: Int = 0
    var hostAddress: String { "10.213.\(subnet).1" }
    var nsAddress: String { "10.213.\(subnet).2" }
    var blackhole: String { "10.213.\(subnet).99" }

    init(_ tag: String) throws {
        let n = Int(getpid()) % 200 + 20
        subnet = n
        name = "sockflow-test-\(tag)-\(getpid())"
        hostDevice = "sft\(n)\(tag.prefix(3))"
        let peer = hostDevice + "p"
        _ = try? Self.ip(["netns", "del", name])
        _ = try? Self.ip(["link", "del", hostDevice])
        try Self.ip(["netns", "add", name])
        try Self.ip(["link", "add", hostDevice, "type", "veth", "peer", "name", peer])
        try Self.ip(["link", "set", peer, "netns", name])
        try Self.ip(["addr", "add", "\(hostAddress)/24", "dev", hostDevice])
        try Self.ip(["link", "set", hostDevice, "up"])
        try Self.ip(["-n", name, "addr", "add", "\(nsAddress)/24", "dev", peer])
        try Self.ip(["-n", name, "link", "set", peer, "up"])
        try Self.ip(["-n", name, "link", "set", "lo", "up"])
        try Self.ip(["-n", name, "neigh", "add", blackhole, "lladdr", "02:00:00:00:00:99", "dev", peer, "nud", "permanent"])
        var st = stat()
        guard stat("/run/netns/\(name)", &st) == 0 else { throw TestFailure("no /run/netns/\(name)") }
        inode = Int(st.st_ino)
    }

    /// A command prefix that runs the rest inside the namespace.
    var wrapper: [String] { ["/usr/bin/env", "ip", "netns", "exec", name] }

    deinit {
        _ = try? Self.ip(["netns", "del", name])
        _ = try? Self.ip(["link", "del", hostDevice])
    }

    @discardableResult
    static func ip(_ args: [String]) throws -> String {
        let (status, out) = try runTool("/usr/bin/env", ["ip"] + args)
        guard status == 0 else { throw TestFailure("ip \(args.joined(separator: " ")): \(out)") }
        return out
    }
}

extension Helper {
    /// Runs a helper to completion (a client) and returns its output lines.
    static func run(_ arguments: [String], via wrapper: [String] = [], timeout: Double = 20) throws -> [String: String] {
        let h = try Helper(arguments, via: wrapper, waitReady: false)
        try? h.stdin.fileHandleForWriting.close()
        guard h.out.waitClosed(timeout: timeout) else { throw TestFailure("helper \(arguments) did not finish") }
        h.process.waitUntilExit()
        var fields: [String: String] = [:]
        for line in h.out.snapshot {
            let parts = line.split(separator: " ")
            if let kind = parts.first { fields["kind." + kind] = "1" }
            for part in parts.dropFirst() {
                let kv = part.split(separator: "=", maxSplits: 1)
                if kv.count == 2 { fields[String(kv[0])] = String(kv[1]) }
            }
        }
        return fields
    }

    /// "conn ..." lines a server printed: rport -> (pid, in, out).
    var connections: [Int: (pid: Int, bytesIn: Int, bytesOut: Int)] {
        var out: [Int: (Int, Int, Int)] = [:]
        for line in self.out.snapshot where line.hasPrefix("conn ") {
            var f: [String: Int] = [:]
            for part in line.split(separator: " ").dropFirst() {
                let kv = part.split(separator: "=", maxSplits: 1)
                if kv.count == 2 { f[String(kv[0])] = Int(kv[1]) }
            }
            if let r = f["rport"] { out[r] = (f["pid"] ?? -1, f["in"] ?? -1, f["out"] ?? -1) }
        }
        return out
    }
}
