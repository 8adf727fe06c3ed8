"""Attributing written pages when a process left many tombstones: a loop that maps a page, writes
it and unmaps it N times between two drains (each munmap leaves a tombstone at the same address).

    .venv/bin/python bench/watch_model.py [N ...]

Prints the time one drain's attribution takes (Model.add_dirty). Before TombIndex every page was
looked up through every tombstone: 20 000 iterations took ~15 s, and the controller stood still
meanwhile; indexed, ~0.1 s here.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ckptrace.watchmodel import Model  # noqa: E402

PAGE = 4096
ADDR = 0x7F0000000000


def main(argv: list[str]) -> int:
    for n in [int(a) for a in argv] or [5000, 20000, 50000]:
        m = Model(clock=lambda: 1.0)
        m.seed_proc(100, 1, 1, comm="loop", maps=[])
        pages = []
        for i in range(n):
            gen = 2 * i + 1
            m.apply({"event": "mmap", "pid": 1, "hostpid": 100, "ns": 1, "ts": 0, "addr": ADDR, "len": PAGE,
                     "prot": 3}, gen=gen)
            pages.append((gen, ADDR))
            m.apply({"event": "munmap", "pid": 1, "hostpid": 100, "ns": 1, "ts": 0, "addr": ADDR, "len": PAGE},
                    gen=gen + 1)
        # and one large mapping unmapped meanwhile (a single bound for every lookup, the longest
        # tombstone, once made this quadratic again)
        m.apply({"event": "mmap", "pid": 1, "hostpid": 100, "ns": 1, "ts": 0, "addr": ADDR - (1 << 30),
                 "len": 2 << 30, "prot": 3}, gen=2 * n + 1)
        m.apply({"event": "munmap", "pid": 1, "hostpid": 100, "ns": 1, "ts": 0, "addr": ADDR - (1 << 30),
                 "len": 1 << 30}, gen=2 * n + 2)
        t = time.perf_counter()
        out = m.add_dirty(100, pages, ts=1)
        took = time.perf_counter() - t
        print(f"{n:7} map/write/unmap cycles: {took:7.3f} s to attribute {sum(e['pages'] for e in out)} pages")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
