"""Real workloads in real pid namespaces, made with `unshare -p -f --mount-proc`."""

from __future__ import annotations

import os
import signal
import subprocess
import time


def wait_for(read, done, timeout: float = 15.0, every: float = 0.02):
    """`read()` once `done` holds for what it returned, or what it returned last after `timeout`
    seconds, for the caller's asserts to show: for a state a process reaches in its own time, which
    on a loaded host (CI) can be much later than on an idle one."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(every)


def ns_of(pid: int) -> int:
    link = os.readlink(f"/proc/{pid}/ns/pid")  # "pid:[4026532830]"
    return int(link[5:-1])


def children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except FileNotFoundError:
            pass
    return out


def ns_pids(ns: int) -> list[int]:
    """Host pids of every process whose pid namespace is `ns`."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if ns_of(int(d)) == ns:
                    out.append(int(d))
            except OSError:
                pass
    return sorted(out)


def nspid(hostpid: int) -> int:
    """The pid as seen inside its own (innermost) namespace."""
    with open(f"/proc/{hostpid}/status", errors="surrogateescape") as f:  # (names may be any bytes)
        for line in f:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    raise LookupError(hostpid)


class NsWorkload:
    """`argv` runs as pid 1 of a new pid namespace (with its own /proc, in a mount namespace of
    its own, unless `mount_proc` is false: then it shares ours, and our /proc)."""

    def __init__(self, argv: list[str], *, ready_file: str | None = None, settle: float = 0.0,
                 timeout: float = 10.0, mount_proc: bool = True, **popen):
        self.proc = subprocess.Popen(["unshare", "-p", "-f", *(["--mount-proc"] if mount_proc else []),
                                      "--kill-child", *argv], start_new_session=True, **popen)
        deadline = time.monotonic() + timeout
        self.init = 0
        while time.monotonic() < deadline:
            kids = children(self.proc.pid) if os.path.exists(f"/proc/{self.proc.pid}") else []
            if kids:
                self.init = kids[0]
                break
            time.sleep(0.01)
        if not self.init:
            self.kill()
            raise RuntimeError(f"workload {argv} did not start")
        self.ns = ns_of(self.init)
        if ready_file:
            while not os.path.exists(ready_file):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.kill()
                    raise RuntimeError(f"workload {argv} never wrote {ready_file}")
                time.sleep(0.02)
        if settle:
            time.sleep(settle)

    def pids(self) -> list[int]:
        return ns_pids(self.ns)

    def kill(self) -> None:
        for pid in [self.init] if self.init else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
