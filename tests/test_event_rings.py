"""The per-CPU event ring reader against rings written by this test, in memfds laid out as
bpf/events.h declares them: what only a race on a real machine would show (a record another CPU
is still writing, a number that never comes) made to happen on demand."""

import os
import struct

import pytest

from ckptrace.kernel import ringbuf
from ckptrace.kernel.ringbuf import EventRings

REC = struct.Struct("=QQ")  # (seq, payload): stands in for struct ckpt_event
STRIDE, READ_AT, NCPU, SLOTS = 16, 8, 2, 8


class Rings:
    """Two CPUs' rings and positions in memfds, written the way the programs write them."""

    def __init__(self):
        self.ring_fd = os.memfd_create("ring")
        self.pos_fd = os.memfd_create("pos")
        os.ftruncate(self.ring_fd, 4096)
        os.ftruncate(self.pos_fd, 4096)
        self.written = [0] * NCPU
        self.reader = EventRings(self.ring_fd, self.pos_fd, ncpu=NCPU, slots=SLOTS, record_size=REC.size,
                                 stride=STRIDE, read_at=READ_AT, decode=REC.unpack_from, seq_of=lambda r: r[0])

    def write(self, cpu: int, seq: int, payload: int = 0, commit: bool = True) -> None:
        at = (cpu * SLOTS + self.written[cpu] % SLOTS) * REC.size
        os.pwrite(self.ring_fd, REC.pack(seq, payload), at)
        if commit:
            self.commit(cpu)

    def commit(self, cpu: int) -> None:
        self.written[cpu] += 1
        os.pwrite(self.pos_fd, struct.pack("=Q", self.written[cpu]), cpu * STRIDE * 8)

    def count(self, n: int) -> None:
        os.pwrite(self.pos_fd, struct.pack("=Q", n), NCPU * STRIDE * 8)

    def read(self, until=None) -> list[int]:
        got: list[int] = []
        self.reader.consume(lambda r: got.append(r[0]), until=until)
        return got

    def close(self):
        self.reader.close()
        os.close(self.ring_fd)
        os.close(self.pos_fd)


@pytest.fixture
def rings():
    r = Rings()
    yield r
    r.close()


def test_records_of_two_cpus_come_in_sequence_order(rings):
    for seq, cpu in [(0, 1), (1, 0), (2, 0), (3, 1), (4, 1)]:
        rings.write(cpu, seq)
    assert rings.read() == [0, 1, 2, 3, 4]
    assert rings.read() == []


def test_a_number_still_being_written_holds_back_what_follows(rings):
    """CPU 0 took number 0 and has not finished its record; CPU 1's record 1 waits for it."""
    rings.write(0, 0, commit=False)
    rings.write(1, 1)
    assert rings.read() == []
    rings.commit(0)
    assert rings.read() == [0, 1]


def test_a_number_that_never_comes_is_skipped_after_a_while_and_counted(rings, monkeypatch):
    monkeypatch.setattr(ringbuf, "STUCK_SECONDS", 0.0)
    rings.write(1, 1)
    assert rings.read() == []  # first sight of the hole: wait
    assert rings.read() == [1]  # still there: give up on 0
    assert rings.reader.skipped == 1


def test_until_stops_at_the_mark_and_a_callback_can_stop_early(rings):
    for seq in range(5):
        rings.write(seq % 2, seq)
    assert rings.read(until=2) == [0, 1]
    got = []
    rings.reader.consume(lambda r: (got.append(r[0]), -1)[1])
    assert got == [2]
    assert rings.read() == [3, 4]


def test_rings_wrap_and_read_positions_free_the_slots(rings):
    seq = 0
    for _ in range(5):
        for _ in range(SLOTS):
            rings.write(seq % 2, seq, payload=seq * 7)
            seq += 1
        assert rings.read()[-1] == seq - 1
    read = [struct.unpack("=Q", os.pread(rings.pos_fd, 8, cpu * STRIDE * 8 + READ_AT * 8))[0] for cpu in range(NCPU)]
    assert read == rings.written  # the programs see every slot free again
    assert rings.reader.read_to() == seq


def test_gathering_is_bounded_and_the_rest_stays_in_the_rings(rings, monkeypatch):
    monkeypatch.setattr(ringbuf, "GATHER", 3)
    for seq in range(6):
        rings.write(0, seq)
    got = []
    rings.reader.consume(lambda r: (got.append(r[0]), -1)[1])
    assert got == [0] and len(rings.reader.waiting) == 2  # three taken out of the ring, one handed over
    assert rings.read() == [1, 2, 3, 4, 5]


def test_a_backlog_larger_than_the_window_still_comes_out_whole_and_in_order(rings, monkeypatch):
    """Both CPUs hold far more than GATHER records, their numbers interleaved: reading window by
    window hands all of them over in order, none skipped (gathering CPU 0's first GATHER records
    used to leave number 1 in CPU 1's ring, out of reach, skipped a second later)."""
    monkeypatch.setattr(ringbuf, "GATHER", 4)
    for seq in range(2 * SLOTS - 2):
        rings.write(seq % 2, seq)
    assert rings.read() == list(range(2 * SLOTS - 2))
    assert rings.reader.skipped == 0 and not rings.reader.waiting


def test_a_number_given_up_on_that_turns_up_later_is_dropped_not_handed_over_late(rings, monkeypatch):
    monkeypatch.setattr(ringbuf, "STUCK_SECONDS", 0.0)
    rings.write(1, 1)
    rings.write(1, 2)
    assert rings.read() == []
    assert rings.read() == [1, 2]  # 0 given up on
    rings.write(0, 0)  # ... and written after all
    rings.write(0, 3)
    assert rings.read() == [3]
    assert rings.reader.read_to() == 4 and rings.reader.skipped == 1
    assert not rings.reader.waiting  # not kept for ever (nor handed over later, out of order)


def test_available_counts_numbers_taken_and_not_handed_over(rings):
    rings.count(3)
    rings.write(0, 0)
    assert rings.reader.available() == 3
    assert rings.read() == [0]
    assert rings.reader.available() == 2  # 1 and 2 are still being written


def test_ring_sizes_share_the_budget_between_possible_cpus(tmp_path):
    from ckptrace.kernel.bpfload import RING_BYTES, possible_cpus, ring_slots_for

    assert ring_slots_for(2, 96) == 65536
    for ncpu in (4, 16, 256):
        slots = ring_slots_for(ncpu, 96)
        assert slots & (slots - 1) == 0 and slots * ncpu * 96 <= RING_BYTES
    assert ring_slots_for(4096, 96) == 512  # the floor: a busy CPU still has room between reads
    (tmp_path / "possible").write_text("0-3,8,10-11\n")
    assert possible_cpus(str(tmp_path)) == 12  # CPU numbers up to 11 can run programs
