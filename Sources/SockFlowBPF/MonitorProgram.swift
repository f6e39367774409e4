#if canImport(Glibc)
import Glibc
#endif
import CLibBPF
import Synchronization
import CSockFlowABI
import CSockFlowShims
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
        /// Connections the kernel keeps a slot for: rounded up to a power of two.
        /// A connection that outlives this many newer sockets loses its slot, and
        /// its close names only what user space kept of it.
        public var flowCapacity: Int = 1 << 17
        /// A policy to enforce: the enforcement programs load and attach only then.
        public var policy: CompiledPolicy? = nil
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
        if let policy = options.policy { try program.install(policy) }
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
        let pinned = persistent ? Set(enforcementLinks.map { UInt(bitPattern: $0.0) }) : []
        if let link = ingressLink {
            if persistent { bpf_link__disconnect(link) }
            bpf_link__destroy(link)
        }
        ingressLink = nil
        for link in links.reversed() {
            if pinned.contains(UInt(bitPattern: link)) { bpf_link__disconnect(link) }  // stays attached
            bpf_link__destroy(link)
        }
        links.removeAll()
        enforcementLinks.removeAll()
    }

    public var isAttached: Bool { !links.isEmpty }

    /// The ring buffer map's fd.
    public var ringBufferFD: Int32 { bpf_map__fd(skel.pointee.maps.events) }

    /// Records the kernel could not reserve since load (read from the mmapped .bss).
    public var lostTotal: UInt64 { volatileLoad(&skel.pointee.bss.pointee.lost_total) }
    /// Listeners the kernel's listener table had no room for: no close for them.
    public var untrackedSockets: UInt64 { volatileLoad(&skel.pointee.bss.pointee.untracked_sockets) }

    /// Whether the reader will look at the ring again by itself (within one
    /// wakeup interval). While it is, the kernel stages TCP records per CPU and
    /// leaves them for `flushStages()`; set it false, then flush once more, before
    /// sleeping until a wakeup.
    ///
    /// While active the kernel does not wake the reader (it only would if the
    /// ring filled up). Cleared, the next record wakes it at once. A program that
    /// read the flag set just before it cleared submits without a wakeup: its
    /// record was reserved before it read the flag (`RingBuffer.hasUnconsumed`
    /// after the next consume says so), or sits in a stage the next flush takes
    /// or finds taken.
    public func setReaderActive(_ active: Bool) {
        let bss = skel.pointee.bss!
        if !active { bss.pointee.last_wakeup_ns = 0 }
        bss.pointee.reader_active = active ? 1 : 0
        // the store before any read of the ring that follows (the programs
        // order their reservation before their read of the flag the same way)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }

    /// Hands every CPU's staged records to the ring (the flush_stages program,
    /// run in this thread). Returns how many stages a program was writing into at
    /// that moment (their records wait for the next flush), or nil if it could
    /// not run.
    public func flushStages() -> Int? {
        var opts = bpf_test_run_opts()
        opts.sz = MemoryLayout<bpf_test_run_opts>.size
        guard bpf_prog_test_run_opts(bpf_program__fd(skel.pointee.progs.flush_stages), &opts) == 0 else { return nil }
        return Int(opts.retval)
    }

    /// What the kernel's listener tables hold: listeners in a slot of their own
    /// (`lslots`), sets of the key index with a way in use or keys spilled
    /// (`lindex`), and entries of the two hashes behind them. All zero once
    /// every listener the programs saw has closed.
    public func listenerTables() -> (slots: Int, sets: Int, hashed: Int) {
        var slots = 0, sets = 0, hashed = 0
        let lslots = skel.pointee.maps.lslots
        var state = sf_flow_state()
        for i in 0..<bpf_map__max_entries(lslots) {
            var key = i
            if bpf_map_lookup_elem(bpf_map__fd(lslots), &key, &state) == 0, state.cookie != 0 { slots += 1 }
        }
        let lindex = skel.pointee.maps.lindex
        if let layout = Self.embeddedStructLayout("sf_lset"), let spilled = layout.members["spilled"],
           let ways = layout.members["n"], let firstWay = layout.members["way"] {
            var value = [UInt8](repeating: 0, count: layout.size)
            for i in 0..<bpf_map__max_entries(lindex) {
                var key = i
                guard bpf_map_lookup_elem(bpf_map__fd(lindex), &key, &value) == 0 else { continue }
                // spilled and the ways' counts, every 4 bytes up to the first way
                if value[spilled..<spilled + 4].contains(where: { $0 != 0 })
                    || value[ways..<firstWay].contains(where: { $0 != 0 }) { sets += 1 }
            }
        }
        for map in [skel.pointee.maps.listeners, skel.pointee.maps.listening] {
            let fd = bpf_map__fd(map)
            var key = [UInt8](repeating: 0, count: Int(bpf_map__key_size(map)))
            var next = key
            var first = true
            while (first ? bpf_map_get_next_key(fd, nil, &next) : bpf_map_get_next_key(fd, &key, &next)) == 0 {
                hashed += 1
                key = next
                first = false
            }
        }
        return (slots, sets, hashed)
    }

    /// Records waiting in the kernel's per-CPU stages (batched wakeups only).
    public var stagedRecords: Int {
        let map = skel.pointee.maps.stage
        let cpus = Int(libbpf_num_possible_cpus())
        let size = (Int(bpf_map__value_size(map)) + 7) & ~7
        guard cpus > 0 else { return 0 }
        var values = [UInt8](repeating: 0, count: size * cpus)
        var key: UInt32 = 0
        let rc = values.withUnsafeMutableBytes { bpf_map__lookup_elem(map, &key, 4, $0.baseAddress, $0.count, 0) }
        guard rc == 0 else { return 0 }
        return values.withUnsafeBytes { raw in
            (0..<cpus).reduce(0) { $0 + Int(raw.loadUnaligned(fromByteOffset: $1 * size, as: UInt32.self)) }
        }
    }

    /// The power of two of slots at or above `capacity` (64 ... 2^24).
    static func connectionSlots(_ capacity: Int) -> UInt32 {
        var slots: UInt32 = 64
        while Int(slots) < capacity, slots < 1 << 24 { slots <<= 1 }
        return slots
    }

    private func volatileLoad(_ p: UnsafeMutablePointer<UInt64>) -> UInt64 {
        UnsafeRawPointer(p).withMemoryRebound(to: UInt64.self, capacity: 1) { $0.pointee }
    }

    /// The enforcement programs: (program, attach type name).
    private var enforcementPrograms: [(OpaquePointer?, String)] {
        let p = skel.pointee.progs
        return [(p.enforce_connect4, "cgroup/connect4"), (p.enforce_connect6, "cgroup/connect6"),
                (p.enforce_sendmsg4, "cgroup/sendmsg4"), (p.enforce_sendmsg6, "cgroup/sendmsg6"),
                (p.enforce_bind4, "cgroup/post_bind4"), (p.enforce_bind6, "cgroup/post_bind6"),
                (p.enforce_socket, "cgroup/sock_create"), (p.enforce_ingress, "cgroup_skb/ingress")]
    }

    private func configure() throws(BPFError) {
        if options.policy == nil {
            // Monitoring alone neither loads nor verifies the enforcement programs.
            for (prog, _) in enforcementPrograms { bpf_program__set_autoload(prog, false) }
        }
        let size = options.ringBufferBytes
        guard size >= Int(getpagesize()), size & (size - 1) == 0 else {
            throw BPFError("set the ring buffer size to \(size) bytes", code: EINVAL,
                           hint: "must be a power of two and at least \(getpagesize()) bytes")
        }
        try check(bpf_map__set_max_entries(skel.pointee.maps.events, UInt32(size)), "set the ring buffer size")
        let slots = Self.connectionSlots(options.flowCapacity)
        try check(bpf_map__set_max_entries(skel.pointee.maps.conns, slots), "size the kernel's connection table")
        var cfg = sf_config()
        cfg.wakeup_interval_ns = options.wakeupIntervalNanoseconds
        cfg.wakeup_bytes = options.wakeupBytes ?? UInt64(size / 4)
        cfg.filter_ports = options.ports.isEmpty ? 0 : 1
        cfg.filter_cgroup = options.cgroupPath == nil ? 0 : 1
        cfg.conns_mask = slots - 1
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

    // MARK: policy

    /// The generation in force, and the policies of both (for rule names).
    public private(set) var generation: Int = 0
    public private(set) var policies: [CompiledPolicy?] = [nil, nil]

    /// Writes `policy` into the idle generation, then makes it the one in force
    /// with a single store: every decision sees one whole policy, old or new.
    public func install(_ policy: CompiledPolicy) throws(BPFError) {
        let next = policies[generation] == nil && policies[1 - generation] == nil ? generation : 1 - generation
        let rulesFD = bpf_map__fd(skel.pointee.maps.rules)
        let hooksFD = bpf_map__fd(skel.pointee.maps.hook_rules)
        for (i, var rule) in policy.rules.enumerated() {
            var key = UInt32(next * Int(SF_MAX_RULES) + i)
            guard bpf_map_update_elem(rulesFD, &key, &rule, UInt64(BPF_ANY)) == 0 else {
                throw BPFError("write rule \(i + 1) into the kernel", code: errno)
            }
        }
        var needs: UInt32 = 0
        var depth = 0
        for r in policy.policy.rules {
            for p in [r.process, r.notProcess].compactMap({ $0 }) {
                if p.exe != nil { needs |= SF_PROC_EXE.rawValue }
                if p.comm != nil { needs |= SF_PROC_COMM.rawValue }
                if p.uid != nil { needs |= SF_PROC_UID.rawValue }
                if p.gid != nil { needs |= SF_PROC_GID.rawValue }
                if let cg = p.cgroup {
                    needs |= SF_PROC_CGROUP.rawValue
                    depth = max(depth, cg.map(\.level).max() ?? 0)
                }
            }
        }
        for h in 0..<Int(SF_HOOK_COUNT) {
            var list = sf_hook_rules()
            let indices = policy.hookRules[h]
            list.count = UInt32(indices.count)
            withUnsafeMutableBytes(of: &list.index) { raw in
                for (j, idx) in indices.enumerated() { raw.storeBytes(of: idx, toByteOffset: j * 2, as: UInt16.self) }
            }
            var key = UInt32(next * Int(SF_HOOK_COUNT) + h)
            guard bpf_map_update_elem(hooksFD, &key, &list, UInt64(BPF_ANY)) == 0 else {
                throw BPFError("write the rules of hook \(h) into the kernel", code: errno)
            }
        }
        let bss = skel.pointee.bss!
        withUnsafeMutableBytes(of: &bss.pointee.policy_default) { $0.storeBytes(of: UInt32(policy.defaultAction), toByteOffset: next * 4, as: UInt32.self) }
        withUnsafeMutableBytes(of: &bss.pointee.policy_needs) { $0.storeBytes(of: needs, toByteOffset: next * 4, as: UInt32.self) }
        withUnsafeMutableBytes(of: &bss.pointee.policy_cgroup_depth) { $0.storeBytes(of: UInt32(depth), toByteOffset: next * 4, as: UInt32.self) }
        policies[next] = policy
        // The flip: one aligned 4-byte store, ordered after every write above.
        withUnsafeMutablePointer(to: &bss.pointee.policy_generation) { sockflow_store_release_u32($0, UInt32(next)) }
        generation = next
        if isAttached { try attachIngressIfNeeded() }
    }

    /// The rule `index` of generation `generation`, by name.
    public func ruleName(generation: Int, index: UInt32) -> String? {
        guard generation >= 0, generation < 2, let p = policies[generation]?.policy, Int(index) < p.rules.count else { return nil }
        return p.rules[Int(index)].name
    }

    private var ingressLink: OpaquePointer?
    /// Enforcement links by pin name, and whether they are pinned (--persist).
    private var enforcementLinks: [(OpaquePointer, String)] = []
    private var persistent = false

    /// Where --persist pins the enforcement links.
    public static let pinDirectory = "/sys/fs/bpf/sockflow"

    /// Pins the enforcement links in bpffs so they outlive this process, after
    /// removing whatever an earlier sockflow pinned there. Our links are attached
    /// already, so there is no instant without enforcement.
    public func persistEnforcement() throws(BPFError) {
        try Self.ensureBPFFS()
        if mkdir(Self.pinDirectory, 0o700) != 0 && errno != EEXIST {
            throw BPFError("create \(Self.pinDirectory)", code: errno)
        }
        _ = Self.removePins()
        persistent = true
        for (link, name) in enforcementLinks { try pin(link, name) }
        if let link = ingressLink { try pin(link, "ingress") }
    }

    private func pin(_ link: OpaquePointer, _ name: String) throws(BPFError) {
        let path = Self.pinDirectory + "/" + name
        unlink(path)
        try check(bpf_link__pin(link, path), "pin \(name) at \(path)")
    }

    /// Removes pinned enforcement (`sockflow policy unload`). Returns how many
    /// pins there were.
    ///
    /// Each link is detached before its pin goes: unlinking a pin alone frees the
    /// link only after an RCU grace period and a kernel work item, and the
    /// programs went on denying for up to 4 ms after `policy unload` returned.
    @discardableResult
    public static func removePins() -> Int {
        guard let dir = opendir(pinDirectory) else { return 0 }
        var n = 0
        while let ent = readdir(dir) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name == "." || name == ".." { continue }
            let path = pinDirectory + "/" + name
            let fd = bpf_obj_get(path)
            if fd >= 0 {
                _ = bpf_link_detach(fd)
                close(fd)
            }
            if unlink(path) == 0 { n += 1 }
        }
        closedir(dir)
        rmdir(pinDirectory)
        return n
    }

    static func ensureBPFFS() throws(BPFError) {
        if let mounts = FileIO.readString("/proc/mounts"),
            mounts.split(separator: "\n").contains(where: { $0.split(separator: " ").dropFirst().first == "/sys/fs/bpf" })
        {
            return
        }
        if mount("bpf", "/sys/fs/bpf", "bpf", 0, nil) != 0 {
            throw BPFError("mount bpffs at /sys/fs/bpf", code: errno, hint: "--persist pins the enforcement there")
        }
    }

    /// The packet program runs for every packet a socket of the cgroup receives:
    /// attach it only while the policy has accept or udp-recv rules.
    private func attachIngressIfNeeded() throws(BPFError) {
        let needed = policies[generation].map {
            !$0.hookRules[Policy.Hook.accept.index].isEmpty || !$0.hookRules[Policy.Hook.udpRecv.index].isEmpty
        } ?? false
        if needed, ingressLink == nil {
            errno = 0
            let link = try unwrap(
                bpf_program__attach_cgroup(skel.pointee.progs.enforce_ingress, cgroupFD),
                "attach cgroup_skb/ingress to cgroup \(attachPoint)")
            ingressLink = link
            hooks.append("cgroup_skb/ingress:\(attachPoint)")
            if persistent { try pin(link, "ingress") }
        } else if !needed, let link = ingressLink {
            if persistent { unlink(Self.pinDirectory + "/ingress") }
            bpf_link__destroy(link)
            ingressLink = nil
            hooks.removeAll { $0.hasPrefix("cgroup_skb/ingress:") }
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
        if options.policy != nil {
            for (prog, name) in enforcementPrograms where name != "cgroup_skb/ingress" {
                errno = 0
                let link = try unwrap(bpf_program__attach_cgroup(prog, cgroupFD), "attach \(name) to cgroup \(attachPoint)")
                links.append(link)
                enforcementLinks.append((link, String(name.dropFirst("cgroup/".count))))
                hooks.append("\(name):\(attachPoint)")
            }
            try attachIngressIfNeeded()
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
