"""Dump speed: 1 GiB of filled anonymous memory in a pid namespace, dumped to /dev/null and to a
file on tmpfs, next to a baseline that only copies the same present pages with process_vm_readv
into one reused buffer and writes them to the same place.

    sudo .venv/bin/python bench/dump.py [--mib 1024]

Prints MB/s, frozen time and the dumper's peak RSS for each case. Targets (issue 3): >= 3 GB/s to
/dev/null, >= 1.5 GB/s to tmpfs, within 1.3x of the baseline's time, RSS < 100 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from nsutil import NsWorkload  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def run_measured(argv: list[str]) -> tuple[float, int, bytes]:
    """Wall seconds, peak RSS (KiB) of the child, its stdout."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed")
    return wall, ru.ru_maxrss, out


BASELINE = r'''
import os, re, sys, time, mmap
sys.path.insert(0, sys.argv[3])
from ckptrace.kernel.sys import vm_readv, buffer_address
pid, sink = int(sys.argv[1]), sys.argv[2]
BUF = 16 << 20
buf = mmap.mmap(-1, BUF, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
for o in range(0, BUF, 4096): buf[o] = 0
addr = buffer_address(buf)
table = bytes(0x31 if b & 0xC0 else 0x30 for b in range(256))
out = os.open(sink, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
t0 = time.monotonic(); total = 0
with open(f"/proc/{pid}/maps") as f:
    vmas = [tuple(int(x, 16) for x in l.split()[0].split("-")) for l in f if "rw" in l.split()[1]]
pm = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
for s, e in vmas:
    marks = os.pread(pm, (e - s) // 4096 * 8, s // 4096 * 8)[7::8].translate(table)
    for m in re.finditer(rb"1+", marks):
        a, n = s + m.start() * 4096, (m.end() - m.start()) * 4096
        while n:
            k = min(n, BUF)
            got = vm_readv(pid, addr, [(a, k)])
            os.write(out, memoryview(buf)[:got]); total += got
            a += k; n -= k
print(total, time.monotonic() - t0)
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ckbench-")
    exe = os.path.join(work, "ckwork")
    subprocess.run(["gcc", "-O2", "-pthread", "-o", exe, os.path.join(HERE, "..", "tests", "dumpwork", "ckwork.c")],
                   check=True)
    w = NsWorkload([exe, work, "big", str(args.mib)], ready_file=os.path.join(work, "ready"), timeout=120)
    tmpfs = "/dev/shm" if os.path.isdir("/dev/shm") else work
    try:
        print(f"workload: {args.mib} MiB filled anonymous memory, pidns {w.ns}")
        # Each sink twice: in a VM the first write into never-touched guest memory (a fresh tmpfs
        # file) pays the host's page faults, whichever program writes first; round 2 is warm.
        # Warm-up: touch as much tmpfs as the image will need once, so that neither program pays
        # the VM's first-touch cost in the measured rounds.
        warm = os.path.join(tmpfs, "ckbench.warm")
        with open(warm, "wb") as f:
            chunk = b"\0" * (16 << 20)
            for _ in range(max(1, (args.mib + 64) // 16)):
                f.write(chunk)
        os.unlink(warm)
        for rnd, sink in [(r, s) for s in ("/dev/null", os.path.join(tmpfs, "ckbench.img")) for r in (1, 2)]:
            wall, rss, out = run_measured([sys.executable, "-m", "ckptrace", "dump", "--pidns", str(w.ns),
                                           "-o", sink, "--json", "--quiet"])
            s = json.loads(out)
            size = s["bytes"]
            bw, brss, bout = run_measured([sys.executable, "-c", BASELINE, str(w.init), sink,
                                           os.path.join(HERE, "..")])
            btotal, bcopy = bout.split()
            print(f"to {sink} (round {rnd}):")
            print(f"  dump     {size / 1e6:8.0f} MB in {wall:6.3f} s wall  = {size / 1e6 / wall:6.0f} MB/s; "
                  f"frozen {s['frozen_ms']:.0f} ms ({size / 1e6 / (s['frozen_ms'] / 1000):.0f} MB/s while frozen); "
                  f"peak RSS {rss / 1024:.0f} MiB")
            print(f"  baseline {int(btotal) / 1e6:8.0f} MB copy {float(bcopy):6.3f} s = "
                  f"{int(btotal) / 1e6 / float(bcopy):6.0f} MB/s; peak RSS {brss / 1024:.0f} MiB")
            print(f"  frozen time / baseline copy time: {s['frozen_ms'] / 1000 / float(bcopy):.2f}x")
            if sink != "/dev/null":
                os.unlink(sink)
    finally:
        w.kill()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
