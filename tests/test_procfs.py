"""procfs parsing against a fake /proc tree (root as a parameter), plus a few live checks."""

from __future__ import annotations

import os
import time

import pytest

from ckptrace.errors import NoSuchProcess, Unsupported
from ckptrace.image.records import VM_FLAG_BITS, VmaType
from ckptrace.kernel import procfs
from ckptrace.objects import mm

SMAPS = """\
00400000-0041f000 r--p 00000000 fe:00 1234                       /usr/bin/odd name (deleted)
Size:                124 kB
VmFlags: rd mr mw me dw
7f0000000000-7f0000004000 rw-s 00000000 00:01 77                 /dev/zero (deleted)
Size:                 16 kB
VmFlags: rd wr sh mr mw me ms
7f0000004000-7f0000005000 r--p 00000000 00:00 0                  [vvar]
VmFlags: rd mr pf io de dd
7f0000005000-7f0000006000 rw-p 00000000 00:00 0 
VmFlags: rd wr mr mw me ac
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
VmFlags: ex
"""

STATUS = """\
Name:\tck work
Umask:\t0027
State:\tS (sleeping)
Tgid:\t4321
PPid:\t4000
TracerPid:\t0
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
Groups:\t1 2
NSpid:\t4321\t7
NSpgid:\t4300\t3
NSsid:\t4300\t3
SigPnd:\t0000000000000200
ShdPnd:\t0000000000000000
CapEff:\t000001ffffffffff
"""


@pytest.fixture
def fake(tmp_path):
    p = tmp_path / "4321"
    (p / "task" / "4321").mkdir(parents=True)
    (p / "task" / "4322").mkdir()
    (p / "smaps").write_text(SMAPS)
    (p / "status").write_text(STATUS)
    # comm with spaces and a parenthesis: fields are counted after the last ')'
    stat = ["4321", "(a) b)", "S"] + [str(i) for i in range(4, 53)]
    (p / "stat").write_text(" ".join(stat) + "\n")
    (p / "fdinfo").mkdir()
    (p / "fdinfo" / "3").write_text("pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n"
                                    "tfd:        4 events:       19 data:     7f6900000004  pos:0 ino:d6d2 sdev:f\n")
    (p / "fdinfo" / "6").write_text("pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\nclockid: 1\nticks: 2\n"
                                    "settime flags: 01\nit_value: (99, 16899095)\nit_interval: (5, 0)\n")
    (p / "fdinfo" / "7").write_text("pos:\t0\nflags:\t00\nmnt_id:\t17\nino:\t1038\ninotify wd:1 ino:20c391 "
                                    "sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 "
                                    "f_handle:91c320003b784d06\n")
    (tmp_path / "self").mkdir()
    (tmp_path / "notapid").mkdir()
    return str(tmp_path)


def test_maps_reads_what_smaps_does_but_flags(fake):
    """/proc/PID/maps is smaps without the per-mapping lines."""
    import pathlib

    p = pathlib.Path(fake) / "4321"
    (p / "maps").write_text("".join(line + "\n" for line in SMAPS.splitlines()
                                    if "-" in line.split(None, 1)[0] and not line.split(None, 1)[0].endswith(":")))
    fields = lambda m: (m.start, m.end, m.perms, m.offset, m.dev, m.inode, m.path)  # noqa: E731
    assert [fields(m) for m in procfs.maps(4321, fake)] == [fields(m) for m in procfs.smaps(4321, fake)]


def test_smaps(fake):
    maps = procfs.smaps(4321, fake)
    assert [m.path for m in maps] == ["/usr/bin/odd name (deleted)", "/dev/zero (deleted)", "[vvar]", "",
                                      "[vsyscall]"]
    m0, shm, vvar, anon, vsys = maps
    assert (m0.start, m0.end, m0.inode, m0.dev, m0.prot) == (0x400000, 0x41F000, 1234, (0xFE, 0), 1)
    assert shm.shared and shm.vmflags[-1] == "ms"
    assert mm.vm_flags(anon) == VM_FLAG_BITS["rd"] | VM_FLAG_BITS["wr"] | VM_FLAG_BITS["mr"] | \
        VM_FLAG_BITS["mw"] | VM_FLAG_BITS["me"] | VM_FLAG_BITS["ac"]
    assert [mm.vma_type(m) for m in maps] == [VmaType.FILE, VmaType.SHARED_ANON, VmaType.VVAR, VmaType.ANON, None]


def test_check_mapping_refuses_io_and_pfnmap(fake):
    m = procfs.smaps(4321, fake)[3]
    mm.check_mapping(7, 4321, m)  # plain anonymous: fine
    m.vmflags = ["rd", "wr", "io", "pf"]
    with pytest.raises(Unsupported, match="VM_PFNMAP|VM_IO"):
        mm.check_mapping(7, 4321, m)
    m.vmflags = ["rd", "mm"]
    with pytest.raises(Unsupported, match=r"^pid 7 \(host pid 4321\): mapping .* is VM_MIXEDMAP, which cannot be checkpointed$"):
        mm.check_mapping(7, 4321, m)
    m.path = "anon_inode:[io_uring]"
    with pytest.raises(Unsupported, match="VM_MIXEDMAP, which cannot be checkpointed; io_uring is not supported$"):
        mm.check_mapping(7, 4321, m)
    mm.check_mapping(7, 4321, procfs.smaps(4321, fake)[2])  # [vvar] is the kernel's own: not refused


def test_status_and_stat(fake):
    st = procfs.status(4321, root=fake)
    assert st.nspid == [4321, 7] and st.nspgid[-1] == 3 and st.nssid[-1] == 3
    assert st.ppid == 4000 and st.tgid == 4321 and st.tracer == 0 and st.umask == 0o27
    assert st.ints("Groups") == [1, 2] and st.hex("SigPnd") == 0x200 and st.hex("CapEff") == 0x1FFFFFFFFFF
    f = procfs.stat_fields(4321, fake)
    assert f[1] == "4321" and f[2] == "a) b" and f[3] == "S" and f[26] == "26"
    assert procfs.mm_fields(4321, fake)["env_end"] == 51
    assert procfs.tids(4321, fake) == [4321, 4322]
    assert procfs.pids(fake) == [4321]


def test_fdinfo_kinds(fake):
    ep = procfs.fdinfo(4321, 3, fake)
    assert ep.flags == 0o2000002 and ep.ino == 1038
    assert procfs.epoll_targets(ep) == [{"tfd": 4, "events": 0x19, "data": 0x7F6900000004, "ino": 0xD6D2, "sdev": 0xF}]
    tm = procfs.timerfd_state(procfs.fdinfo(4321, 6, fake))
    assert tm == {"clockid": 1, "ticks": 2, "settime_flags": 1, "value_sec": 99, "value_nsec": 16899095,
                  "interval_sec": 5, "interval_nsec": 0}
    (w,) = procfs.inotify_watches(procfs.fdinfo(4321, 7, fake))
    assert (w["wd"], w["ino"], w["sdev"], w["mask"]) == (1, 0x20C391, 0xFE00000, 0x300)


def test_missing_task_and_unreadable_ns(fake):
    with pytest.raises(NoSuchProcess):
        procfs.status(999, root=fake)
    assert procfs.ns_inode(4321, "pid", fake) is None  # no ns link: quietly None
    assert procfs.parse_ns_link("pid:[4026531836]") == 4026531836
    assert procfs.parse_ns_link("garbage") is None




def test_live_self():
    """The parser agrees with the kernel about this very process."""
    pid = os.getpid()
    st = procfs.status(pid)
    assert st.tgid == pid and st.nspid[-1] == pid
    maps = procfs.smaps(pid)
    assert maps and all(m.vmflags for m in maps)
    # Mappings of the executable and libraries do not come and go while the test runs.
    with open(f"/proc/{pid}/maps") as f:
        files = {(ln.split()[0], ln.split()[-1]) for ln in f if "/" in ln}
    assert files == {(f"{m.start:08x}-{m.end:08x}", m.path) for m in maps if "/" in m.path}
    assert procfs.auxv(pid)[-1] == (0, 0)


def test_limits_agree_with_getrlimit():
    """/proc/PID/limits parsed == getrlimit of the same process, for every resource."""
    import resource

    from ckptrace.kernel import procfs

    got = procfs.limits(os.getpid())
    assert len(got) == 16
    for res, (cur, mx) in enumerate(got):
        want = resource.getrlimit(res)
        assert (cur, mx) == tuple(procfs.RLIM_INFINITY if v == resource.RLIM_INFINITY else v for v in want), res


def _stat_line(pid: int, state: str, flags: int, threads: int) -> str:
    # fields 4..52 after "pid (comm) state": ppid ... flags is field 9, num_threads field 20
    rest = ["1", "1", "1", "0", "-1", str(flags)] + ["0"] * 10 + [str(threads)] + ["0"] * 32
    return f"{pid} (a) b) {state} {' '.join(rest)}\n"


@pytest.mark.parametrize("threads, out", [
    ([("S", 0x400100)], False),
    ([("Z", 0x400104)], True),
    ([("X", 0)], True),
    ([("R", 0x400104)], True),                     # do_exit has begun: PF_EXITING, not a zombie yet
    ([("Z", 0x400104), ("S", 0x400040)], False),   # a leader that called pthread_exit: a thread runs on
    ([("Z", 0x400104), ("R", 0x400144)], True),    # and now that thread ends the process
    ([], True),                                    # no thread left to list
])
def test_exiting_reads_every_thread(tmp_path, threads, out):
    task = tmp_path / "77" / "task"
    task.mkdir(parents=True)
    for i, (state, flags) in enumerate(threads):
        (task / str(77 + i)).mkdir()
        (task / str(77 + i) / "stat").write_text(_stat_line(77 + i, state, flags, len(threads)))
    assert procfs.exiting(77, str(tmp_path)) is out
    assert procfs.exiting(78, str(tmp_path)) is True  # gone


def test_exiting_against_live_processes():
    import subprocess
    import sys
    import time

    assert not procfs.exiting(os.getpid())
    z = subprocess.Popen(["true"])
    while procfs.stat_fields(z.pid)[3] != "Z":
        time.sleep(0.01)
    assert procfs.exiting(z.pid)
    z.wait()
    # main thread gone, another thread alive: a live process, whose leader shows as a zombie
    code = ("import ctypes, threading, time\n"
            "threading.Thread(target=time.sleep, args=(30,)).start()\n"
            "ctypes.CDLL(None).pthread_exit(None)\n")
    p = subprocess.Popen([sys.executable, "-c", code])
    try:
        while procfs.stat_fields(p.pid)[3] != "Z":
            time.sleep(0.01)
        assert not procfs.exiting(p.pid)
    finally:
        p.kill()
        p.wait()


def test_holders_finds_the_processes_with_an_inode_open(tmp_path):
    """holders() matches fds by the file they lead to (device and inode), not by the path the
    link shows, skips the pid it is told to, and lets dangling links and unreadable fd
    directories be."""
    target, other = tmp_path / "fifo", tmp_path / "other"
    os.mkfifo(target)
    other.write_text("")
    proc = tmp_path / "proc"
    for pid, links in {"10": ["other", "fifo"], "11": ["other"], "12": ["fifo"], "13": ["gone"]}.items():
        (proc / pid / "fd").mkdir(parents=True)
        for n, name in enumerate(links):
            os.symlink(tmp_path / name, proc / pid / "fd" / str(n))
    (proc / "14").mkdir()  # no fd directory (a zombie's cannot be listed either)
    (proc / "self").mkdir()
    st = os.stat(target)
    assert sorted(procfs.holders(st.st_dev, st.st_ino, str(proc))) == [10, 12]
    assert procfs.holders(st.st_dev, st.st_ino, str(proc), skip=12) == [10]


def test_coredump_filter_and_an_exiting_process(fake):
    """An exiting process's coredump_filter reads as empty (its memory is gone): that is a process
    gone, as every read of one says, not a ValueError that ended the dump in a traceback."""
    from ckptrace.errors import NoSuchProcess

    import pathlib

    f = pathlib.Path(fake) / "4321" / "coredump_filter"
    f.write_text("00000033\n")
    assert procfs.coredump_filter(4321, fake) == 0x33
    f.write_text("")
    with pytest.raises(NoSuchProcess):
        procfs.coredump_filter(4321, fake)


def test_dump_pid_says_why_its_namespace_cannot_be_read(tmp_path):
    """`dump --pid P` names the errno when /proc/P/ns/pid cannot be read, the same way whether
    the process does not exist (ENOENT) or its link is refused or unreadable."""
    import subprocess
    import sys

    from ckptrace.dump import resolve_ns
    from ckptrace.errors import UsageError

    (tmp_path / "5" / "ns").mkdir(parents=True)
    (tmp_path / "5" / "ns" / "pid").write_text("")  # not a link: readlink says EINVAL
    (tmp_path / "6").mkdir()  # the process is there, its ns/ is not (ENOENT)
    (tmp_path / "7" / "ns").mkdir(parents=True)
    (tmp_path / "7" / "ns" / "pid").symlink_to("pid:[x]")
    cases = {5: f"cannot read the pid namespace of process 5 ({tmp_path}/5/ns/pid): EINVAL (Invalid argument)",
             6: f"cannot read the pid namespace of process 6 ({tmp_path}/6/ns/pid): ENOENT (No such file or directory)",
             8: f"no process 8 ({tmp_path}/8/ns/pid): ENOENT (No such file or directory)",
             7: f"cannot read the pid namespace of process 7 ({tmp_path}/7/ns/pid): not a namespace link: 'pid:[x]'"}
    for pid, want in cases.items():
        with pytest.raises(UsageError) as exc:
            resolve_ns(None, pid, str(tmp_path))
        assert str(exc.value) == want
    # pid 1 is our own namespace's init, whose link the kernel may refuse even to root (a
    # container's init, as on this machine): its namespace is ours, which dump then names
    assert resolve_ns(None, 1) == os.stat("/proc/self/ns/pid").st_ino
    if os.geteuid() == 0:  # another user's process: the kernel refuses the link (EACCES)
        other = subprocess.Popen(["sleep", "60"])
        try:
            code = ("import sys\nfrom ckptrace.dump import resolve_ns\ntry:\n    resolve_ns(None, int(sys.argv[1]))\n"
                    "except Exception as e:\n    print(e)")
            p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code,
                                str(other.pid)], capture_output=True, text=True, timeout=60,
                               env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
        finally:
            other.kill()
            other.wait()
        assert p.stdout == (f"cannot read the pid namespace of process {other.pid} (/proc/{other.pid}/ns/pid): "
                            "EACCES (Permission denied)\n"), p


def test_file_holders_finds_fds_and_mappings_of_several_files_in_one_scan(tmp_path):
    """One file held by an fd, another only mapped: each is found held by this process, with
    its own key; a file nobody holds has no holder."""
    import mmap

    from ckptrace.kernel import procfs

    paths = [tmp_path / n for n in ("opened", "mapped", "idle")]
    for p in paths:
        p.write_bytes(b"x" * 4096)
    keys = {(st.st_dev, st.st_ino): p.name for p in paths for st in [p.stat()]}
    held = open(paths[0], "rb")
    with open(paths[1], "r+b") as f:
        m = mmap.mmap(f.fileno(), 4096)  # (the fd closed: only mapped)
    try:
        got = procfs.file_holders(keys)
        by_name = {keys[k]: v for k, v in got.items()}
        assert os.getpid() in by_name["opened"] and os.getpid() in by_name["mapped"], by_name
        assert os.getpid() not in by_name["idle"], by_name
        held.close()
        assert os.getpid() not in procfs.file_holders(keys)[paths[0].stat().st_dev, paths[0].stat().st_ino]
    finally:
        held.close()
        m.close()
    assert procfs.file_holders({}) == {}


@pytest.mark.parametrize("state, stops", [("R (running)", True), ("S (sleeping)", False), ("D (disk sleep)", False)])
def test_a_task_waiting_for_a_cpu_is_waited_for_and_one_asleep_in_the_kernel_refused(tmp_path, monkeypatch, state,
                                                                                     stops):
    """A task interrupted for the freeze stops on its next way out of the kernel. On a saturated
    host a runnable one (state R) may not get a CPU for a second or more: it was refused as one
    that "waits in the kernel" (a dump of a SCHED_IDLE workload beside busy loops failed about
    one time in three). It is waited for now; a sleeping one (S, D: a vfork parent) is still
    refused after STOP_SECONDS. Fake /proc: the task's status and no children."""
    from ckptrace.errors import Unsupported
    from ckptrace.kernel import freeze

    task_dir = tmp_path / "100" / "task" / "100"
    task_dir.mkdir(parents=True)
    (task_dir / "status").write_text(f"Name:\tbusy\nState:\t{state}\nTgid:\t100\nPid:\t100\n")
    (task_dir / "children").write_text("")
    (tmp_path / "100" / "wchan").write_text("0")
    monkeypatch.setattr(freeze, "STOP_SECONDS", 0.05)

    class Late:
        """A tracee that stops only after 0.5 s (ten times STOP_SECONDS here)."""
        stopped = False
        until = time.monotonic() + 0.5

        def wait_stop(self, deadline, **_kw):
            time.sleep(max(0.0, min(deadline, self.until) - time.monotonic()))
            self.stopped = time.monotonic() >= self.until
            return self.stopped

    task = freeze.Task(hostpid=100, hosttid=100, tracee=Late(), nstid=1)
    frz = freeze.Freezer(1, 100, str(tmp_path))
    frz.tasks[100] = task
    if stops:
        frz._wait_stops([task])
        assert task.tracee.stopped
    else:
        with pytest.raises(Unsupported, match="does not stop: it waits in the kernel"):
            frz._wait_stops([task])
