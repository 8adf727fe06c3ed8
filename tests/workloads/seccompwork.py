"""Restore test workload: no_new_privs and two stacked seccomp filters, then a loop that logs what
the filtered calls answer. argv[1] = directory (ready file, log).

Filter 1 (flags 0): uname(2) fails with EPERM. Filter 2 (SECCOMP_FILTER_FLAG_LOG): getcwd(2)
fails with ENOTTY. A thread started after both are installed inherits them and logs too.
"""

import ctypes
import os
import struct
import sys
import threading
import time

SYS_seccomp, SYS_uname, SYS_getcwd = 317, 63, 79
PR_SET_NO_NEW_PRIVS, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_LOG = 38, 1, 2
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
libc = ctypes.CDLL(None, use_errno=True)


def program(nr: int, err: int) -> bytes:
    """ld [nr]; jeq nr ? next : allow; ret ERRNO(err); ret ALLOW (struct sock_filter[4])."""
    ins = struct.Struct("<HBBI")
    return (ins.pack(0x20, 0, 0, 0) + ins.pack(0x15, 0, 1, nr)
            + ins.pack(0x06, 0, 0, RET_ERRNO | err) + ins.pack(0x06, 0, 0, RET_ALLOW))


def install(prog: bytes, flags: int) -> None:
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("<H6xQ", len(prog) // 8, ctypes.addressof(buf))
    fbuf = ctypes.create_string_buffer(fprog, len(fprog))
    if libc.syscall(ctypes.c_long(SYS_seccomp), ctypes.c_long(SECCOMP_SET_MODE_FILTER), ctypes.c_long(flags),
                    ctypes.c_void_p(ctypes.addressof(fbuf))) != 0:
        raise OSError(ctypes.get_errno(), "seccomp")


def probe(fn) -> int:
    try:
        fn()
        return 0
    except OSError as exc:
        return exc.errno


def loop(who: str, log) -> None:
    n = 0
    while True:
        n += 1
        log.write(f"{who} {n} uname={probe(os.uname)} getcwd={probe(os.getcwd)}\n")
        log.flush()
        time.sleep(0.05)


def main() -> None:
    d = sys.argv[1]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")
    install(program(SYS_uname, 1), 0)
    install(program(SYS_getcwd, 25), SECCOMP_FILTER_FLAG_LOG)
    log = open(os.path.join(d, "seccomp.log"), "a", buffering=1)
    threading.Thread(target=loop, args=("thread", log), daemon=True).start()
    open(os.path.join(d, "ready"), "w").close()
    loop("main", log)


if __name__ == "__main__":
    main()
