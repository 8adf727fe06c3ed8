"""`ckptrace doctor`: what this host supports, one line per facility.

Each check is a small function returning a Check; `run_checks` is pure data so tests can compare
it with what they probe themselves. A required check failing (something dump, restore or watch
needs) makes the command exit 1; the cgroup freezer, uffd-wp and soft-dirty are reported for
information: ckptrace holds tasks with ptrace and tracks dirty pages with BPF.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
from dataclasses import asdict, dataclass


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


def check_root() -> Check:
    uid = os.geteuid()
    return Check("root", uid == 0, "running as root" if uid == 0 else f"euid {uid}: dump, restore and watch need root")


def check_bcc() -> Check:
    try:
        import bcc  # noqa: F401  (the distro's python3-bpfcc)
    except (ImportError, OSError) as exc:  # OSError: the module is there but libbcc.so is not
        return Check("bcc", False, f"bcc not importable ({exc.__class__.__name__}: {exc}); "
                                   "install python3-bpfcc (scripts/setup.sh does)")
    return Check("bcc", True, f"bcc importable from {os.path.dirname(bcc.__file__)}")


def check_headers(release: str | None = None) -> Check:
    release = release or platform.release()
    build = f"/lib/modules/{release}/build"
    if os.path.exists(os.path.join(build, "include")):
        real = os.path.realpath(build)
        note = "" if release in real else " (another version's headers: fine for tracepoint-only BPF)"
        return Check("kernel headers", True, f"{build} -> {real}{note}")
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return Check("kernel headers", False, "only /sys/kernel/kheaders.tar.xz: run scripts/setup.sh to unpack it")
    return Check("kernel headers", False, f"none at {build}: run scripts/setup.sh (watch compiles BPF with them)")


TRACEPOINTS = ("sched/sched_process_fork", "sched/sched_process_exec", "sched/sched_process_exit",
               "task/task_newtask", "syscalls/sys_enter_mmap", "syscalls/sys_enter_munmap",
               "syscalls/sys_enter_mprotect", "syscalls/sys_enter_mremap", "syscalls/sys_enter_brk",
               "exceptions/page_fault_user")


def tracefs_root() -> str | None:
    for base in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.isdir(os.path.join(base, "events")):
            return base
    return None


def _unreadable_tracefs() -> str | None:
    """A tracefs mount we may not look into (mode 0700: only root), if there is one."""
    for base in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.ismount(base) and not os.access(base, os.R_OK | os.X_OK):
            return base
    return None


def check_tracepoints() -> Check:
    base = tracefs_root()
    if base is None:
        hidden = _unreadable_tracefs()
        if hidden is not None:
            return Check("tracepoints", False, f"{hidden} is mounted but only root may read it: run as root to check")
        return Check("tracepoints", False, "tracefs not mounted (mount -t tracefs tracefs /sys/kernel/tracing)")
    missing = [t for t in TRACEPOINTS if not os.path.isdir(os.path.join(base, "events", t))]
    if missing:
        return Check("tracepoints", False, f"missing in {base}: {', '.join(missing)}")
    return Check("tracepoints", True, f"{len(TRACEPOINTS)} needed tracepoints present in {base}")


def check_ns_pid_helper() -> Check:
    """bpf_get_ns_current_pid_tgid: probe by loading a tiny program with bcc."""
    try:
        from bcc import BPF
    except (ImportError, OSError):
        return Check("bpf_get_ns_current_pid_tgid", False, "cannot probe without bcc")
    src = r"""
    int probe(void *ctx) {
        struct bpf_pidns_info ns = {};
        bpf_get_ns_current_pid_tgid(0, 0, &ns, sizeof(ns));
        return 0;
    }"""
    try:
        b = BPF(text=src)
        b.load_func("probe", BPF.TRACEPOINT)
        b.cleanup()
    except Exception as exc:  # bcc reports compile and verifier failures as plain Exception
        return Check("bpf_get_ns_current_pid_tgid", False, f"helper not usable: {exc}")
    return Check("bpf_get_ns_current_pid_tgid", True, "helper loads in a tracepoint program")


def check_ptrace() -> Check:
    from .errors import CkptError
    from .kernel.ptrace import xstate_size

    try:
        size = xstate_size()
    except (CkptError, OSError) as exc:
        return Check("ptrace", False, f"PTRACE_SEIZE/GETREGSET failed: {exc}")
    return Check("ptrace", True, f"seize/interrupt/regsets work; XSAVE area {size} bytes")


def check_freezer() -> Check:
    v1 = os.path.exists("/sys/fs/cgroup/freezer/freezer.state") or os.path.isdir("/sys/fs/cgroup/freezer")
    v2 = any(os.path.exists(os.path.join(p, "cgroup.freeze")) or os.path.exists(os.path.join(p, "cgroup.controllers"))
             for p in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"))
    parts = [f"v1 {'yes' if v1 else 'no'}", f"v2 {'yes' if v2 else 'no'}"]
    return Check("cgroup freezer", v1 or v2, ", ".join(parts) + " (dump holds tasks with ptrace; the freezer is optional)",
                 required=False)


def check_uffd_wp() -> Check:
    """userfaultfd with WP_ASYNC and the PAGEMAP_SCAN ioctl: exact dirty tracking without soft-dirty."""
    import fcntl
    import struct

    from .kernel import pagemap
    from .kernel.sys import libc
    from .kernel.sysno import SYS_userfaultfd

    fd = libc.syscall(SYS_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK | 1)  # UFFD_USER_MODE_ONLY
    if fd < 0:
        return Check("userfaultfd-wp / PAGEMAP_SCAN", False, f"userfaultfd: errno {ctypes.get_errno()}", required=False)
    try:
        api = bytearray(struct.pack("<QQQ", 0xAA, (1 << 15) | (1 << 13), 0))
        try:
            fcntl.ioctl(fd, 0xC018AA3F, api)
        except OSError as exc:
            return Check("userfaultfd-wp / PAGEMAP_SCAN", False, f"UFFDIO_API WP_ASYNC refused: {exc.strerror}",
                         required=False)
    finally:
        os.close(fd)
    pm = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        if not pagemap.scan_supported(pm):
            return Check("userfaultfd-wp / PAGEMAP_SCAN", False, "PAGEMAP_SCAN ioctl missing", required=False)
    finally:
        os.close(pm)
    return Check("userfaultfd-wp / PAGEMAP_SCAN", True, "UFFD WP_ASYNC and PAGEMAP_SCAN available", required=False)


def check_soft_dirty() -> Check:
    """Soft-dirty shows as the 'sd' VmFlag on every VMA when CONFIG_MEM_SOFT_DIRTY is built."""
    try:
        with open("/proc/self/smaps") as f:
            has = any(line.startswith("VmFlags:") and " sd" in line for line in f)
    except OSError:
        has = False
    return Check("soft-dirty", has, "available" if has else "not built (CONFIG_MEM_SOFT_DIRTY off): "
                 "dirty tracking uses BPF write faults / uffd-wp instead", required=False)


def check_pidns() -> Check:
    try:
        os.readlink("/proc/self/ns/pid")
    except OSError as exc:
        return Check("pid namespaces", False, f"/proc/self/ns/pid unreadable: {exc.strerror}")
    from .kernel.sysno import SYS_clone3  # noqa: F401  (clone3 with set_tid is what restore uses)

    return Check("pid namespaces", True, "/proc/PID/ns/pid readable")


def run_checks() -> list[Check]:
    checks = [check_root(), check_pidns(), check_bcc(), check_headers(), check_tracepoints()]
    if checks[0].ok:
        checks.append(check_ptrace())
        checks.append(check_ns_pid_helper() if checks[2].ok and checks[3].ok else
                      Check("bpf_get_ns_current_pid_tgid", False, "needs bcc and kernel headers"))
    else:  # said, not left out: what could not be checked is not known to work
        checks += [Check("ptrace", False, "not checked: needs root"),
                   Check("bpf_get_ns_current_pid_tgid", False, "not checked: needs root")]
    checks += [check_freezer(), check_uffd_wp(), check_soft_dirty()]
    return checks


def main(args) -> int:
    checks = run_checks()
    failed = [c for c in checks if c.required and not c.ok]
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}))
    else:
        for c in checks:
            mark = "ok  " if c.ok else ("FAIL" if c.required else "no  ")
            print(f"{mark} {c.name:<30} {c.detail}")
        print("all required facilities present" if not failed else
              f"missing required: {', '.join(c.name for c in failed)}")
    return 1 if failed else 0
