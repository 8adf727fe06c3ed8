"""Restore speed: a process with 1 GiB of filled anonymous memory is dumped to tmpfs with
`dump --kill`, then restored from there; prints both times and their ratio.

    sudo .venv/bin/python bench/restore.py [--mib 1024]

Target (issue 4): restore within 2x of the dump time of the same image.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

from nsutil import NsWorkload  # noqa: E402


def timed(argv: list[str]) -> tuple[float, dict]:
    t0 = time.monotonic()
    p = subprocess.run(argv, cwd=REPO, capture_output=True)
    wall = time.monotonic() - t0
    if p.returncode:
        raise SystemExit(f"{argv[3]} failed: {p.stderr.decode().strip()}")
    return wall, json.loads(p.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--image", default="/dev/shm/ckptrace-restore-bench.img")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ckrestore-bench-")
    exe = os.path.join(work, "bigmem")
    subprocess.run(["gcc", "-O2", "-o", exe, os.path.join(REPO, "tests", "workloads", "bigmem.c")], check=True)
    w = NsWorkload([exe, work, str(args.mib)], ready_file=os.path.join(work, "ready"), timeout=120,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    py = sys.executable
    init = 0
    try:
        d_wall, d = timed([py, "-m", "ckptrace", "dump", "--pidns", str(w.ns), "--kill", "-q", "--json",
                           "-o", args.image])
        size = os.path.getsize(args.image)
        r_wall, r = timed([py, "-m", "ckptrace", "restore", "--json", args.image])
        init = r["init_pid"]
        time.sleep(0.3)
        with open(os.path.join(work, "big.log")) as f:
            sums = {line.split()[1] for line in f if line.strip()}
        print(f"image: {size / (1 << 20):.0f} MiB on {os.path.dirname(args.image)}")
        print(f"dump:    {d['frozen_ms']:8.1f} ms frozen, {d_wall * 1000:8.1f} ms wall (CLI)")
        print(f"restore: {r['seconds'] * 1000:8.1f} ms in restore(), {r_wall * 1000:8.1f} ms wall (CLI), "
              f"{r['bytes_restored'] / r['seconds'] / 1e9:.2f} GB/s")
        print(f"restore/dump: {r['seconds'] * 1000 / d['frozen_ms']:.2f}x (restore() vs frozen time), "
              f"{r_wall / d_wall:.2f}x (wall)")
        print(f"workload after restore: {'checksum unchanged' if len(sums) == 1 else 'CHECKSUM CHANGED'}")
    finally:
        if init:
            os.kill(init, signal.SIGKILL)
        w.kill()
        for p in (args.image,):
            if os.path.exists(p):
                os.unlink(p)


if __name__ == "__main__":
    main()
