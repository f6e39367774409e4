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
    /// The ring's consumer and producer positions, each the first word of a page
    /// of the map, mapped read-only (libbpf 1.1 does not say where its maps are).
    private let consumerPage: UnsafeMutableRawPointer
    private let producerPage: UnsafeMutableRawPointer
    private let pageSize: Int

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
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let consumer = mmap(nil, page, PROT_READ, MAP_SHARED, mapFD, 0)
        let producer = mmap(nil, page, PROT_READ, MAP_SHARED, mapFD, off_t(page))
        guard let consumer, consumer != MAP_FAILED, let producer, producer != MAP_FAILED else {
            let code = errno
            if let consumer, consumer != MAP_FAILED { munmap(consumer, page) }
            ring_buffer__free(rb)
            box.release()
            throw BPFError("map the ring buffer's positions", code: code)
        }
        self.rb = rb
        self.box = box
        self.consumerPage = consumer
        self.producerPage = producer
        self.pageSize = page
    }

    deinit {
        munmap(consumerPage, pageSize)
        munmap(producerPage, pageSize)
        ring_buffer__free(rb)
        box.release()
    }

    /// Whether the ring holds anything not consumed yet: after `consume()`, a
    /// record a program has reserved and not submitted (consume stops at it).
    public var hasUnconsumed: Bool {
        // the kernel writes each position with a release store; a fresh load of
        // each (no caching across calls: they are read through raw pointers)
        let producer = producerPage.load(as: UInt64.self)
        let consumer = consumerPage.load(as: UInt64.self)
        return producer != consumer
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
