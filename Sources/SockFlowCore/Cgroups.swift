#if canImport(Glibc)
import Glibc
#endif
import CSockFlowShims

/// The cgroup v2 hierarchy, wherever it is mounted.
public enum CgroupFS {
    /// The first cgroup2 mount in /proc/mounts. On hybrid systems this is
    /// /sys/fs/cgroup/unified, on unified ones /sys/fs/cgroup: never assume either.
    public static func mountPoint(mountsFile: String = "/proc/mounts") -> String? {
        guard let text = FileIO.readString(mountsFile) else { return nil }
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count >= 3, f[2] == "cgroup2" { return unescapeMountField(String(f[1])) }
        }
        return nil
    }

    /// /proc/mounts escapes space, tab, newline and backslash as octal (\040 ...).
    static func unescapeMountField(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out = [UInt8]()
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 3 < b.count,
                let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8)
            {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The cgroup id of a cgroup directory: its inode number.
    public static func id(ofDirectory path: String) -> UInt64? {
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { return nil }
        return UInt64(st.st_ino)
    }
}

/// A container a cgroup path belongs to, recognised from the runtimes' naming.
public struct ContainerInfo: Sendable, Equatable {
    public let id: String
    public let runtime: String

    /// Finds a 64-hex-digit container id in a cgroup path:
    /// `docker-<id>.scope`, `/docker/<id>`, `cri-containerd-<id>.scope`,
    /// `crio-<id>.scope`, `libpod-<id>.scope`, `/kubepods…/<id>`.
    public static func from(cgroupPath path: String) -> ContainerInfo? {
        var best: ContainerInfo?
        var kubepods = false
        var parentWasDocker = false
        for component in path.split(separator: "/") {
            if component.hasPrefix("kubepods") { kubepods = true }
            var name = Substring(component)
            if name.hasSuffix(".scope") { name = name.dropLast(6) }
            let prefixes: [(String, String)] = [
                ("docker-", "docker"), ("cri-containerd-", "containerd"), ("crio-", "cri-o"),
                ("libpod-", "podman"),
            ]
            var found = false
            for (prefix, runtime) in prefixes where name.hasPrefix(prefix) {
                let id = name.dropFirst(prefix.count)
                if isContainerID(id) {
                    best = ContainerInfo(id: String(id), runtime: runtime)
                    found = true
                }
            }
            if !found, isContainerID(name) {
                best = ContainerInfo(
                    id: String(name), runtime: parentWasDocker ? "docker" : (kubepods ? "kubernetes" : "unknown"))
            }
            parentWasDocker = component == "docker"
        }
        return best
    }

    static func isContainerID(_ s: Substring) -> Bool {
        s.utf8.count == 64 && s.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }
}

/// A cgroup's path under the cgroup v2 root, and the container it is in, with the
/// JSON fragment `"cgroup":…,"container":…` encoded once.
public final class CgroupDetails: Sendable {
    public let path: String
    public let container: ContainerInfo?
    let encodedJSON: [UInt8]

    public init(path: String) {
        self.path = path
        self.container = ContainerInfo.from(cgroupPath: path)
        var b = ByteBuffer(capacity: 128)
        b.append("\"cgroup\":")
        b.appendJSONString(path)
        b.append(",\"container\":")
        if let c = container {
            b.append("{\"id\":")
            b.appendJSONString(c.id)
            b.append(",\"runtime\":")
            b.appendJSONString(c.runtime)
            b.append(UInt8(ascii: "}"))
        } else {
            b.append("null")
        }
        encodedJSON = b.bytes
    }
}

/// cgroup id → path, cached. Resolves through open_by_handle_at on the cgroup2
/// mount (cgroupfs exports its node ids as file handles), then the fd's path.
/// A cgroup removed before it was looked up resolves to nil.
public final class CgroupCache {
    let mountPoint: String?
    private let mountFD: Int32
    private var entries: [UInt64: CgroupDetails?] = [:]

    public init(mountPoint: String? = CgroupFS.mountPoint()) {
        self.mountPoint = mountPoint
        self.mountFD = mountPoint.map { open($0, O_RDONLY | O_DIRECTORY | O_CLOEXEC) } ?? -1
    }

    deinit { if mountFD >= 0 { close(mountFD) } }

    public func details(for id: UInt64) -> CgroupDetails? {
        if let e = entries[id] { return e }
        let d = resolve(id)
        if entries.count > 16384 { entries.removeAll(keepingCapacity: true) }
        entries[id] = d
        return d
    }

    func resolve(_ id: UInt64) -> CgroupDetails? {
        guard mountFD >= 0, let mountPoint else { return nil }
        let fd = sockflow_open_cgroup_by_id(mountFD, id)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        guard let target = FileIO.readLink("/proc/self/fd/\(fd)") else { return nil }
        let full = String(decoding: target, as: UTF8.self)
        var rel = full.hasPrefix(mountPoint) ? String(full.dropFirst(mountPoint.count)) : full
        if rel.isEmpty { rel = "/" }
        return CgroupDetails(path: rel)
    }
}
