#if canImport(Glibc)
import Glibc
#endif
import CSockFlowABI

/// What /proc said about a process: the executable's path and the command line.
public final class ProcessDetails: Sendable {
    public let exe: String?
    public let cmdline: [String]?
    let exeBytes: [UInt8]?
    let cmdlineBytes: [[UInt8]]?

    public init(exe: String?, exeBytes: [UInt8]? = nil, cmdline: [[UInt8]]?) {
        self.exe = exe
        self.exeBytes = exeBytes ?? exe.map { Array($0.utf8) }
        self.cmdlineBytes = cmdline
        self.cmdline = cmdline.map { $0.map { String(decoding: $0, as: UTF8.self) } }
    }
}

/// One process instance as records show it: the fields every record of the process
/// repeats, resolved once (owner details from /proc, the cgroup path) and encoded
/// once as the JSON around the per-thread `tid` and `comm`:
///
///     {"pid":P,"tid":  <tid>  ,"ppid":…,"uid":…,"gid":…,"comm":  <comm>  ,"exe_name":…,…,"container":…}
///     └─── head ────┘        └──────────── middle ─────────────┘        └──────────── tail ───────────┘
///
/// A new instance is made when anything in it changes (exec, setuid, a new
/// parent, another cgroup), so a record always shows what the kernel recorded.
public final class ProcessInstance: @unchecked Sendable {
    public let pid: Int32
    public let ppid: Int32
    public let uid: UInt32
    public let gid: UInt32
    public let cgroupID: UInt64
    public let isKernelThread: Bool
    public let details: ProcessDetails?
    public let cgroup: CgroupDetails?
    let startNanoseconds: UInt64
    let execID: UInt64
    let exeIno: UInt64
    let exeDev: UInt32
    /// The executable's file name as the kernel had it (may be cut at 39 bytes).
    public let exeName: String
    let head: [UInt8]
    let middle: [UInt8]
    let tail: [UInt8]
    /// The comm of the task the instance was made from, and `middle`, that comm
    /// as a JSON string and `tail` in one piece: most records of a process come
    /// from threads with the process's name, and skip escaping it.
    let commKey: (UInt64, UInt64)
    let middleCommTail: [UInt8]

    init(task t: sf_task, details: ProcessDetails?, cgroup: CgroupDetails?) {
        pid = Int32(bitPattern: t.pid)
        ppid = Int32(bitPattern: t.ppid)
        uid = t.uid
        gid = t.gid
        cgroupID = t.cgroup_id
        isKernelThread = t.flags & UInt32(SF_TASK_KTHREAD.rawValue) != 0
        startNanoseconds = t.start_ns
        execID = t.exec_id
        exeIno = t.exe_ino
        exeDev = t.exe_dev
        exeName = Self.string(t.exe_name)
        self.details = details
        self.cgroup = cgroup

        var b = ByteBuffer(capacity: 64)
        b.append("{\"pid\":")
        b.appendDecimal(UInt64(t.pid))
        b.append(",\"tid\":")
        head = b.bytes
        b.removeAll()
        b.append(",\"ppid\":")
        b.appendDecimal(UInt64(t.ppid))
        b.append(",\"uid\":")
        b.appendDecimal(UInt64(t.uid))
        b.append(",\"gid\":")
        b.appendDecimal(UInt64(t.gid))
        b.append(",\"comm\":")
        middle = b.bytes
        b.removeAll()
        b.append(",\"exe_name\":")
        b.appendJSONString(cString: t.exe_name)
        b.append(",\"exe\":")
        if let exe = details?.exeBytes { exe.withUnsafeBytes { b.appendJSONString($0) } } else { b.append("null") }
        b.append(",\"cmdline\":")
        if let args = details?.cmdlineBytes {
            b.append(UInt8(ascii: "["))
            for (i, arg) in args.enumerated() {
                if i > 0 { b.append(UInt8(ascii: ",")) }
                arg.withUnsafeBytes { b.appendJSONString($0) }
            }
            b.append(UInt8(ascii: "]"))
        } else {
            b.append("null")
        }
        b.append(",\"cgroup_id\":")
        b.appendDecimal(t.cgroup_id)
        b.append(UInt8(ascii: ","))
        if let c = cgroup {
            c.encodedJSON.withUnsafeBytes { b.append($0) }
        } else {
            b.append("\"cgroup\":null,\"container\":null")
        }
        b.append(UInt8(ascii: "}"))
        tail = b.bytes
        commKey = Swift.withUnsafeBytes(of: t.comm) { $0.loadUnaligned(as: (UInt64, UInt64).self) }
        b.removeAll()
        middle.withUnsafeBytes { b.append($0) }
        b.appendJSONString(cString: commKey)
        tail.withUnsafeBytes { b.append($0) }
        middleCommTail = b.bytes
    }

    /// Does the kernel's view of the task still match this instance?
    @inline(__always)
    func matches(_ t: sf_task) -> Bool {
        t.start_ns == startNanoseconds && t.exec_id == execID && t.uid == uid && t.gid == gid
            && Int32(bitPattern: t.ppid) == ppid && t.cgroup_id == cgroupID && t.exe_ino == exeIno
            && t.exe_dev == exeDev
    }

    static func string<T>(_ tuple: T) -> String {
        Swift.withUnsafeBytes(of: tuple) { raw in
            let n = raw.firstIndex(of: 0) ?? raw.count
            return String(decoding: raw[0..<n], as: UTF8.self)
        }
    }
}

/// Process instances by pid, with their /proc details read once.
///
/// An instance is (pid, start time, exec count) as the kernel recorded them in the
/// event. /proc is read only if its `starttime` matches the event's, before and
/// after the reads, so a pid that was reused can never lend the new process's
/// name to an old record; a process that is gone gets `nil`, never a guess.
public final class ProcessCache {
    let procRoot: String
    let ticksPerSecond: UInt64
    let limit: Int
    let cgroups: CgroupCache
    @exclusivity(unchecked) private var entries: [UInt32: ProcessInstance] = [:]
    public private(set) var procReads: UInt64 = 0

    public init(procRoot: String = "/proc", cgroups: CgroupCache = CgroupCache(), limit: Int = 65536) {
        self.procRoot = procRoot
        self.cgroups = cgroups
        self.limit = limit
        let hz = sysconf(Int32(_SC_CLK_TCK))
        self.ticksPerSecond = hz > 0 ? UInt64(hz) : 100
        entries.reserveCapacity(1024)
    }

    /// The instance the kernel described in `task`: cached, or resolved now.
    @inline(__always)
    public func instance(for task: sf_task) -> ProcessInstance {
        if let e = entries[task.pid], e.matches(task) { return e }
        return resolve(task)
    }

    public func record(for task: sf_task) -> ProcessRecord {
        ProcessRecord(instance: instance(for: task), task: task)
    }

    /// For a partial task (the owner the kernel kept with a flow: pid, tid, comm):
    /// the process instance last seen with that pid, if its records came through.
    /// nil if there is none: then nothing is known beyond the pid, and nothing is shown.
    public func owner(_ task: sf_task) -> ProcessRecord? {
        guard task.flags & UInt32(SF_TASK_OWNER.rawValue) != 0, let instance = entries[task.pid] else { return nil }
        return ProcessRecord(instance: instance, task: task)
    }

    @inline(never)
    func resolve(_ task: sf_task) -> ProcessInstance {
        var details: ProcessDetails?
        if let old = entries[task.pid], old.startNanoseconds == task.start_ns, old.execID == task.exec_id {
            details = old.details  // same program in the same process: only ids changed
        } else if task.flags & UInt32(SF_TASK_VALID.rawValue) != 0,
            task.flags & UInt32(SF_TASK_KTHREAD.rawValue) == 0
        {
            details = read(pid: task.pid, startNanoseconds: task.start_ns)
        }
        let instance = ProcessInstance(task: task, details: details, cgroup: cgroups.details(for: task.cgroup_id))
        if entries.count >= limit { entries.removeAll(keepingCapacity: true) }
        entries[task.pid] = instance
        return instance
    }

    /// Details for the process in `task` (tests, API).
    public func details(for task: sf_task) -> ProcessDetails? { instance(for: task).details }

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
        return ProcessDetails(exe: String(decoding: exe, as: UTF8.self), exeBytes: exe, cmdline: args)
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
