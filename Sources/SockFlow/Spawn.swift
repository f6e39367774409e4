#if canImport(Glibc)
import Glibc
#endif
import SockFlowCore

/// Runs `command` under sockflow: a cgroup of its own, monitoring (and, with a
/// policy, enforcement) scoped to it. The run's records are those of the command
/// and its descendants only, as typed `Record`s, the same model the JSON lines
/// come from.
///
///     let run = try await SockFlow.spawn(["python3", "-m", "http.server", "0"])
///     let listener = try await run.first { $0.event == .listen }
///     // … drive traffic to listener.flow!.local.port …
///     let records = try await run.stop()
///
/// Needs root (it loads BPF programs), like `sockflow monitor`.
public func spawn(_ command: [String], policy: String? = nil) async throws -> FlowRun {
    try FlowRun(command: command, policy: policy)
}

/// Why waiting on a run failed; says what was seen so far.
public struct FlowRunError: Error, CustomStringConvertible, Sendable {
    public enum Reason: Sendable, Equatable {
        /// Nothing matched in time.
        case timeout(seconds: Double)
        /// The command exited (with this status) before anything matched.
        case exited(status: Int32)
    }

    public let reason: Reason
    public let waitingFor: String
    /// Every record of the run so far.
    public let seen: [Record]

    public var description: String {
        let what: String
        switch reason {
        case .timeout(let s): what = "no record \(waitingFor) within \(s) s"
        case .exited(let status): what = "the command exited with status \(status) before a record \(waitingFor)"
        }
        let events = seen.filter { $0.event.isFlowEvent }.map { r -> String in
            var s = r.event.rawValue
            if let f = r.flow { s += " \(f.local)" + (f.remote.map { " -> \($0)" } ?? "") }
            if let p = r.process { s += " pid \(p.pid) \(p.comm)" }
            return s
        }
        return "\(what); \(events.count) flow record\(events.count == 1 ? "" : "s") seen"
            + (events.isEmpty ? "" : ": " + events.joined(separator: "; "))
    }
}

/// A command running under sockflow, and its records.
public final class FlowRun: @unchecked Sendable {
    /// The command's process id.
    public let pid: Int32
    private let commandRun: CommandRun
    private let collector = Collector()
    private var thread: pthread_t?

    init(command: [String], policy: String?) throws {
        var c = CommandRun.Configuration(command: command)
        c.policyPath = policy
        c.commandStdout = 2
        c.monitor.handleSignals = false  // the caller's signals are the caller's
        commandRun = try CommandRun(c, output: collector)
        pid = commandRun.pid
        // The event loop runs on a thread of its own, never on the cooperative pool.
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            let run = Unmanaged<FlowRun>.fromOpaque(arg!).takeRetainedValue()
            let status = (try? run.commandRun.run()) ?? 1
            run.collector.finish(status: status)
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            throw CommandRun.Failure(description: "start the event loop thread: \(FileIO.errnoText(rc))")
        }
        thread = t
        pthread_detach(t)
    }

    /// Every record so far, in order.
    public var records: [Record] { collector.snapshot.records }

    /// The command's exit status once it has exited (128 + signal when a signal ended it).
    public var exitStatus: Int32? { collector.exitStatus }

    /// The run's records from the first, then as they come; ends when the run does.
    /// Each access is a new sequence.
    public var flows: AsyncStream<Record> { collector.stream() }

    /// The first record (from the start of the run) that matches; throws
    /// `FlowRunError` on timeout, or if the command exits first.
    public func first(
        where description: String = "matching", timeout: Double = 10, _ predicate: @escaping @Sendable (Record) -> Bool
    ) async throws -> Record {
        let stream = flows
        let collector = self.collector
        return try await withThrowingTaskGroup(of: Record?.self) { group in
            group.addTask {
                for await r in stream where predicate(r) { return r }
                return nil
            }
            group.addTask {
                try await Task.sleep(nanoseconds: UInt64(timeout * 1e9))
                return nil
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            if let first { return first }
            let snap = collector.snapshot
            if let status = snap.status {
                throw FlowRunError(reason: .exited(status: status), waitingFor: description, seen: snap.records)
            }
            throw FlowRunError(reason: .timeout(seconds: timeout), waitingFor: description, seen: snap.records)
        }
    }

    /// The first `listen` record (on `port`, if given): the command is ready.
    public func listening(on port: UInt16? = nil, timeout: Double = 10) async throws -> Record {
        try await first(where: port.map { "listening on port \($0)" } ?? "listening", timeout: timeout) {
            $0.event == .listen && (port == nil || $0.flow?.local.port == port)
        }
    }

    /// Stops the command (SIGTERM; SIGKILL after `grace` seconds), waits for the run
    /// to end and returns every record of it, in order.
    @discardableResult
    public func stop(grace: Double = 5) async throws -> [Record] {
        if collector.exitStatus == nil { kill(pid, SIGTERM) }
        let deadline = WallClock.kernelNow() + UInt64(grace * 1e9)
        while collector.exitStatus == nil {
            if WallClock.kernelNow() > deadline { kill(pid, SIGKILL) }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        return collector.snapshot.records
    }

    /// Waits for the command to exit by itself; its status.
    public func wait() async throws -> Int32 {
        while true {
            if let s = collector.exitStatus { return s }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
    }

    /// Receives records on the event loop's thread; hands them to streams.
    final class Collector: FlushingRecordSink, @unchecked Sendable {
        private let lock = PthreadMutex()
        private var records: [Record] = []
        private var status: Int32?
        private var finished = false
        private var continuations: [AsyncStream<Record>.Continuation] = []

        func emit(_ record: borrowing Record) {
            let r = copy record
            lock.with {
                records.append(r)
                for c in continuations { c.yield(r) }
            }
        }

        func flush() -> Bool { true }

        func finish(status: Int32) {
            lock.with {
                self.status = status
                finished = true
                for c in continuations { c.finish() }
                continuations.removeAll()
            }
        }

        var snapshot: (records: [Record], status: Int32?) { lock.with { (records, status) } }
        /// The exit status once the run ended, without copying the records.
        var exitStatus: Int32? { lock.with { status } }

        func stream() -> AsyncStream<Record> {
            let (stream, continuation) = AsyncStream.makeStream(of: Record.self, bufferingPolicy: .unbounded)
            lock.with {
                for r in records { continuation.yield(r) }
                if finished { continuation.finish() } else { continuations.append(continuation) }
            }
            return stream
        }
    }
}
