"""Reading the per-CPU event rings of bpf/watch.bpf.c from their memory mappings.

The layout is declared in bpf/events.h: an array map `ring` of CKPT_NCPU rings of `slots`
records each, and an array map `ringpos` with, per CPU, the count of records written (stored by
the programs on that CPU after the record) and the count read (stored here), a cache line apart,
then the global sequence counter. Both maps are BPF_F_MMAPABLE arrays: mapping the map fd gives
the values, laid out one after the other (each rounded up to 8 bytes).

Every record carries the next sequence number, taken once its slot is secured (a full ring
drops the record before that), so the numbers are consecutive over all CPUs. The reader gathers
what each ring holds and hands records over in sequence order; a number not there yet belongs to
a record another CPU is writing at that moment, and what follows it waits for the next read.

x86-64 orders stores with stores and loads with loads, which is all the protocol needs (a record
is stored before its CPU's written count, and read before the read count is stored): plain loads
and stores from Python suffice. Other architectures would need barriers this module does not
have: the reader refuses them. The counts must be loaded and stored whole, though: `struct`'s
"=Q" does it a byte at a time, and a program that saw a read count half-way through being
stored (0x3ff10 -> 0x40010 passing through 0x30010) took its ring for full and dropped records.
A native-format memoryview ("Q") moves the 8 bytes in one instruction.
"""

from __future__ import annotations

import mmap
import platform
import time

from ..errors import HostUnsupported

GATHER = 16384  # records are taken out of the rings up to this far ahead of the next one to hand over
STUCK_SECONDS = 1.0  # a missing number this old while later ones are there: given up on


class EventRings:
    """The rings behind `ring_fd` (`ncpu` rings of `slots` records of `record_size` bytes) and
    `pos_fd` (positions laid out as bpf/events.h says, `stride` u64 per CPU, read count at
    `read_at`), read as tuples made by `decode(buffer, offset)`; `seq_of(record)` gives a
    record's sequence number."""

    def __init__(self, ring_fd: int, pos_fd: int, *, ncpu: int, slots: int, record_size: int,
                 stride: int, read_at: int, decode, seq_of):
        if platform.machine() not in ("x86_64", "AMD64"):
            raise HostUnsupported(f"the event ring reader relies on x86-64 memory ordering, not {platform.machine()}")
        if slots <= 0 or slots & (slots - 1):
            raise ValueError(f"ring size {slots} is not a power of two")
        page = mmap.PAGESIZE
        self.ncpu, self.slots, self.mask = ncpu, slots, slots - 1
        self.record_size = (record_size + 7) & ~7  # array map values are 8-byte aligned
        self.decode, self.seq_of = decode, seq_of
        # indexes of u64 words in `ringpos`
        self.written_at = [cpu * stride for cpu in range(ncpu)]
        self.read_at = [cpu * stride + read_at for cpu in range(ncpu)]
        self.seq_at = ncpu * stride
        self.ring_at = [cpu * slots * self.record_size for cpu in range(ncpu)]
        pos_len = ((self.seq_at + 1) * 8 + page - 1) // page * page
        ring_len = (ncpu * slots * self.record_size + page - 1) // page * page
        self.pos = mmap.mmap(pos_fd, pos_len, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            self.rings = mmap.mmap(ring_fd, ring_len, mmap.MAP_SHARED, mmap.PROT_READ)
        except BaseException:
            self.pos.close()
            raise
        self.counts = memoryview(self.pos).cast("Q")  # whole-word loads and stores, see above
        self.waiting: dict[int, tuple] = {}  # gathered, by sequence number, not handed over yet
        self.next = 0  # the maps are new: numbers start at 0, nothing has been read
        self.gap_since: float | None = None
        self.skipped = 0  # numbers given up on (never seen: a defect, counted rather than hung on)

    def close(self) -> None:
        """Unmap (the mappings hold their own reference to the maps)."""
        self.counts.release()
        self.rings.close()
        self.pos.close()

    def written(self) -> int:
        """The sequence counter: every record numbered below it has its slot."""
        return self.counts[self.seq_at]

    def read_to(self) -> int:
        """Every record numbered below this has been handed over."""
        return self.next

    def available(self) -> int:
        """Records taken a number for and not handed over yet (some may still be being written)."""
        return self.written() - self.next

    def _gather(self, nxt: int) -> None:
        """Move records numbered nxt .. nxt + GATHER - 1 out of the rings into `waiting`. The
        window, not a count, bounds it: each ring holds its records in number order, so a ring
        stops at its first record past the window, and the record numbered `nxt` can always be
        taken whichever ring holds it (taking the first GATHER records ring by ring could fill
        `waiting` from one ring while `nxt` sat in another)."""
        counts, rings, decode, seq_of, waiting = self.counts, self.rings, self.decode, self.seq_of, self.waiting
        mask, size, limit = self.mask, self.record_size, nxt + GATHER
        for cpu in range(self.ncpu):
            read_at = self.read_at[cpu]
            read = i = counts[read_at]
            written = counts[self.written_at[cpu]]
            base = self.ring_at[cpu]
            while i < written:
                rec = decode(rings, base + (i & mask) * size)
                seq = seq_of(rec)
                if seq >= limit:
                    break
                if seq >= nxt:
                    waiting[seq] = rec
                # else: a number given up on (see _missing) turned up after all: already counted lost
                i += 1
            if i > read:
                counts[read_at] = i  # the slots are free for the programs again

    def consume(self, callback, until: int | None = None) -> int:
        """callback(record) for each record there is, in sequence order, until none is left, the
        next one is still being written, callback returns < 0 (that record counts as read), or
        number `until` (a `written()`) is reached. Returns how many records were handed over."""
        waiting, pop, n = self.waiting, self.waiting.pop, 0
        nxt = self.next
        self._gather(nxt)
        try:
            while until is None or nxt < until:
                rec = pop(nxt, None)
                if rec is None:
                    self._gather(nxt)  # written since, or left in the ring by the window
                    rec = pop(nxt, None)
                if rec is None:
                    if not waiting:
                        break  # nothing more, or only this one is being written
                    skip_to = self._missing(nxt)
                    if skip_to is None:
                        break
                    nxt = skip_to
                    continue
                self.gap_since = None
                nxt += 1
                n += 1
                stop = callback(rec)
                if stop is not None and stop < 0:
                    break
        finally:
            self.next = nxt
        return n

    def _missing(self, nxt: int) -> int | None:
        """Number `nxt` is not there but later ones are: another CPU is writing it right now, so
        wait for the next read (None). Only a number missing for STUCK_SECONDS is skipped (the
        next one to hand over is returned): that would be a defect, and hanging on it would stop
        every event after it."""
        now = time.monotonic()
        if self.gap_since is None:
            self.gap_since = now
            return None
        if now - self.gap_since < STUCK_SECONDS:
            return None
        self.gap_since = None
        first = min(self.waiting)
        self.skipped += first - nxt
        return first

    def poll(self, timeout_ms: int, callback) -> int:
        """Read; when there is nothing to read, sleep up to timeout_ms first (the programs do not
        wake the reader: an event waits that long at most)."""
        if not self.available() and timeout_ms:
            time.sleep(timeout_ms / 1000)
        return self.consume(callback)
