#if canImport(Glibc)
import Glibc
#endif
import CLibBPF

/// libbpf's ring-buffer reader over one map. Samples go to `onSample` on the
/// thread that calls `consume()`; returning false stops the batch early.
public final class RingBuffer {
    final class Box {
        let onSample: (UnsafeRawBufferPointer) -> Bool
        init(_ f: @escaping (UnsafeRawBufferPointer) -> Bool) { onSample = f }
    }

    private let rb: OpaquePointer
    private let box: Unmanaged<Box>

    public init(mapFD: Int32, onSample: @escaping (UnsafeRawBufferPointer) -> Bool) throws(BPFError) {
        let box = Unmanaged.passRetained(Box(onSample))
        errno = 0
        let callback: ring_buffer_sample_fn = { ctx, data, size in
            let box = Unmanaged<Box>.fromOpaque(ctx!).takeUnretainedValue()
            // Only a negative return stops libbpf's loop; the sample is consumed either way.
            return box.onSample(UnsafeRawBufferPointer(start: data, count: size)) ? 0 : -ECANCELED
        }
        guard let rb = ring_buffer__new(mapFD, callback, box.toOpaque(), nil) else {
            box.release()
            throw BPFError("open the ring buffer", code: errno == 0 ? EINVAL : errno)
        }
        self.rb = rb
        self.box = box
    }

    deinit {
        ring_buffer__free(rb)
        box.release()
    }

    /// An epoll fd that is readable when the kernel woke the reader.
    public var epollFD: Int32 { ring_buffer__epoll_fd(rb) }

    /// Handles every sample available now. Returns false if a handler stopped it.
    @discardableResult
    public func consume() throws(BPFError) -> Bool {
        let rc = ring_buffer__consume(rb)
        if rc == -ECANCELED { return false }  // the handler's stop
        if rc < 0, rc != -EINTR { throw BPFError("read the ring buffer", code: -rc) }
        return true
    }
}
