"""The built-in example workload `ckptrace demo` runs as pid 1 of a new pid namespace:
a parent with a worker thread and a child process, a log file it keeps appending to, a pipe from
child to parent with bytes left in it, and a counter in memory. Deliberately plain Python so it
runs anywhere ckptrace does."""

from __future__ import annotations

import os
import sys
import threading
import time


def main(workdir: str) -> None:
    log = open(os.path.join(workdir, "workload.log"), "a", buffering=1)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        n = 0
        while True:
            n += 1
            if n % 50 == 0:
                os.write(w, b"tick\n")  # the parent never drains it all: bytes stay buffered
            time.sleep(0.02)
    os.close(w)
    state = {"count": 0}

    def worker():
        while True:
            state["count"] += 1
            time.sleep(0.01)

    threading.Thread(target=worker, daemon=True, name="worker").start()
    with open(os.path.join(workdir, "ready"), "w") as f:
        f.write(f"{os.getpid()}\n")
    while True:
        log.write(f"count {state['count']}\n")
        time.sleep(0.1)


if __name__ == "__main__":
    main(sys.argv[1])
