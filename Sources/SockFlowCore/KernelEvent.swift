import CSockFlowABI

/// The kind of a ring-buffer record, decoded through a Swift enum: an imported C
/// enum accepts any raw value.
public enum KernelEventKind: UInt16, Sendable, CaseIterable {
    case listen = 1
    case connect = 2
    case established = 3
    case accept = 4
    case close = 5
    case verdict = 6
}

/// Why a ring-buffer sample could not be decoded.
public struct DecodeError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The sample is shorter than its header or than the size it declares.
        case truncated(size: Int, needed: Int)
        /// The header names a kind this build does not know.
        case unknownKind(UInt16)
        /// The header's size field disagrees with the record layout of its kind.
        case badSize(declared: Int, expected: Int)
    }
    public let code: Code

    public var description: String {
        switch code {
        case let .truncated(size, needed):
            "truncated record: \(size) bytes, need \(needed)"
        case let .unknownKind(kind):
            "unknown record kind \(kind)"
        case let .badSize(declared, expected):
            "record declares \(declared) bytes, its kind has \(expected)"
        }
    }
}

/// One record from the kernel, copied out of the ring buffer. The C struct is the
/// storage: nothing is converted or allocated until a field is asked for.
public struct KernelEvent: Sendable {
    public let kind: KernelEventKind
    public let raw: sf_event

    public static let size = MemoryLayout<sf_event>.size
    static let headerSize = MemoryLayout<sf_hdr>.size

    /// Decodes a sample. Checks the size before reading; reads unaligned.
    public init(bytes: UnsafeRawBufferPointer) throws(DecodeError) {
        self.kind = try Self.validate(bytes)
        self.raw = bytes.loadUnaligned(as: sf_event.self)
    }

    /// Checks a sample's size and kind without copying it.
    public static func validate(_ bytes: UnsafeRawBufferPointer) throws(DecodeError) -> KernelEventKind {
        guard bytes.count >= Self.headerSize else {
            throw DecodeError(code: .truncated(size: bytes.count, needed: Self.headerSize))
        }
        let header = bytes.loadUnaligned(as: sf_hdr.self)
        guard let kind = KernelEventKind(rawValue: header.kind) else {
            throw DecodeError(code: .unknownKind(header.kind))
        }
        guard Int(header.size) == Self.size else {
            throw DecodeError(code: .badSize(declared: Int(header.size), expected: Self.size))
        }
        guard bytes.count >= Self.size else {
            throw DecodeError(code: .truncated(size: bytes.count, needed: Self.size))
        }
        return kind
    }

    public init(kind: KernelEventKind, raw: sf_event) {
        self.kind = kind
        self.raw = raw
    }

    public var kernelNanoseconds: UInt64 { raw.hdr.ts_ns }
    /// The kernel's count of records it could not reserve, as of this record.
    public var lostBefore: UInt64 { raw.hdr.lost }
    public var role: FlowRole? { FlowRole(rawValue: raw.role) }
    public var hasTask: Bool { raw.task.flags & UInt32(SF_TASK_VALID.rawValue) != 0 }
}

/// What a socket is to sockflow.
public enum FlowRole: UInt8, Sendable {
    case listener = 1
    case outbound = 2
    case inbound = 3
}

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
public enum TCPState: UInt8, Sendable {
    case established = 1, synSent, synRecv, finWait1, finWait2, timeWait, close, closeWait,
        lastAck, listen, closing, newSynRecv
}
