"""Workload for the fd-kind tests: pid 1 of a namespace holding one fd of every kind ckptrace
dumps beyond the basics, plus a PROT_NONE page with data in it. argv[1]: a directory."""

import ctypes
import mmap
import os
import select
import signal
import socket
import struct
import sys
import time

d = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)

ep = select.epoll()
r, w = os.pipe()
os.write(w, b"x" * 3)
ep.register(r, select.EPOLLIN)

tfd = libc.timerfd_create(1, 0)  # CLOCK_MONOTONIC
spec = struct.pack("<qqqq", 5, 0, 100, 0)  # interval 5 s, first expiry in 100 s
libc.timerfd_settime(tfd, 0, spec, None)

mask = struct.pack("<Q", 1 << (signal.SIGUSR1 - 1)).ljust(128, b"\0")
sfd = libc.signalfd(-1, mask, 0)  # glibc passes the mask size itself

ino = libc.inotify_init1(0)
wd = libc.inotify_add_watch(ino, d.encode(), 0x100 | 0x200)  # IN_CREATE | IN_DELETE

master, slave = os.openpty()

mfd = os.memfd_create("ckmem", 0)
os.write(mfd, b"memfd contents")

gone = os.path.join(d, "gone")
delfd = os.open(gone, os.O_RDWR | os.O_CREAT, 0o600)
os.write(delfd, b"deleted but open")
os.unlink(gone)

fifo = os.path.join(d, "fifo")
os.mkfifo(fifo)
ffd = os.open(fifo, os.O_RDWR)
os.write(ffd, b"in the fifo")

ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
ls.bind(b"\0ckptrace-test-" + str(os.getpid()).encode())
ls.listen(3)

m = mmap.mmap(-1, 2 * 4096)
m[:5] = b"guard"
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
libc.mprotect(addr, 4096, 0)  # PROT_NONE, data stays

if len(sys.argv) > 2 and sys.argv[2] == "hugetlb":
    # MAP_HUGETLB | MAP_NORESERVE: a hugetlb VMA that needs no reserved huge pages (never touched).
    huge = mmap.mmap(-1, 2 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40000 | 0x4000)

with open(os.path.join(d, "ready"), "w") as f:
    f.write(f"{addr:x}\n")
while True:
    time.sleep(0.05)
