#if canImport(Glibc)
import Glibc
#endif
import CSockFlowABI

/// What /proc said about a process: the executable's path and the command line,
/// kept as strings for the API and pre-encoded as the JSON fragment
/// `"exe":…,"cmdline":[…]` so that records reuse it without re-escaping.
public final class ProcessDetails: Sendable {
    public let exe: String?
    public let cmdline: [String]?
    let encodedJSON: [UInt8]

    public init(exe: String?, exeBytes: [UInt8]? = nil, cmdline: [[UInt8]]?) {
        self.exe = exe
        self.cmdline = cmdline.map { $0.map { String(decoding: $0, as: UTF8.self) } }
        var b = ByteBuffer(capacity: 256)
        b.append("\"exe\":")
        if let exeBytes {
            exeBytes.withUnsafeBytes { b.appendJSONString($0) }
        } else if let exe {
            b.appendJSONString(exe)
        } else {
            b.append("null")
        }
        b.append(",\"cmdline\":")
        if let cmdline {
            b.append(UInt8(ascii: "["))
            for (i, arg) in cmdline.enumerated() {
                if i > 0 { b.append(UInt8(ascii: ",")) }
                arg.withUnsafeBytes { b.appendJSONString($0) }
            }
            b.append(UInt8(ascii: "]"))
        } else {
            b.append("null")
        }
        self.encodedJSON = b.bytes
    }
}

/// Executable path and command line per process, read from /proc once per
/// process instance and cached.
///
/// A process instance is (pid, start time, exec count) as the kernel recorded them
/// in the event. /proc is read only if its `starttime` matches the event's, before
/// and after the reads, so a pid that was reused can never lend the new process's
/// name to an old record; a process that is gone gets `nil`, never a guess.
public final class ProcessCache {
    struct Key: Hashable {
        let pid: UInt32
        let startNanoseconds: UInt64
        let execID: UInt64
    }

    let procRoot: String
    let ticksPerSecond: UInt64
    let limit: Int
    private var entries: [UInt32: (key: Key, details: ProcessDetails?)] = [:]
    public private(set) var procReads: UInt64 = 0

    public init(procRoot: String = "/proc", limit: Int = 65536) {
        self.procRoot = procRoot
        self.limit = limit
        let hz = sysconf(Int32(_SC_CLK_TCK))
        self.ticksPerSecond = hz > 0 ? UInt64(hz) : 100
        entries.reserveCapacity(1024)
    }

    /// The details for the process the kernel described in `task`.
    public func details(for task: sf_task) -> ProcessDetails? {
        guard task.flags & UInt32(SF_TASK_VALID.rawValue) != 0,
            task.flags & UInt32(SF_TASK_KTHREAD.rawValue) == 0
        else { return nil }
        let key = Key(pid: task.pid, startNanoseconds: task.start_ns, execID: task.exec_id)
        if let e = entries[task.pid], e.key == key { return e.details }
        let details = read(pid: task.pid, startNanoseconds: task.start_ns)
        if entries.count >= limit { entries.removeAll(keepingCapacity: true) }
        entries[task.pid] = (key, details)
        return details
    }

    /// Forget a pid (its process exited).
    public func forget(pid: UInt32) { entries[pid] = nil }

    func read(pid: UInt32, startNanoseconds: UInt64) -> ProcessDetails? {
        procReads &+= 1
        let dir = "\(procRoot)/\(pid)"
        let expectedTicks = startNanoseconds / (1_000_000_000 / ticksPerSecond)
        guard Self.startTicks(statPath: dir + "/stat") == expectedTicks else { return nil }
        guard let exe = FileIO.readLink(dir + "/exe") else { return nil }
        guard let rawCmdline = FileIO.readFile(dir + "/cmdline", limit: 128 * 1024) else { return nil }
        // Read again: if the pid now names another process, what we read may be its.
        guard Self.startTicks(statPath: dir + "/stat") == expectedTicks else { return nil }
        var args: [[UInt8]] = []
        var current: [UInt8] = []
        for byte in rawCmdline {
            if byte == 0 {
                args.append(current)
                current.removeAll(keepingCapacity: true)
            } else {
                current.append(byte)
            }
        }
        if !current.isEmpty { args.append(current) }
        return ProcessDetails(
            exe: String(decoding: exe, as: UTF8.self), exeBytes: exe, cmdline: args)
    }

    /// Field 22 of /proc/PID/stat (start time in clock ticks since boot). The comm
    /// field may hold spaces and parentheses, so fields are counted after the last ')'.
    static func startTicks(statPath: String) -> UInt64? {
        guard let stat = FileIO.readFile(statPath, limit: 4096),
            let close = stat.lastIndex(of: UInt8(ascii: ")"))
        else { return nil }
        var field = 2
        var value: UInt64 = 0
        var inField = false
        for byte in stat[(close + 1)...] {
            if byte == UInt8(ascii: " ") {
                if inField {
                    if field == 22 { return value }
                    inField = false
                }
                continue
            }
            if !inField {
                inField = true
                field += 1
                value = 0
            }
            if field == 22 {
                guard byte >= 48, byte <= 57 else { return nil }
                value = value * 10 + UInt64(byte - 48)
            }
        }
        return inField && field == 22 ? value : nil
    }
}
