#if canImport(Glibc)
import Glibc
#endif
import SockFlowCore

public enum OutputFormat: String, Sendable, CaseIterable {
    case json, text
}

/// A sink whose output leaves at the end of each batch.
public protocol FlushingRecordSink: RecordSink {
    /// Writes what is buffered. False when the output is gone (EPIPE, ...).
    func flush() -> Bool
}

/// Encodes records into one buffer and writes it to a file descriptor once per
/// batch: whole lines only, one write(2) per batch in the common case.
public final class LineWriter: FlushingRecordSink {
    public let format: OutputFormat
    public let fd: Int32
    /// Written only by the consumer thread.
    @exclusivity(unchecked) private var buffer = ByteBuffer(capacity: 1 << 20)
    private let flows = FlowTextCache()
    /// The errno that stopped output, 0 while it works.
    public private(set) var writeError: Int32 = 0
    public private(set) var bytesWritten: UInt64 = 0

    public init(fd: Int32 = 1, format: OutputFormat = .json) {
        self.fd = fd
        self.format = format
    }

    public func emit(_ record: borrowing Record) {
        switch format {
        case .json: RecordEncoder.json(record, into: &buffer, flows: flows)
        case .text: RecordEncoder.text(record, into: &buffer)
        }
        if buffer.count >= 1 << 20 { _ = flush() }
    }

    public func flush() -> Bool {
        guard writeError == 0 else { return false }
        guard !buffer.isEmpty else { return true }
        let rc = buffer.withUnsafeBytes { FileIO.writeAll(fd, $0) }
        if rc != 0 {
            writeError = rc
            return false
        }
        bytesWritten &+= UInt64(buffer.count)
        buffer.removeAll()
        return true
    }
}
