#if canImport(Glibc)
import Glibc
#endif
import SockFlowCore

/// Drops flow-table entries whose sockets no longer exist. Needed only when a
/// `close` record was lost (the ring buffer was full): without it those entries
/// would stay until the table fills. Compares the table with the kernel's socket
/// list (sock_diag), namespace by namespace; an entry made after the dump began,
/// or in a namespace sockflow cannot enter, is kept: a live flow is never dropped.
final class Reconciler {
    private(set) var removed: UInt64 = 0
    private(set) var runs: UInt64 = 0
    private var lastRun: UInt64 = 0
    private var lossSeen: UInt64 = 0
    let minimumInterval: UInt64 = 5_000_000_000

    /// Reconciles if records were lost since the last run, or the table is full;
    /// at most once per `minimumInterval` unless `force`. A forced run (at stop)
    /// reconciles if anything was ever lost: the run that first saw the loss may
    /// have come before the held records of those flows reached the table.
    func maybeRun(_ builder: RecordBuilder, force: Bool = false) {
        let loss = builder.reportedRingLoss &+ builder.reportedStorageLoss
        let table = builder.table
        guard loss != lossSeen || (force && loss > 0) || table.count >= table.limit else { return }
        let now = WallClock.kernelNow()
        guard force || now &- lastRun >= minimumInterval else { return }
        lastRun = now
        lossSeen = loss
        run(table)
    }

    func run(_ table: FlowTable) {
        runs &+= 1
        let dumpStart = WallClock.kernelNow()
        let entries = table.summary
        let own = Self.netnsInode(path: "/proc/thread-self/ns/net")
        var byNetns: [UInt32: [(cookie: UInt64, since: UInt64, pid: Int32?)]] = [:]
        for e in entries { byNetns[e.netns, default: []].append((e.cookie, e.since, e.pid)) }
        for (netns, flows) in byNetns {
            let live: Set<UInt64>?
            if netns == own {
                live = try? SockDiag.tcpCookies()
            } else if let fd = Self.openNetns(netns, pids: flows.compactMap(\.pid)) {
                live = try? SockDiag.inNamespace(fd) { try SockDiag.tcpCookies() }
                close(fd)
            } else {
                live = nil
            }
            guard let live else { continue }
            for f in flows where f.since < dumpStart && !live.contains(f.cookie) {
                if table.remove(f.cookie) != nil { removed &+= 1 }
            }
        }
    }

    static func netnsInode(path: String) -> UInt32? {
        var st = stat()
        return stat(path, &st) == 0 ? UInt32(truncatingIfNeeded: st.st_ino) : nil
    }

    /// An fd for the namespace with this inode: a name under /run/netns, or the
    /// namespace of a process that owns one of its flows.
    static func openNetns(_ inode: UInt32, pids: [Int32]) -> Int32? {
        var candidates: [String] = []
        if let dir = opendir("/run/netns") {
            while let ent = readdir(dir) {
                let name = withUnsafeBytes(of: ent.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name != "." && name != ".." { candidates.append("/run/netns/" + name) }
            }
            closedir(dir)
        }
        candidates += Set(pids).map { "/proc/\($0)/ns/net" }
        for path in candidates where netnsInode(path: path) == inode {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            if fd >= 0 { return fd }
        }
        return nil
    }
}
