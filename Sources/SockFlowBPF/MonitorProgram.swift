#if canImport(Glibc)
import Glibc
#endif
import CLibBPF
import CSockFlowABI
import CSockFlowSkel
import SockFlowCore

/// sockflow's BPF programs, loaded and attached. Owns the skeleton and the links
/// and frees them in reverse order: on `detach()`, in `deinit`, and when loading
/// or attaching fails half-way (the half-built object is released, its deinit runs).
///
/// Keep the instance alive for as long as monitoring should last: the links are
/// stored here, not in locals, because an optimized build may release a local
/// after its last use and the programs would detach silently.
public final class MonitorProgram {
    public struct Options: Sendable {
        /// Bytes; a power of two, at least one page.
        public var ringBufferBytes: Int = 4 << 20
        /// 0: the kernel wakes the reader on every record. Otherwise at most once per
        /// interval, or when `wakeupBytes` wait in the ring.
        public var wakeupIntervalNanoseconds: UInt64 = 5_000_000
        /// Default: a quarter of the ring.
        public var wakeupBytes: UInt64? = nil
        /// Only flows with one of these local or remote ports (kernel side).
        public var ports: [UInt16] = []
        /// Sockets the kernel tracks at once (its preallocated flow table).
        public var flowCapacity: Int = 1 << 17
        /// A cgroup v2 directory: the sockops program attaches there instead of at
        /// the root, and accept() is reported only for tasks under it.
        public var cgroupPath: String? = nil

        public init() {}
    }

    public let options: Options
    public let cgroupRoot: String
    public let attachPoint: String
    public private(set) var hooks: [String] = []

    private let skel: UnsafeMutablePointer<sockflow_bpf>
    private var links: [OpaquePointer] = []
    private var cgroupFD: Int32 = -1

    /// Checks privileges and kernel features, then opens, configures, loads and
    /// attaches everything. Throws with a message that names what is missing.
    public static func start(_ options: Options) throws(BPFError) -> MonitorProgram {
        try Preflight.check()
        guard let root = CgroupFS.mountPoint() else {
            throw BPFError("find the cgroup v2 hierarchy", code: ENOENT, hint: "no cgroup2 mount in /proc/mounts")
        }
        try Preflight.ensureTracefs()
        errno = 0
        let skel = try unwrap(sockflow_bpf__open(), "open the embedded BPF object")
        let program = MonitorProgram(skel: skel, options: options, cgroupRoot: root)
        try program.configure()
        try check(sockflow_bpf__load(skel), "load the BPF programs into the kernel")
        try program.fillMaps()
        try program.attach()
        return program
    }

    private init(skel: UnsafeMutablePointer<sockflow_bpf>, options: Options, cgroupRoot: String) {
        self.skel = skel
        self.options = options
        self.cgroupRoot = cgroupRoot
        self.attachPoint = options.cgroupPath ?? cgroupRoot
    }

    deinit {
        detach()
        if cgroupFD >= 0 { close(cgroupFD) }
        sockflow_bpf__destroy(skel)
    }

    /// Detaches every program now (records stop coming); the maps stay readable.
    public func detach() {
        for link in links.reversed() { bpf_link__destroy(link) }
        links.removeAll()
    }

    public var isAttached: Bool { !links.isEmpty }

    /// The ring buffer map's fd.
    public var ringBufferFD: Int32 { bpf_map__fd(skel.pointee.maps.events) }

    /// Records the kernel could not reserve since load (read from the mmapped .bss).
    public var lostTotal: UInt64 { volatileLoad(&skel.pointee.bss.pointee.lost_total) }
    /// Sockets the kernel's flow table had no room for: no established/close for them.
    public var untrackedSockets: UInt64 { volatileLoad(&skel.pointee.bss.pointee.untracked_sockets) }

    private func volatileLoad(_ p: UnsafeMutablePointer<UInt64>) -> UInt64 {
        UnsafeRawPointer(p).withMemoryRebound(to: UInt64.self, capacity: 1) { $0.pointee }
    }

    private func configure() throws(BPFError) {
        let size = options.ringBufferBytes
        guard size >= Int(getpagesize()), size & (size - 1) == 0 else {
            throw BPFError("set the ring buffer size to \(size) bytes", code: EINVAL,
                           hint: "must be a power of two and at least \(getpagesize()) bytes")
        }
        try check(bpf_map__set_max_entries(skel.pointee.maps.events, UInt32(size)), "set the ring buffer size")
        try check(
            bpf_map__set_max_entries(skel.pointee.maps.flows, UInt32(clamping: max(options.flowCapacity, 64))),
            "size the kernel's flow table")
        var cfg = sf_config()
        cfg.wakeup_interval_ns = options.wakeupIntervalNanoseconds
        cfg.wakeup_bytes = options.wakeupBytes ?? UInt64(size / 4)
        cfg.filter_ports = options.ports.isEmpty ? 0 : 1
        cfg.filter_cgroup = options.cgroupPath == nil ? 0 : 1
        skel.pointee.rodata.pointee.cfg = cfg
    }

    private func fillMaps() throws(BPFError) {
        var one: UInt8 = 1
        for var port in options.ports {
            try check(
                bpf_map__update_elem(skel.pointee.maps.ports, &port, 2, &one, 1, UInt64(BPF_ANY)),
                "add port \(port) to the kernel filter")
        }
        cgroupFD = open(attachPoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard cgroupFD >= 0 else { throw BPFError("open cgroup \(attachPoint)", code: errno) }
        if options.cgroupPath != nil {
            var key: UInt32 = 0
            var fd = UInt32(cgroupFD)
            try check(
                bpf_map__update_elem(skel.pointee.maps.scope, &key, 4, &fd, 4, UInt64(BPF_ANY)),
                "scope the accept tracepoints to \(attachPoint)")
        }
    }

    private func attach() throws(BPFError) {
        errno = 0
        let sockops = try unwrap(
            bpf_program__attach_cgroup(skel.pointee.progs.handle_sockops, cgroupFD),
            "attach the sockops program to cgroup \(attachPoint)")
        links.append(sockops)
        hooks.append("sockops:\(attachPoint)")
        for (prog, name) in [
            (skel.pointee.progs.handle_accept4_exit, "sys_exit_accept4"),
            (skel.pointee.progs.handle_accept_exit, "sys_exit_accept"),
        ] {
            errno = 0
            let link = try unwrap(
                bpf_program__attach_tracepoint(prog, "syscalls", name),
                "attach tracepoint syscalls:\(name)")
            links.append(link)
            hooks.append("tracepoint:syscalls:\(name)")
        }
    }

    /// A struct's size and member offsets as the BTF of the embedded BPF object
    /// records them: the layout the BPF compiler used. Opens the object without
    /// loading it (no privileges needed).
    public static func embeddedStructLayout(_ name: String) -> (size: Int, members: [String: Int])? {
        LibBPFLog.install(verbose: LibBPFLog.verbose)
        guard let skel = sockflow_bpf__open() else { return nil }
        defer { sockflow_bpf__destroy(skel) }
        guard let btf = bpf_object__btf(skel.pointee.obj) else { return nil }
        let id = btf__find_by_name_kind(btf, name, UInt32(BTF_KIND_STRUCT))
        guard id > 0, let t = btf__type_by_id(btf, UInt32(id)) else { return nil }
        var members: [String: Int] = [:]
        let vlen = Int(t.pointee.info & 0xffff)
        let m = UnsafeRawPointer(t + 1).assumingMemoryBound(to: btf_member.self)
        for i in 0..<vlen {
            let name = String(cString: btf__name_by_offset(btf, m[i].name_off))
            members[name] = Int(m[i].offset / 8)
        }
        return (Int(t.pointee.size), members)
    }
}
