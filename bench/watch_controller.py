#!/usr/bin/env python3
"""CPU cost of the `watch` controller per event, from a recorded run replayed in a loop.

On a 2-vCPU machine the controller's CPU is what a watched fork/exec loop loses (docs/watch.md,
"Overhead"), so this is the figure to drive down. It records what the kernel side sends during a
fork/exec loop and an mmap/munmap loop inside a namespace (raw event ring records and the drained
written-page masks, in order), then feeds the recording to a fresh `Controller` + `Model` with
`--json` output into /dev/null, several times, and prints the best time per record.

Run as root from the repository: `.venv/bin/python bench/watch_controller.py [--iterations 400]`.
"""

from __future__ import annotations

import argparse
import copy
import os
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from watch import Namespace, build  # noqa: E402  (bench/watch.py: the same loops and namespace)

from ckptrace import watch  # noqa: E402
from ckptrace.kernel import bpfload  # noqa: E402
from ckptrace.watchmodel import Model  # noqa: E402


class Recorder:
    """A live WatchProgram whose records (as the ring held them) and drains are kept, in order,
    for replay."""

    def __init__(self, prog):
        self.prog = prog
        self.items: list[tuple[str, object]] = []
        names = tuple(name for name, _ in prog.event_type._fields_)
        self.pack = struct.Struct(bpfload.struct_format(prog.event_type, names)[0]).pack
        self.live = None

    def on_event(self, e) -> int:
        self.items.append(("rec", self.pack(*e)))
        return self.live(e)

    def drain(self) -> None:
        self.items.append(("drain", self.prog.drain_dirty()))


class ProcView:
    """What the controller reads from /proc (status, maps) while recording, returned again in the
    replay, where those processes are long gone."""

    def __init__(self):
        self.status: dict[int, object] = {}
        self.maps: dict[int, list] = {}
        self.saved = (watch.procfs.status, watch._maps)

    def record(self):
        status, maps = self.saved

        def rec_status(pid, *a, **k):
            self.status[pid] = st = status(pid, *a, **k)
            return st

        def rec_maps(pid):
            self.maps[pid] = m = maps(pid)
            return m

        watch.procfs.status, watch._maps = rec_status, rec_maps

    def replay(self):
        def status(pid, *a, **k):
            if pid not in self.status:
                raise watch.CkptError(f"pid {pid} was not seen")
            return self.status[pid]

        watch.procfs.status, watch._maps = status, lambda pid: self.maps.get(pid, [])

    def restore(self):
        watch.procfs.status, watch._maps = self.saved


class ReplayProgram:
    """Stands in for WatchProgram: the kernel is not touched, drains come from the recording."""

    def __init__(self):
        self.abi = bpfload.abi()
        self.ns_slots: list[int] = []
        self.batches: list = []

    def add_namespace(self, ino):
        return True

    def forget_namespace(self, ino):
        pass

    def track(self, *a):
        pass

    def untrack(self, *a):
        pass

    def drain_dirty(self):
        return self.batches.pop(0) if self.batches else {}

    def read_sent(self, wait_s=0.01, max_s=None):
        return 0  # the recording holds the records in the order the live controller read them


def record(loop: str, n: int, exe: str, view: ProcView) -> tuple[list, Model, int]:
    ns = Namespace()
    view.record()
    try:
        host = bpfload.ns_dev_ino("self")[1]
        with bpfload.WatchProgram(focus_ns=ns.ns) as prog:
            rec = Recorder(prog)
            model = Model()
            ctl = watch.Controller(prog, model, host=host, focus=ns.ns, emit=lambda ev: None)
            ctl.seed_all()
            seeded = copy.deepcopy(model)
            rec.live = ctl.on_record
            prog.open_events(rec.on_event)
            import subprocess
            child = subprocess.Popen(["nsenter", "-t", str(ns.init), "-p", "-m", exe, loop, str(n)],
                                     stdout=subprocess.DEVNULL)
            next_drain = time.monotonic()
            while child.poll() is None:
                prog.poll(40)
                if time.monotonic() >= next_drain:
                    rec.drain()
                    ctl.drain()
                    next_drain = time.monotonic() + watch.DRAIN_SECONDS
            time.sleep(0.3)
            prog.poll(0)
            rec.drain()
            return rec.items, seeded, host
    finally:
        view.restore()
        ns.close()


def replay(items, seeded: Model, host: int, rounds: int, view: ProcView) -> float:
    """Best seconds for one pass over `items`."""
    best = float("inf")
    view.replay()
    for _ in range(rounds):
        prog = ReplayProgram()
        prog.batches = [b for kind, b in items if kind == "drain"]
        with open(os.devnull, "w") as out:
            emit = watch.JsonLines(out)
            ctl = watch.Controller(prog, copy.deepcopy(seeded), host=host, focus=None, emit=emit)
            _, decode = bpfload.record_type(prog.abi.structs["ckpt_event"])
            on_record = ctl.on_record
            drains = 0
            t0 = time.process_time()
            with watch.LoopGc() as collector:  # as the live loop runs the garbage collector
                for kind, item in items:
                    if kind == "rec":
                        on_record(decode(item, 0))  # decoding is part of the controller's cost
                    else:
                        ctl.drain()
                        drains += 1
                        if drains % round(watch.HOUSEKEEP_SECONDS / watch.DRAIN_SECONDS) == 0:
                            collector.tick(time.monotonic())  # the loop's once-a-second housekeeping
            emit.flush()
            dt = time.process_time() - t0
            if ctl.failure is not None:
                raise ctl.failure
        best = min(best, dt)
    view.restore()
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=400, help="fork/execs recorded (mmap loop: 50x)")
    ap.add_argument("--rounds", type=int, default=5, help="replays; the best is printed")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/watch_controller.py: run as root", file=sys.stderr)
        return 1
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)
        for loop, n in (("forkexec", args.iterations), ("mmap", args.iterations * 50)):
            view = ProcView()
            items, seeded, host = record(loop, n, exe, view)
            recs = sum(1 for kind, _ in items if kind == "rec")
            pages = sum(len(v) for kind, b in items if kind == "drain" for v in b.values())
            dt = replay(items, seeded, host, args.rounds, view)
            print(f"{loop:9} {n:7} iterations: {recs} records, {pages} dirty pages; controller "
                  f"{dt * 1e3:8.1f} ms CPU = {dt / n * 1e6:6.1f} us/iteration, {dt / max(recs, 1) * 1e6:5.2f} us/record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
