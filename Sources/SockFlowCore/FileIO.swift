#if canImport(Glibc)
import Glibc
#endif

/// Small blocking file helpers for /proc, /sys and config files. Not for the event
/// path's steady state: callers cache what they read.
public enum FileIO {
    /// The whole file (up to `limit` bytes), or nil if it cannot be opened or read.
    public static func readFile(_ path: String, limit: Int = 1 << 20) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 4096)
        while out.count < limit {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, min($0.count, limit - out.count)) }
            if n < 0 {
                if errno == EINTR { continue }
                return nil
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return out
    }

    public static func readString(_ path: String) -> String? {
        readFile(path).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The target of a symbolic link, as bytes (paths need not be UTF-8).
    public static func readLink(_ path: String) -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = buf.withUnsafeMutableBufferPointer { p in
            p.baseAddress!.withMemoryRebound(to: CChar.self, capacity: p.count) {
                readlink(path, $0, p.count)
            }
        }
        guard n >= 0 else { return nil }
        return Array(buf[0..<n])
    }

    /// Writes all of `bytes` to `fd`, retrying on EINTR and short writes, waiting
    /// on EAGAIN. Returns 0 or the errno that stopped it.
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int32 {
        var offset = 0
        while offset < bytes.count {
            let n = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                let e = errno
                if e == EINTR { continue }
                if e == EAGAIN {
                    var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&p, 1, -1)
                    continue
                }
                return e
            }
            offset += n
        }
        return 0
    }

    /// The text of errno `code`.
    public static func errnoText(_ code: Int32) -> String {
        String(cString: strerror(code))
    }
}
