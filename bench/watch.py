#!/usr/bin/env python3
"""Overhead of `ckptrace watch` on a watched namespace (issue 6), printed as ratios.

Three loops (small C programs compiled here, so the loop itself is not Python's cost) run inside
one pid namespace, each timed with and without `watch --pidns N` running, alternating the order
every round; the ratio is median(with) / median(without):
  faults     mmap 64 MiB, write every page, munmap  (every step a write fault)   target <= 1.25
  mmap       mmap + munmap of 4 pages                (two structural events)     target <= 1.10
  forkexec   fork + exec /bin/true + wait                                        target <= 1.10
`faults` is also timed against `watch --no-faults`, which must cost the fault path nothing, and
`mmap` and `forkexec` against `watch --priority normal` (the controller never at SCHED_IDLE; the
default, auto, runs it at SCHED_IDLE while it keeps up).
Then the controller's throughput: the loops run flat out (and the mmap loop also paced at
100 k events/s) while watch --json counts what it got, and the loss counters it reports.

Run as root from the repository: `.venv/bin/python bench/watch.py [--rounds 5]`; `--scale 10`
runs each loop ten times as long and `--settle 1` starts timing a second after watch is up.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, ".venv", "bin", "python")
if not os.path.exists(PY):
    PY = sys.executable

C_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

int main(int argc, char **argv) {
    const char *what = argv[1];
    long n = atol(argv[2]);
    double t0 = now();
    long events = 0;
    if (!strcmp(what, "faults")) {
        size_t len = 64UL << 20;
        for (long r = 0; r < n; r++) {
            char *p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            for (size_t o = 0; o < len; o += 4096) p[o] = 1;
            munmap(p, len);
            events += len / 4096;
        }
    } else if (!strcmp(what, "mmap")) {
        for (long r = 0; r < n; r++) {
            void *p = mmap(0, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            munmap(p, 4 * 4096);
        }
        events = 2 * n;
    } else if (!strcmp(what, "paced")) {
        /* mmap+munmap at a fixed rate: argv[3] events per second (two per iteration), spinning
         * between iterations, for n iterations */
        double interval = 2.0 / atof(argv[3]);
        for (long r = 0; r < n; r++) {
            while (now() - t0 < r * interval)
                ;
            void *p = mmap(0, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            munmap(p, 4 * 4096);
        }
        events = 2 * n;
    } else if (!strcmp(what, "forkexec")) {
        for (long r = 0; r < n; r++) {
            pid_t c = fork();
            if (c == 0) { execl("/bin/true", "true", (char *)0); _exit(127); }
            waitpid(c, 0, 0);
        }
        events = 3 * n;
    }
    double dt = now() - t0;
    printf("%.6f %ld\n", dt, events);
    return 0;
}
"""

LOOPS = {"faults": 8, "mmap": 100_000, "forkexec": 400}


def build(tmp: str) -> str:
    src = os.path.join(tmp, "loops.c")
    exe = os.path.join(tmp, "loops")
    with open(src, "w") as f:
        f.write(C_SOURCE)
    subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    return exe


class Namespace:
    """A pid namespace whose init sleeps; programs run in it with nsenter."""

    def __init__(self):
        self.proc = subprocess.Popen(["unshare", "-p", "-f", "--mount-proc", "--kill-child", "sleep", "infinity"],
                                     start_new_session=True)
        for _ in range(500):
            try:
                with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                    kids = f.read().split()
            except OSError:
                kids = []
            if kids:
                self.init = int(kids[0])
                self.ns = os.stat(f"/proc/{self.init}/ns/pid").st_ino
                return
            time.sleep(0.01)
        raise SystemExit("bench: could not start a pid namespace")

    def run(self, argv: list[str]) -> tuple[float, int]:
        out = subprocess.run(["nsenter", "-t", str(self.init), "-p", "-m", *argv],
                             capture_output=True, text=True, check=True).stdout
        dt, events = out.split()
        return float(dt), int(events)

    def close(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Watch:
    def __init__(self, ns: int, *extra: str):
        self.out = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([PY, "-m", "ckptrace", "watch", "--json", "--pidns", str(ns), *extra],
                                     cwd=ROOT, stdout=self.out, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        if "watching" not in line:
            raise SystemExit(f"bench: watch did not start: {line}{self.proc.stderr.read()}")

    def stop(self) -> dict:
        progs = _our_prog_stats()  # before SIGTERM: the programs go away with the process
        self.proc.send_signal(signal.SIGTERM)
        err = self.proc.communicate(timeout=60)[1]
        self.out.seek(0)
        counts: dict[str, int] = {}
        dirty_pages = 0
        lost = {}
        for line in self.out:
            e = json.loads(line)
            counts[e["event"]] = counts.get(e["event"], 0) + 1
            if e["event"] == "dirty":
                dirty_pages += e["pages"]
            if e["event"] == "lost":
                lost = {k: v for k, v in e.items() if k not in ("event", "pid", "hostpid", "ns", "ts")}
        return {"counts": counts, "dirty_pages": dirty_pages, "lost": lost, "stderr": err.strip(), "progs": progs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--loops", default="faults,mmap,forkexec",
                    help="comma-separated subset of the timed loops (default: all three)")
    ap.add_argument("--no-throughput", action="store_true", help="skip the controller throughput runs")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every timed loop's iteration count (longer runs, less noise)")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds to wait after watch starts before timing (steady state, not start-up)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/watch.py: run as root", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)
        ns = Namespace()
        try:
            print(f"pid namespace {ns.ns}; {args.rounds} rounds, order alternating each round")
            results: dict[tuple[str, str], list[float]] = {}
            # each case is timed against its own bare runs, interleaved with it
            cases = [("faults", ()), ("faults", ("--no-faults",)), ("mmap", ()), ("mmap", ("--priority", "normal")),
                     ("forkexec", ()), ("forkexec", ("--priority", "normal"))]
            cases = [c for c in cases if c[0] in args.loops.split(",")]
            for r in range(args.rounds):
                for case in cases:
                    loop, extra = case
                    order = [None, extra] if r % 2 == 0 else [extra, None]
                    for which in order:
                        w = Watch(ns.ns, *which) if which is not None else None
                        time.sleep(args.settle)
                        try:
                            dt, _ = ns.run([exe, loop, str(int(LOOPS[loop] * args.scale))])
                        finally:
                            if w is not None:
                                w.stop()
                        results.setdefault((case, which is not None), []).append(dt)
            print(f"{'loop':10} {'watch mode':24} {'bare s':>9} {'watched s':>10} {'ratio':>7} {'target':>7}")
            targets = {"faults": 1.25, "mmap": 1.10, "forkexec": 1.10}
            for case in cases:
                loop, extra = case
                mode = " ".join(("watch", *extra))
                bare = statistics.median(results[(case, False)])
                watched = statistics.median(results[(case, True)])
                target = 1.0 if "--no-faults" in extra else targets[loop]
                print(f"{loop:10} {mode:24} {bare:9.4f} {watched:10.4f} {watched / bare:7.3f} {target:7.2f}")

            if args.no_throughput:
                return 0
            print("\ncontroller throughput (loops flat out, watch --json counting):")
            previous = _set_bpf_stats("1")
            progs: dict[str, tuple[int, int]] = {}
            try:
                for loop, n, extra in (("faults", 16, []), ("mmap", 300_000, []), ("paced", 150_000, ["100000"])):
                    w = Watch(ns.ns)
                    try:
                        dt, produced = ns.run([exe, loop, str(n), *extra])
                    finally:
                        time.sleep(1.5)  # let the last drain happen
                        got = w.stop()
                    for name, (cnt, t) in got["progs"].items():
                        c0, t0 = progs.get(name, (0, 0))
                        progs[name] = (c0 + cnt, t0 + t)
                    if loop == "faults":
                        # Each round maps the same 64 MiB again, so a page written in several rounds
                        # between two drains is one dirty page: expect >= 16384, <= produced.
                        print(f"  write faults: {produced / dt / 1e6:.2f} M/s produced, {got['dirty_pages']} "
                              f"pages reported dirty (>= {64 << 8} distinct, repeats within a drain merge), "
                              f"lost {got['lost'] or 'none'}")
                    else:
                        seen = got["counts"].get("mmap", 0) + got["counts"].get("munmap", 0)
                        what = "flat out" if loop == "mmap" else "paced"
                        print(f"  structural, {what}: {produced / dt / 1e3:.0f} k events/s produced, {seen} of "
                              f"{produced} reported, lost {got['lost'] or 'none'}")
            finally:
                if previous is not None:
                    _set_bpf_stats(previous)
            if progs:
                print("\nBPF run time per program run (kernel.bpf_stats_enabled, throughput runs):")
                for name, (cnt, t) in sorted(progs.items(), key=lambda kv: -kv[1][0]):
                    if cnt:
                        print(f"  {name:16} {cnt:>9} runs {t / cnt:7.0f} ns")
        finally:
            ns.close()
    return 0


def _set_bpf_stats(value: str) -> str | None:
    """Set kernel.bpf_stats_enabled; returns the previous value (None if unavailable)."""
    path = "/proc/sys/kernel/bpf_stats_enabled"
    try:
        with open(path) as f:
            old = f.read().strip()
        with open(path, "w") as f:
            f.write(value)
        return old
    except OSError:
        return None


def _our_prog_stats() -> dict[str, tuple[int, int]]:
    """{program name: (run count, total run ns)} of our loaded programs, via bpftool."""
    try:
        out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    stats: dict[str, tuple[int, int]] = {}
    for p in json.loads(out or "[]"):
        name = p.get("name", "")
        if name.startswith("ckpt_") and "run_cnt" in p:
            c0, t0 = stats.get(name, (0, 0))
            stats[name] = (c0 + p["run_cnt"], t0 + p["run_time_ns"])
    return stats


if __name__ == "__main__":
    sys.exit(main())
