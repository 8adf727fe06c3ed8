"""Reading a BPF ring buffer map (BPF_MAP_TYPE_RINGBUF) directly from its memory mapping.

The layout is the kernel's (kernel/bpf/ringbuf.c, Documentation/bpf/ringbuf.rst): the map fd
maps a consumer page (read-write: `consumer_pos`, a u64 at offset 0), then, read-only, a producer
page (`producer_pos` at offset 0) followed by the data area, mapped twice in a row so that a
record that wraps around the end reads as one piece. Each record is an 8-byte header (u32 length
with BUSY (bit 31: still being written) and DISCARD (bit 30) flags, u32 page offset) followed
by the sample, padded to 8 bytes. Positions only grow; `pos & (size - 1)` is the offset.

Why not bcc's ring_buffer_poll (libbpf): it calls back into Python through ctypes for every
record and stores `consumer_pos` after every record. Each such store is a cache line the
producing CPU must fetch back before its next reserve, on every traced mm syscall; here it is
stored once per read (at most every STORE_EVERY records). Records arrive decoded by one
`struct` call into a tuple: about as quick to read as a ctypes view into the ring, but a value
the callback may keep after the ring has reused that space.

x86-64 orders loads with loads and stores with older loads, which is what the producer's
protocol needs from the reader (header read before sample, samples read before the consumer
position is stored): plain loads and stores from Python suffice there. Other architectures would
need barriers this module does not have: RingReader refuses them.
"""

from __future__ import annotations

import mmap
import platform
import select
import struct

from ..errors import HostUnsupported

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER = struct.Struct("=II")
POS = struct.Struct("=Q")
STORE_EVERY = 1024  # records between consumer_pos stores in a long read: frees space for the producer


class RingReader:
    """The ring buffer behind `map_fd` (data area `size` bytes, a power of two), read as tuples
    made by `decode(buffer, offset)` from each sample."""

    def __init__(self, map_fd: int, size: int, decode):
        if platform.machine() not in ("x86_64", "AMD64"):
            raise HostUnsupported(f"the ring buffer reader relies on x86-64 memory ordering, not {platform.machine()}")
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        page = mmap.PAGESIZE
        self.size = size
        self.mask = size - 1
        self.data_at = page  # the data area's offset in the producer mapping
        self.decode = decode
        self.consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self.producer = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except BaseException:
            self.consumer.close()
            raise
        self.epoll = select.epoll()
        self.epoll.register(map_fd, select.EPOLLIN)

    def close(self) -> None:
        """Unmap (the mappings hold their own reference to the map)."""
        self.epoll.close()
        self.producer.close()
        self.consumer.close()

    def available(self) -> int:
        """Bytes written and not yet read (records being written included)."""
        return POS.unpack_from(self.producer, 0)[0] - POS.unpack_from(self.consumer, 0)[0]

    def poll(self, timeout_ms: int, callback) -> int:
        """Wait up to timeout_ms for the kernel's wake-up when the ring is empty, then read."""
        if not self.available() and timeout_ms:
            try:
                self.epoll.poll(timeout_ms / 1000)
            except InterruptedError:  # a signal: the caller looks at its flags
                pass
        return self.consume(callback)

    def read_to(self) -> int:
        """The consumer position: every record before it has been read."""
        return POS.unpack_from(self.consumer, 0)[0]

    def written(self) -> int:
        """The producer position: every record reserved so far ends at or before it."""
        return POS.unpack_from(self.producer, 0)[0]

    def consume(self, callback, until: int | None = None) -> int:
        """callback(record) for each record there is, oldest first, until the ring is empty, a
        record is still being written, callback returns < 0 (that record counts as read), or
        position `until` (a `written()`) is reached. Returns how many records were handed over."""
        producer, consumer, decode = self.producer, self.consumer, self.decode
        unpack_header, mask, data_at = HEADER.unpack_from, self.mask, self.data_at
        cons = POS.unpack_from(consumer, 0)[0]
        prod = POS.unpack_from(producer, 0)[0]
        n = 0
        if until is not None:
            prod = min(prod, until)
        try:
            while cons < prod:
                at = data_at + (cons & mask)
                length = unpack_header(producer, at)[0]
                if length & BUSY_BIT:
                    break  # reserved, not committed yet: it and what follows wait for next time
                sample_len = length & ~(BUSY_BIT | DISCARD_BIT)
                cons += (HEADER.size + sample_len + 7) & ~7
                if not length & DISCARD_BIT:
                    n += 1
                    stop = callback(decode(producer, at + HEADER.size))
                    if stop is not None and stop < 0:
                        break
                    if not n % STORE_EVERY:
                        POS.pack_into(consumer, 0, cons)
                if cons >= prod and until is None:
                    prod = POS.unpack_from(producer, 0)[0]  # more came in meanwhile
        finally:
            POS.pack_into(consumer, 0, cons)
        return n
