"""`ckptrace demo`: the main job on a built-in example. Starts ckptrace.sample_workload as pid 1
of a new pid namespace, migrates it with `ckptrace dump --kill`, shows the image summary, restores
it with `ckptrace restore` and shows that it carries on, as a user would by hand (each step is the
real command, run as a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .errors import CkptError, HostUnsupported, UsageError


def _run(argv: list[str]) -> None:
    print("$ " + " ".join(argv), flush=True)
    p = subprocess.run(argv)
    if p.returncode != 0:
        raise CkptError(f"`{' '.join(argv)}` failed with status {p.returncode}")


def _init_of(unshare_pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{unshare_pid}/task/{unshare_pid}/children") as f:
                kids = f.read().split()
            if kids:
                return int(kids[0])
        except FileNotFoundError:
            break
        time.sleep(0.02)
    raise CkptError("the sample workload did not start")


def _last_line(path: str) -> str:
    with open(path, "rb") as f:
        lines = f.read().decode(errors="replace").splitlines()
    return lines[-1] if lines else ""


def main(args) -> int:
    if os.geteuid() != 0:
        raise UsageError("demo needs root (it creates a pid namespace and dumps it): run with sudo")
    if shutil.which("unshare") is None:
        raise HostUnsupported("unshare(1) is missing: install util-linux")
    workdir = tempfile.mkdtemp(prefix="ckptrace-demo-")
    image = args.output or os.path.join(workdir, "demo.img")
    me = [sys.executable, "-m", "ckptrace"]
    # unshare's and the workload's stderr are kept aside, shown only if the workload fails to
    # start: unshare --kill-child says "sigprocmask unblock failed" when the dump kills its
    # child, which every demo does
    errors = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(["unshare", "-p", "-f", "--mount-proc", "--kill-child",
                             sys.executable, "-m", "ckptrace.sample_workload", workdir],
                            start_new_session=True, stderr=errors)
    init = 0
    try:
        init = _init_of(proc.pid)
        deadline = time.monotonic() + 15
        while not os.path.exists(os.path.join(workdir, "ready")):
            if time.monotonic() > deadline or proc.poll() is not None:
                errors.seek(0)
                said = " ".join(errors.read().split())
                raise CkptError("the sample workload did not get ready" + (f": {said}" if said else ""))
            time.sleep(0.05)
        time.sleep(1.5)  # let it run: the child writes into the pipe every second
        ns = os.readlink(f"/proc/{init}/ns/pid")
        print(f"sample workload: init is host pid {init}, namespace {ns}", flush=True)
        _run(me + ["ls"])
        log = os.path.join(workdir, "workload.log")
        # --kill: the namespace is migrated, not copied; its log must go on from the image's point.
        _run(me + ["dump", "--pidns", ns, "--kill", "-o", image])
        before = _last_line(log)
        _run(me + ["show", image])
        print("$ " + " ".join(me + ["restore", "--json", image]), flush=True)
        p = subprocess.run(me + ["restore", "--json", image], capture_output=True, text=True)
        if p.returncode != 0:
            raise CkptError(f"restore failed: {p.stderr.strip()}")
        restored = json.loads(p.stdout)
        init = restored["init_pid"]
        print(p.stdout.strip())
        time.sleep(1.0)
        print(f"\nthe log's last line when dumped: {before!r}; a second after restore: {_last_line(log)!r}")
        _run(me + ["ls"])
        mode = oct(os.stat(image).st_mode & 0o777)
        if args.keep or args.output:
            print(f"\nimage kept: {image} (mode {mode})")
        else:
            print(f"\nimage was {image} (mode {mode}); removed: keep one with -o FILE or --keep")
        if args.keep:
            print(f"restored workload left running: kill -9 {init}; its directory: {workdir} (remove it after)")
        return 0
    finally:
        if not args.keep:
            if init:
                try:
                    os.kill(init, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                # The restored init is no child of ours: wait for its new parent to reap it.
                deadline = time.monotonic() + 5
                while os.path.exists(f"/proc/{init}") and time.monotonic() < deadline:
                    time.sleep(0.02)
            proc.kill()
            proc.wait()
            errors.close()
            # the workload's directory (its log, its ready file; the image unless -o put it
            # elsewhere) goes too: with -o it used to stay behind, one per run
            shutil.rmtree(workdir, ignore_errors=True)
