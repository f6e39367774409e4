#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CSockFlowShims
import SockFlow
import SockFlowCore

/// `listen` or `listen:PORT`.
struct UntilSpec: ExpressibleByArgument, Sendable, Equatable {
    var port: UInt16?

    init?(argument: String) {
        if argument == "listen" {
            port = nil
        } else if argument.hasPrefix("listen:"), let p = UInt16(argument.dropFirst(7)), p > 0 {
            port = p
        } else {
            return nil
        }
    }

    init(port: UInt16?) { self.port = port }
}

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a command in a cgroup of its own and report its flows (and its descendants').",
        discussion: """
            Records go to stdout (or --output); the command's own stdout then goes to \
            sockflow's stderr, so the record stream stays clean. sockflow exits with the \
            command's status (128+signal if a signal ended it), forwards SIGINT and SIGTERM \
            to it, and removes its cgroup in every case.

            --until listen[:PORT]: as soon as the command or a descendant listens (on PORT), \
            print that listen record and exit 0; the command keeps running, watched by a \
            detached sockflow that writes the rest to --output (if given) and removes the \
            cgroup when the command exits. If the command exits first, or --timeout passes, \
            exit non-zero and say why.

              port=$(sockflow run --until listen -- python3 -m http.server 0 | jq .flow.local.port)
            """)

    @Option(help: ArgumentHelp("Enforce this policy on the command (docs/policy.md).", valueName: "file"))
    var policy: String?

    @Option(help: ArgumentHelp("Return once the command listens: 'listen' or 'listen:PORT'.", valueName: "listen[:port]"))
    var until: UntilSpec?

    @Option(help: ArgumentHelp("Write records to this file instead of stdout.", valueName: "file"))
    var output: String?

    @Option(help: ArgumentHelp("With --until: give up after this many seconds.", valueName: "seconds"))
    var timeout: Double?

    @Option(help: "Output format: json or text.")
    var format: OutputFormat = .json

    /// Internal: the detached supervisor of --until reports on this descriptor.
    @Option(name: .customLong("report-fd"), help: .hidden)
    var reportFD: Int32?

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The command and its arguments, after --.", valueName: "command"))
    var command: [String] = []

    mutating func validate() throws {
        if command.isEmpty { throw ValidationError("give the command to run after --, e.g. sockflow run -- ./server") }
        if let timeout, !(timeout > 0) { throw ValidationError("--timeout \(timeout): give a positive number of seconds.") }
        if timeout != nil && until == nil { throw ValidationError("--timeout needs --until.") }
    }

    func run() throws {
        if until != nil, reportFD == nil {
            throw ExitCode(try relay())
        }
        throw ExitCode(try supervise())
    }

    /// Does the work: the cgroup, the monitor, the command. Returns its status.
    func supervise() throws -> Int32 {
        let outFD: Int32
        if let output {
            outFD = open(output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard outFD >= 0 else {
                return fail("open \(output): \(FileIO.errnoText(errno))", status: 1)
            }
        } else if reportFD != nil {
            outFD = open("/dev/null", O_WRONLY | O_CLOEXEC)  // --until without --output: the rest is not kept
        } else {
            outFD = 1
        }
        var c = CommandRun.Configuration(command: command)
        c.policyPath = policy
        // The command's stdout: sockflow's stderr while records use stdout.
        c.commandStdout = outFD == 1 || reportFD != nil ? 2 : nil
        c.monitor.handleSignals = true
        var sink: FlushingRecordSink = LineWriter(fd: outFD, format: format)
        if let reportFD, let until { sink = UntilListen(inner: sink, port: until.port, reportFD: reportFD) }
        let run: CommandRun
        do {
            run = try CommandRun(c, output: sink)
        } catch {
            return fail("\(error)", status: 127)
        }
        let status = try run.run()
        if let u = sink as? UntilListen { u.commandExited(status: status, seen: run.monitor.builder.flowRecords) }
        return status
    }

    /// --until: starts the supervisor detached, relays its first listen record.
    func relay() throws -> Int32 {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw ExitCode(1) }
        let (readEnd, writeEnd) = (fds[0], fds[1])
        _ = fcntl(readEnd, F_SETFD, FD_CLOEXEC)
        var args = ["sockflow", "run", "--report-fd", String(writeEnd), "--until", until.map { $0.port.map { "listen:\($0)" } ?? "listen" } ?? "listen",
                    "--format", format.rawValue]
        if let policy { args += ["--policy", policy] }
        if let output { args += ["--output", output] }
        args += ["--"] + command
        var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)  // never holds our stdout open
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        posix_spawnattr_setflags(&attr, 0x80)  // POSIX_SPAWN_SETSID (a GNU flag Glibc does not export to Swift)
        var child: pid_t = 0
        let rc = posix_spawn(&child, "/proc/self/exe", &actions, &attr, &argv, environ)
        close(writeEnd)
        guard rc == 0 else {
            CLIError.report("start the sockflow supervisor: \(FileIO.errnoText(rc))")
            return 1
        }
        // Ctrl-C here stops the supervisor (and with it the command).
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        let line = readLine(readEnd, timeout: timeout)
        close(readEnd)
        switch line {
        case let l? where l.hasPrefix("{"):
            var bytes = Array((l + "\n").utf8)
            _ = bytes.withUnsafeMutableBytes { FileIO.writeAll(1, UnsafeRawBufferPointer($0)) }
            return 0
        case let l? where l.hasPrefix("exited "):
            let parts = l.split(separator: " ")
            let status = Int32(parts.count > 1 ? parts[1] : "1") ?? 1
            let seen = parts.count > 2 ? String(parts[2]) : "0"
            CLIError.report("\(command[0]) exited with status \(status) before it listened\(until?.port.map { " on port \($0)" } ?? "") (\(seen) flow records seen)")
            return status == 0 ? 1 : status
        case let l? where l.hasPrefix("error "):
            let parts = l.split(separator: " ", maxSplits: 2)
            CLIError.report(parts.count > 2 ? String(parts[2]) : l)
            return parts.count > 1 ? Int32(parts[1]) ?? 1 : 1
        case nil where timeout != nil:
            kill(child, SIGTERM)
            CLIError.report("timeout: \(command[0]) did not listen\(until?.port.map { " on port \($0)" } ?? "") within \(timeout!) s; it was stopped")
            var status: Int32 = 0
            waitpid(child, &status, 0)
            return 124
        default:
            CLIError.report("the sockflow supervisor ended without a result")
            return 1
        }
    }

    /// One line from `fd`, or nil at EOF or after `timeout` seconds.
    func readLine(_ fd: Int32, timeout: Double?) -> String? {
        var bytes: [UInt8] = []
        let deadline = timeout.map { WallClock.kernelNow() + UInt64($0 * 1e9) }
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            var wait: Int32 = -1
            if let deadline {
                let now = WallClock.kernelNow()
                if now >= deadline { return nil }
                wait = Int32(min((deadline - now) / 1_000_000 + 1, UInt64(Int32.max)))
            }
            let r = poll(&p, 1, wait)
            if r < 0 && errno == EINTR { continue }
            if r == 0 { return nil }
            var c: UInt8 = 0
            let n = read(fd, &c, 1)
            if n <= 0 { return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self) }
            if c == 0x0a { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(c)
        }
    }

    /// An error before the command runs: the relay prints it when there is one
    /// (once, as its own), else it goes to stderr.
    func fail(_ message: String, status: Int32) -> Int32 {
        if let reportFD { report(reportFD, "error \(status) \(message)") } else { CLIError.report(message) }
        return status
    }

    func report(_ fd: Int32, _ line: String) {
        var bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeMutableBytes { FileIO.writeAll(fd, UnsafeRawBufferPointer($0)) }
    }
}

/// Passes records on, and writes the first listen record (on `port`, if given)
/// to the report descriptor: what `sockflow run --until listen` waits for.
final class UntilListen: FlushingRecordSink {
    let inner: FlushingRecordSink
    let port: UInt16?
    private var reportFD: Int32

    init(inner: FlushingRecordSink, port: UInt16?, reportFD: Int32) {
        self.inner = inner
        self.port = port
        self.reportFD = reportFD
        _ = fcntl(reportFD, F_SETFD, FD_CLOEXEC)  // the command must not inherit it
    }

    func emit(_ record: borrowing Record) {
        inner.emit(record)
        guard reportFD >= 0, record.event == .listen, let f = record.flow, port == nil || f.local.port == port else { return }
        var b = ByteBuffer(capacity: 1024)
        RecordEncoder.json(record, into: &b)
        _ = b.withUnsafeBytes { FileIO.writeAll(reportFD, $0) }
        close(reportFD)
        reportFD = -1
    }

    func flush() -> Bool { inner.flush() }

    func commandExited(status: Int32, seen: UInt64) {
        guard reportFD >= 0 else { return }
        var bytes = Array("exited \(status) \(seen)\n".utf8)
        _ = bytes.withUnsafeMutableBytes { FileIO.writeAll(reportFD, UnsafeRawBufferPointer($0)) }
        close(reportFD)
        reportFD = -1
    }
}
