#if canImport(Glibc)
import Glibc
#endif

/// Converts the kernel's record stamps (CLOCK_MONOTONIC: TCP keeps its own time
/// in it, which the BPF programs reuse instead of reading the clock again) to
/// wall-clock time. The offset is re-read once per batch, so NTP steps show up
/// within one batch.
public struct WallClock: Sendable {
    public private(set) var offset: Int64 = 0

    public init() { refresh() }

    /// A fixed offset (tests).
    public init(offset: Int64) { self.offset = offset }

    public mutating func refresh() {
        offset = Self.read(CLOCK_REALTIME) - Self.read(CLOCK_MONOTONIC)
    }

    @inline(__always)
    public func wallTime(kernelNanoseconds: UInt64) -> Int64 {
        Int64(bitPattern: kernelNanoseconds) &+ offset
    }

    public static func now() -> Int64 { read(CLOCK_REALTIME) }
    /// Now, on the clock of the kernel's record stamps.
    public static func kernelNow() -> UInt64 { UInt64(read(CLOCK_MONOTONIC)) }

    static func read(_ clock: clockid_t) -> Int64 {
        var ts = timespec()
        clock_gettime(clock, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}
