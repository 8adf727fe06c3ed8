"""Restore's pure decisions, without processes: syscall-restart fix-up, vdso layout checks, the
open mode of mapped files, and refusal of a synthetic image before anything is created."""

from __future__ import annotations

import io
import os
import re
import signal
import time

import pytest

import imagegen
from ckptrace.image.reader import Mm, Vma, read_image
from ckptrace.image.records import REG_NAMES, VM_SHARED, VM_WRITE, VmaType
from ckptrace.restore import fix_restart
from ckptrace.restorer.files import check_files, vma_open_mode
from ckptrace.restorer.memory import check_layout

NEG = 1 << 64


def regs(**kw) -> dict:
    r = {n: 0 for n in REG_NAMES}
    r.update(kw)
    return r


def test_restart_block_becomes_a_plain_restart():
    out = fix_restart(regs(orig_rax=230, rax=NEG - 516, rip=0x1002))
    assert out[REG_NAMES.index("rax")] == NEG - 513
    assert out[REG_NAMES.index("orig_rax")] == 230
    assert out[REG_NAMES.index("rip")] == 0x1002  # the kernel rewinds it, not us


@pytest.mark.parametrize("code, nr, rax", [
    (b"\xb8\xe6\x00\x00\x00\x0f\x05", 230, NEG - 513),  # glibc's clock_nanosleep: re-run it
    (b"\xb8\xca\x00\x00\x00\x0f\x05", 202, NEG - 513),  # a futex wait
    (b"\xb8\x00\x00\x00\x00\x0f\x05", 219, NEG - 4),    # read(): not a restart-block call
    (b"\x48\x89\xc8\x90\x90\x0f\x05", 219, NEG - 4),    # no mov $NR, %eax there: EINTR
    (None, 219, NEG - 4),                                       # unreadable
])
def test_a_restarted_restart_syscall_reruns_the_call_its_wrapper_made(code, nr, rax):
    """Stopped a second time in a sleep (inside restart_syscall, 219): the call comes from the
    wrapper's `mov $NR, %eax; syscall` before rip, else the task gets EINTR."""
    def read(addr, n):
        assert (addr, n) == (0x1002 - 7, 7)
        if code is None:
            raise OSError(5, "EIO")
        return code

    out = fix_restart(regs(orig_rax=219, rax=NEG - 516, rip=0x1002), read)
    assert (out[REG_NAMES.index("orig_rax")], out[REG_NAMES.index("rax")]) == (nr, rax)


@pytest.mark.parametrize("orig", [230, 219])
def test_a_restart_block_is_left_for_a_handler_to_make_eintr(orig):
    """A thread that takes a handled signal first once let go: the kernel turns
    -ERESTART_RESTARTBLOCK into -EINTR as it delivers the handler, as it would have."""
    out = fix_restart(regs(orig_rax=orig, rax=NEG - 516, rip=0x1002), None, handler_first=True)
    assert (out[REG_NAMES.index("orig_rax")], out[REG_NAMES.index("rax")]) == (orig, NEG - 516)


@pytest.mark.parametrize("orig,rax", [(NEG - 1, NEG - 516), (7, NEG - 512), (0, 5)])
def test_other_states_are_left_alone(orig, rax):
    out = fix_restart(regs(orig_rax=orig, rax=rax))
    assert out[REG_NAMES.index("rax")] == rax


def special(*spec) -> Mm:
    mm = Mm(1)
    for start, size, t in spec:
        mm.vmas.append(Vma(dict(vma_type=t, vm_start=start, vm_end=start + size, vm_flags=1, vma_objref=0)))
    return mm


OURS = [(0x7000_0000_0000, 0x7000_0000_4000, "[vvar]"), (0x7000_0000_4000, 0x7000_0000_6000, "[vvar_vclock]"),
        (0x7000_0000_6000, 0x7000_0000_8000, "[vdso]")]


class _Img:
    def __init__(self, mm):
        self.objects = {1: mm}


def test_vdso_layout_like_ours_is_accepted_anywhere():
    mm = special((0x5000_0000, 0x4000, VmaType.VVAR), (0x5000_4000, 0x2000, VmaType.VVAR),
                 (0x5000_6000, 0x2000, VmaType.VDSO))
    assert check_layout(_Img(mm), OURS) == []


def test_vdso_of_another_size_is_refused():
    mm = special((0x5000_0000, 0x4000, VmaType.VVAR), (0x5000_4000, 0x2000, VmaType.VVAR),
                 (0x5000_6000, 0x3000, VmaType.VDSO))
    assert "differs from this kernel's" in check_layout(_Img(mm), OURS)[0]


def test_vdso_at_another_distance_from_vvar_is_refused():
    mm = special((0x5000_0000, 0x4000, VmaType.VVAR), (0x5000_4000, 0x2000, VmaType.VVAR),
                 (0x5001_0000, 0x2000, VmaType.VDSO))
    assert any("not laid out" in p for p in check_layout(_Img(mm), OURS))


def test_only_writable_shared_file_maps_open_read_write():
    assert vma_open_mode(dict(vma_type=VmaType.SHARED_FILE, vm_flags=VM_SHARED | VM_WRITE | 1)) == os.O_RDWR
    assert vma_open_mode(dict(vma_type=VmaType.FILE, vm_flags=VM_WRITE | 1)) == os.O_RDONLY
    assert vma_open_mode(dict(vma_type=VmaType.SHARED_FILE, vm_flags=VM_SHARED | 1)) == os.O_RDONLY


def test_missing_files_and_unsupported_kinds_are_named(tmp_path):
    from ckptrace.image.reader import File
    from ckptrace.image.records import FileType

    img = read_image(io.BytesIO(imagegen.build()))
    files = {o.name: o for o in img.objects.values() if isinstance(o, File)}
    log, pipe = files["/tmp/log.txt"], files["pipe:[1234]"]
    log.name = str(tmp_path / "gone.txt")
    assert any("gone.txt" in p and "does not exist" in p for p in check_files(img))
    files["/usr/bin/sample"].name = log.name  # a second object of one missing file: named once
    gone = [p for p in check_files(img) if "gone.txt" in p]
    assert gone == [f"file '{tmp_path}/gone.txt' (objects {log.objref}, {files['/usr/bin/sample'].objref}) does not exist"], gone
    files["/usr/bin/sample"].name = "/usr/bin/sample"
    (tmp_path / "gone.txt").write_text("")
    assert [p for p in check_files(img) if "gone.txt" in p] == []
    assert any("/usr/bin/sample" in p for p in check_files(img))  # mapped files count too
    files["/usr/bin/sample"].name = "/bin/sh"
    assert check_files(img) == []  # and the pipe is a supported kind
    pipe.fields["f_type"] = FileType.INET_SOCKET
    # named where a user looks for it: the process and fd using it, and what it is
    assert any(re.match(r"pid \d+ fd \d+(, pid \d+ fd \d+)*: an inet socket \(pipe:\[1234\]\): the image has no "
                        r"FILE_SOCKET record for it$", p) for p in check_files(img)), check_files(img)


def test_socket_desc_says_protocol_addresses_and_state():
    import socket
    import struct

    from ckptrace.image.render import socket_desc

    def inet(port, host="127.0.0.1"):
        return (struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(host)).ljust(128, b"\0")

    def unix(path):
        return (struct.pack("<H", socket.AF_UNIX) + path).ljust(128, b"\0")

    tcp = dict(family=socket.AF_INET, type=1, protocol=6, state=10)
    assert socket_desc(tcp, inet(8080) + bytes(128)) == "tcp 127.0.0.1:8080 listening"
    est = dict(tcp, state=1)
    assert socket_desc(est, inet(40000) + inet(8080, "10.0.0.2")) == "tcp 127.0.0.1:40000 -> 10.0.0.2:8080 established"
    v6 = (struct.pack("<H", socket.AF_INET6) + struct.pack(">H", 53) + bytes(4)
          + socket.inet_pton(socket.AF_INET6, "::1")).ljust(128, b"\0")
    assert socket_desc(dict(family=socket.AF_INET6, type=2, protocol=17, state=7), v6 + bytes(128)) == "udp6 [::1]:53"
    assert socket_desc(dict(family=socket.AF_UNIX, type=1, protocol=0, state=1, peer_ino=5),
                       unix(b"/run/x.sock") + unix(b"\0abstract")) == "unix stream /run/x.sock -> @abstract"
    assert socket_desc(dict(family=socket.AF_UNIX, type=2, protocol=0, state=7), bytes(256)) == "unix dgram (unbound)"
    # a peer gone (getpeername answered, sock_diag names none), shut down, its ECONNRESET kept
    gone = dict(family=socket.AF_UNIX, type=1, protocol=0, state=1, peer_ino=0, shutdown=0x103)
    assert socket_desc(gone, bytes(128) + unix(b"")) == \
        "unix stream (unbound) (its peer is gone) (shut down, ECONNRESET pending)"
    assert socket_desc(dict(gone, shutdown=2), bytes(256)) == "unix stream (unbound) (shut down for writing)"


@pytest.mark.parametrize("flags, want", [((), "restored pid:[4026532999]: init is host pid 4242; 1 process, 2 threads"),
                                         (("--quiet",), ""), (("--json",), '"init_pid": 4242')])
def test_restore_result_line(monkeypatch, capsys, flags, want):
    from ckptrace import cli, restore

    monkeypatch.setattr(restore, "restore", lambda path, progress=None, root=None, on_release=None: restore.Result(4026532999, 4242, 1, 2, 1 << 20, 0.5))
    assert cli.main(["restore", "x.img", *flags]) == 0
    out = capsys.readouterr().out
    assert (want in out) if want else out == ""


@pytest.mark.parametrize("flags", [(), ("--quiet",), ("--json",)])
def test_restore_notes_go_to_stderr_one_line_each(monkeypatch, capsys, flags):
    """What the user should know although the restore worked (a FIFO's bytes left in its live
    pipe) is said on stderr whatever the flags, and is not part of --json's object."""
    import json

    from ckptrace import cli, restore

    res = restore.Result(4026532999, 4242, 1, 2, 1 << 20, 0.5, ["pid 1 fd 3: first", "pid 2 fd 4: second"])
    monkeypatch.setattr(restore, "restore", lambda path, progress=None, root=None, on_release=None: res)
    assert cli.main(["restore", "x.img", *flags]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == ["ckptrace restore: pid 1 fd 3: first", "ckptrace restore: pid 2 fd 4: second"]
    if "--json" in flags:
        assert "notes" not in json.loads(out)


def test_restore_shows_where_it_is_on_a_progress_line():
    """A restore of many processes or much memory is long: on a terminal a line says which
    process it is at and how much of the pages it has written (ckptrace.progress)."""
    import io

    import imagegen

    from ckptrace.image.reader import read_image
    from ckptrace.restore import _Restore

    class Line:
        shown = []

        def due(self):
            return True

        def elapsed(self):
            return 1.5

        def show(self, markup):
            self.shown.append(markup)

    class Mem:
        bytes_written = 8192

    img = read_image(io.BytesIO(imagegen.build()))
    r = _Restore(img, None, Line())
    r._show("process 1/2 (pid 1)", Mem())
    (text,) = Line.shown
    assert "restoring" in text and "process 1/2" in text and f"{len(img.tasks)} tasks" in text
    assert f"0 of {img.page_count * 4096 / (1 << 20):.0f} MiB" in text


def test_realtime_absolute_timerfd_rearm_dates():
    """restorer.timers.timerfd_abs_rearm: a date ahead is kept; a past one with nothing unread is
    left for the kernel to fire at once (its read counts the periods since); a past one with
    unread expirations gets the ones due by now added, and its next date (periodic) or none."""
    from ckptrace.restorer.timers import timerfd_abs_rearm

    S = 1_000_000_000
    assert timerfd_abs_rearm(100 * S, 0, 0, 90 * S) == (100 * S, 0)
    assert timerfd_abs_rearm(100 * S, S, 3, 90 * S) == (100 * S, 3)
    assert timerfd_abs_rearm(100 * S, S // 2, 0, 103 * S) == (100 * S, 0)
    assert timerfd_abs_rearm(100 * S, 0, 1, 103 * S) == (None, 2)
    # due at 100, 100.5, ... 103: seven more by 103, the next at 103.5
    assert timerfd_abs_rearm(100 * S, S // 2, 2, 103 * S) == (103 * S + S // 2, 9)
    assert timerfd_abs_rearm(100 * S, S // 2, 2, 103 * S - 1) == (103 * S, 8)


@pytest.mark.kernel
def test_clone3_children_run_python_while_another_thread_is_busy():
    """The restore forks its tasks with a raw clone3 while, on a terminal, rich's refresh thread
    runs. A child must not start with the GIL held by a thread it does not have: each child here
    runs Python and exits 0 (through a GIL-releasing call, all 20 hung)."""
    import threading

    from ckptrace.restorer.tree import CLONE_NEWPID, clone3

    if os.geteuid() != 0:
        pytest.fail("needs root (a new pid namespace per child)")
    stop = threading.Event()

    def busy():
        n = 0
        while not stop.is_set():
            n += 1

    t = threading.Thread(target=busy)
    t.start()
    hung = 0
    try:
        for _ in range(20):
            pid = clone3(CLONE_NEWPID, 1, signal.SIGCHLD)
            if pid == 0:  # pragma: no cover - the child
                os._exit(sum(range(100)) - 4950)
            deadline = time.monotonic() + 2
            while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            if done[0] == 0:
                hung += 1
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            else:
                assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        stop.set()
        t.join()
    assert hung == 0


# -- the process tree's arrangement (restorer/tree.py): stand-ins and session order ------------

from ckptrace.errors import Unsupported  # noqa: E402
from ckptrace.image.records import PROC_CHILD_SUBREAPER  # noqa: E402
from ckptrace.restorer.tree import ProcPlan, _arrange, _early, group_stand_ins  # noqa: E402


def arrange(*procs: tuple, subreapers=()) -> ProcPlan:
    """procs: (pid, ppid, pgid, sid); outside sessions already mapped to init's (1)."""
    plans = {pid: ProcPlan(pid, ppid, pgid, sid, signal.SIGCHLD,
                           flags=PROC_CHILD_SUBREAPER if pid in subreapers else 0)
             for pid, ppid, pgid, sid in procs}
    return _arrange(plans, {n for p in procs for n in p})


def shape(p: ProcPlan) -> tuple:
    """(pid, stand-in kind, children's shapes), children in fork order."""
    return (p.pid, p.stand_in, tuple(shape(c) for c in p.children))


def test_daemon_double_fork_gets_a_session_stand_in_under_the_reaper():
    root = arrange((1, 0, 1, 1), (43, 1, 42, 42), (44, 43, 42, 42))
    assert shape(root) == (1, "", ((42, "session", ((43, "", ((44, "", ()),)),)),))


def test_member_reparented_away_from_a_live_leader_gets_a_relay_with_an_unused_pid():
    # pid 2 leads session 2; pid 4 (its grandchild, parent exited) is init's child now
    root = arrange((1, 0, 1, 1), (2, 1, 2, 2), (4, 1, 2, 2))
    (two,) = root.children
    (relay,) = two.children
    assert relay.stand_in == "relay" and relay.pid not in (1, 2, 4) and relay.sid == 2
    assert [c.pid for c in relay.children] == [4]


def test_stand_in_children_must_land_back_on_their_parent():
    # pid 5's parent, 3, is neither init nor a subreaper: the kernel would never have given it
    # pid 5, and a stand-in's exit would hand it to init
    with pytest.raises(Unsupported, match="reparented to 1"):
        arrange((1, 0, 1, 1), (3, 1, 1, 1), (5, 3, 9, 9))
    root = arrange((1, 0, 1, 1), (3, 1, 1, 1), (5, 3, 9, 9), subreapers={3})
    assert shape(root) == (1, "", ((3, "", ((9, "session", ((5, "", ()),)),)),))


def test_leaderless_session_under_two_parents_is_refused():
    with pytest.raises(Unsupported, match="different parents"):
        arrange((1, 0, 1, 1), (3, 1, 1, 1), (5, 1, 9, 9), (6, 3, 9, 9), subreapers={3})


def test_children_left_in_the_former_session_are_forked_before_setsid():
    root = arrange((1, 0, 1, 1), (2, 1, 2, 2), (3, 2, 1, 1), (4, 2, 2, 2))
    (two,) = root.children
    early = {c.pid: _early(two, c) for c in two.children}
    assert early == {3: True, 4: False}


def test_a_leaders_children_from_two_other_sessions_are_refused():
    # pid 3 needs session 1 (pid 2's former), pid 4 session 9, which pid 2 was never in
    with pytest.raises(Unsupported):
        arrange((1, 0, 1, 1), (2, 1, 2, 2), (3, 2, 1, 1), (9, 1, 9, 9), (4, 2, 9, 9))


def test_group_without_leader_gets_a_stand_in_in_its_session():
    root = arrange((1, 0, 1, 1), (2, 1, 2, 2), (3, 2, 7, 2), (4, 2, 7, 2))
    assert [(g.pid, g.ppid, g.sid) for g in group_stand_ins(root)] == [(7, 2, 2)]


def test_sealed_and_userfaultfd_vmas_are_refused_by_name():
    """restorer.memory.check_vmas: mseal'd VMAs and ones registered with a userfaultfd cannot
    come back (restore must change the one, and the other's fd is not in the image), so the image
    is refused before anything exists, naming the process and mapping; the kernel's own mappings
    (which a kernel may seal itself) are not restore's to recreate and do not count."""
    from ckptrace.image.records import VM_FLAG_BITS
    from ckptrace.restorer.memory import check_vmas

    img = read_image(io.BytesIO(imagegen.build()))
    assert check_vmas(img) == []
    t = img.processes()[0]
    mm = img.obj(t.mm_objref)
    text, heap = mm.vmas
    text.fields["vm_flags"] |= VM_FLAG_BITS["sl"]
    heap.fields["vm_flags"] |= VM_FLAG_BITS["uw"] | VM_FLAG_BITS["um"]
    mm.vmas.append(Vma(dict(vma_type=VmaType.VDSO, vm_start=0x7FFF_0000_0000, vm_end=0x7FFF_0000_2000,
                            vm_flags=VM_FLAG_BITS["sl"] | 5, vma_objref=0)))
    assert check_vmas(img) == [
        f"process {t.tid}'s mapping {text.start:#x}-{text.end:#x} is sealed (mseal), which restore "
        "cannot recreate",
        f"process {t.tid}'s mapping {heap.start:#x}-{heap.end:#x} is registered with a userfaultfd, "
        "which restore cannot recreate"]


def test_restore_that_cannot_print_its_result_still_says_where(monkeypatch, capsys):
    """The namespace runs whether or not the result line could be written (stdout a full disk, a
    closed pipe): the error says so and where, not just the write's errno."""
    import errno
    import sys

    from ckptrace import cli, restore

    class Full(io.StringIO):
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(restore, "restore", lambda path, progress=None, root=None, on_release=None: restore.Result(4026532999, 4242, 1, 2, 1 << 20, 0.5))
    monkeypatch.setattr(sys, "stdout", Full())
    assert cli.main(["restore", "--json", "x.img"]) != 0
    err = capsys.readouterr().err
    assert "restored pid:[4026532999] (init is host pid 4242), but writing the result failed" in err, err
    assert err.count("\n") == 1


def test_a_group_leaders_children_in_its_former_group_are_forked_before_it_makes_its_own():
    # a daemon (43, session 42 whose leader exited) forked 44, then made a group of its own:
    # 44 stays in group 42, which only it keeps alive (the stand-in is gone by then)
    root = arrange((1, 0, 1, 1), (43, 1, 43, 42), (44, 43, 42, 42))
    (stand_in,) = root.children
    (daemon,) = stand_in.children
    assert [(c.pid, _early(daemon, c)) for c in daemon.children] == [(44, True)]


def test_a_group_nobody_can_be_in_is_refused():
    # group 5 is named after process 5, which left it; 7 would have to join a group nobody is in
    with pytest.raises(Unsupported, match="process 7 is in process group 5"):
        arrange((1, 0, 1, 1), (5, 1, 6, 1), (6, 1, 6, 1), (7, 1, 5, 1))


@pytest.mark.parametrize("ns_root, path, want", [
    ("/srv/ct", "/srv/ct/etc/x", "/new/etc/x"),   # under the namespace's root: moved
    ("/srv/ct", "/srv/ct", "/new"),
    ("/srv/ct", "/srv/ctx/etc/x", "/srv/ctx/etc/x"),  # not under it (a prefix only): left
    ("/srv/ct", "/dev/null", "/dev/null"),        # outside it (an inherited stdin): left
    ("/", "/etc/x", "/new/etc/x"),                # not chroot'ed: every path moves...
    ("/", "/dev/pts/3", "/dev/pts/3"),            # ...but the host's devices and kernel files
    ("/", "/proc/sys/x", "/proc/sys/x"),
])
def test_restore_root_moves_the_namespaces_paths(ns_root, path, want):
    from ckptrace.image.reader import Image, Task

    img = Image(tasks=[Task(fields={}, thread={"tid": 1, "tgid": 1}, ns_root=ns_root)])
    assert img.at(path) == path  # no --root: where they were
    img.root = "/new"
    assert img.at(path) == want


@pytest.mark.parametrize("how", ["host tree", "dotdot", "absolute symlink", "relative symlink", "swapped"])
def test_restore_root_never_reaches_a_file_outside_it(tmp_path, how):
    """--root DIR: every path of the namespace is looked up under DIR as a process chroot'ed there
    would look it up. `/dev/../F` skipped the mapping as one of the host's devices, `/../../F`
    became DIR/../../F, and a symlink in DIR to /F was followed to the host's F: each opened
    the host's file. Now each names DIR/F, and the open (openat2 RESOLVE_IN_ROOT) gets it or
    nothing, even through a symlink put in DIR after the look (`swapped`)."""
    from ckptrace.image.reader import Image, Task
    from ckptrace.restorer.files import open_path

    secret = tmp_path / "x" / "secret"
    secret.parent.mkdir()
    secret.write_text("the host's")
    root = tmp_path / "root"
    mirror = root / str(secret).lstrip("/")  # where the chroot'ed process finds F
    mirror.parent.mkdir(parents=True)
    mirror.write_text("the namespace's")
    path = {"host tree": f"/dev/..{secret}", "dotdot": f"/../../..{secret}", "absolute symlink": "/a",
            "relative symlink": "/d/b", "swapped": "/c"}[how]
    (root / "d").mkdir()
    os.symlink(str(secret), root / "a")
    os.symlink("../" * 12 + str(secret).lstrip("/"), root / "d" / "b")
    (root / "c").write_text("")
    img = Image(tasks=[Task(fields={}, thread={"tid": 1, "tgid": 1}, ns_root="/")])
    img.root = str(root)
    assert img.at(path) == (str(mirror) if how != "swapped" else str(root / "c"))
    if how == "swapped":  # made a symlink to the host's file after the validation looked
        (root / "c").unlink()
        os.symlink(str(secret), root / "c")
    fd = open_path(img, path, os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"the namespace's"
    finally:
        os.close(fd)
    mirror.unlink()  # and with nothing there: nothing opened, not the host's file
    with pytest.raises(FileNotFoundError):
        os.close(open_path(img, path, os.O_RDONLY))


def test_values_no_system_call_takes_are_named_before_anything_exists():
    """An offset or size past 2^63-1, open flags past an int, a umask past 0777: lseek, ftruncate,
    open and umask overflowed on them, a traceback (in the forked setup, after processes
    existed, for the umask). restore.validate names them now, all at once."""
    from ckptrace.image.records import RECORDS, FileType, RecType
    from ckptrace.image.stream import Record
    from ckptrace.restore import range_problems

    img = read_image(io.BytesIO(imagegen.build()))
    assert range_problems(img) == []
    img.obj(2).fields.update(f_pos=1 << 63, f_flags=0xFFFFFFFF)
    img.task(1).proc["umask"] = 0xFFFFFFFF
    memfd = img.obj(5)
    memfd.fields["f_type"] = FileType.MEMFD
    memfd.extra = [Record(0, 0, RECORDS[RecType.FILE_DATA], 0, dict(size=1 << 63, offset=0), b"", 0)]
    assert range_problems(img) == [
        "file object 2 (/tmp/log.txt)'s offset 9223372036854775808 is past the largest file offset (2^63-1)",
        "file object 2 (/tmp/log.txt)'s open flags 0xffffffff are no open(2) flags",
        "file object 5 (pipe:[1234])'s size 9223372036854775808 or data offset 0 is past the largest file "
        "size (2^63-1)",
        "process 1's umask 0o37777777777 is not a umask (0-0777)"]


def test_an_unexpected_overflow_in_restore_is_one_line(monkeypatch, capsys):
    from ckptrace import cli, restore

    def overflow(path, progress=None, root=None, on_release=None):
        raise OverflowError("signed integer is greater than maximum")

    monkeypatch.setattr(restore, "restore", overflow)
    assert cli.main(["restore", "x.img"]) == 1
    assert capsys.readouterr().err == ("ckptrace restore: a value in the image is out of range: "
                                       "signed integer is greater than maximum\n")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_once_restored_does_not_fail_the_restore(monkeypatch, capsys, sig):
    """A SIGTERM or Ctrl-C landing after the namespace was restored, while the result was being
    written, ended restore with 143 / 130 while the namespace ran: a supervisor that retries on
    failure then started a second copy."""
    import signal
    import sys

    from ckptrace import cli, restore

    class Signalling(io.StringIO):
        def write(self, s):
            os.kill(os.getpid(), getattr(signal, sig))
            return super().write(s)

    def restored(path, progress=None, root=None, on_release=None):
        on_release()  # the point of no return: the tasks are being let go
        os.kill(os.getpid(), getattr(signal, sig))  # while the rest (closing fds...) is done
        return restore.Result(4026532999, 4242, 1, 2, 1 << 20, 0.5)

    out = Signalling()
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(restore, "restore", restored)
    monkeypatch.setattr(sys, "stdout", out)
    assert cli.main(["restore", "x.img"]) == 0
    assert "restored pid:[4026532999]" in out.getvalue()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # put back


def test_zombies_restore_refuses_before_anything_exists():
    """A zombie under a parent that ignores SIGCHLD would be reaped as soon as it is made again;
    a wait status no exit gives (stopped, 0x7f) cannot be made at all. Both named up front."""
    from ckptrace.restore import zombie_problems

    img = read_image(io.BytesIO(imagegen.build(zombie={})))
    (z,) = img.zombies()
    assert zombie_problems(img, z) == []
    img.task(1).sighand[16]["handler"] = 1  # SIGCHLD: SIG_IGN
    assert zombie_problems(img, z) == ["zombie 9's parent 1 ignores SIGCHLD (SIG_IGN or SA_NOCLDWAIT): "
                                       "the kernel would reap the zombie as soon as it is made again"]
    img.task(1).sighand[16].update(handler=0, flags=2)  # SA_NOCLDWAIT
    assert len(zombie_problems(img, z)) == 1
    img = read_image(io.BytesIO(imagegen.build(zombie=dict(exit_code=0x137F))))  # WIFSTOPPED
    assert zombie_problems(img, img.zombies()[0]) == ["zombie 9's wait status 0x137f is not one an exit gives"]
    img = read_image(io.BytesIO(imagegen.build(zombie=dict(exit_code=signal.SIGCHLD))))
    assert len(zombie_problems(img, img.zombies()[0])) == 1


def test_ids_that_mean_unchanged_are_refused():
    """uid (u32)-1 in an image is "leave it as it is" to setresuid: the process came back as the
    restorer's root instead of being refused."""
    from ckptrace.restorer.creds import creds_problems

    img = read_image(io.BytesIO(imagegen.build()))
    t = img.task(1)
    assert creds_problems(t) == []
    t.creds["uid"] = t.creds["fsgid"] = 0xFFFFFFFF
    assert creds_problems(t) == ["process 1's credentials hold -1 as uid, fsgid: not an id"]
    t.creds["uid"] = t.creds["fsgid"] = 0
    t.groups.append(0xFFFFFFFF)
    assert creds_problems(t) == ["process 1's credentials hold -1 as a supplementary group: not an id"]


@pytest.mark.parametrize("policy, prio, nice, why", [
    (0, 0, 5, None), (1, 50, 0, None), (2, 99, -3, None), (5, 0, 19, None), (3, 0, -20, None),
    (1, 0, 0, "real-time priority 0 does not go with policy SCHED_FIFO"),
    (0, 10, 0, "real-time priority 10 does not go with policy SCHED_OTHER"),
    (2, 100, 0, "real-time priority 100 does not go with policy SCHED_RR"),
    (4, 0, 0, "scheduling policy 4 is unknown"),
    (0, 0, 20, "nice 20 is not in -20..19"),
])
def test_scheduling_the_kernel_would_refuse_is_named_beforehand(policy, prio, nice, why):
    from ckptrace.restorer.sched import sched_problems

    t = read_image(io.BytesIO(imagegen.build())).task(2)
    t.sched.update(policy=policy, priority=prio, nice=nice)
    assert sched_problems(t) == ([] if why is None else [f"thread 2's {why}" + (
        " (1-99 for SCHED_FIFO/SCHED_RR, else 0)" if "priority" in why else "")])


def test_task_values_the_kernel_refuses_late_are_named_before_anything_exists():
    """A pid past pid_max failed clone3 in the parent ("setting up process 1 ... clone3"), and a
    bad exit signal, I/O priority, oom_score_adj, SCHED_DEADLINE parameters, PR_SET_MM_MAP
    layout or a mapping past the user address space each a bare EINVAL once processes
    existed. restore.validate names them all at once, with the image's pids."""
    from ckptrace.restore import task_range_problems
    from ckptrace.restorer.sched import sched_problems

    img = read_image(io.BytesIO(imagegen.build()))
    assert task_range_problems(img) == []
    img.tree[2]["pid"] = img.task(3).thread["tid"] = 1 << 22
    img.task(1).fields["exit_signal"] = 99
    img.task(2).thread["ioprio"] = 0xFFFFFFFF
    img.task(1).proc["oom_score_adj"] = 1001
    mm = img.obj(img.task(1).mm_objref)
    mm.fields.update(arg_start=0x2000, arg_end=0x1000)
    mm.vmas[1].fields["vm_end"] = 1 << 47
    # a cgroup path that leaves its hierarchy: restore made directories and wrote a pid wherever
    # it led, /sys/fs/cgroup/unified/../../../tmp/x/cgroup.procs
    img.task(1).cgroups = [(0, "", "/../../../tmp/x"), (4, "cpu,cpuacct", "/ok/./here"), (5, "memory", "/fine")]
    got = task_range_problems(img)
    assert got == [
        "task 4194304's pid is not below this host's pid_max " + open("/proc/sys/kernel/pid_max").read().strip()
        + " (/proc/sys/kernel/pid_max)",
        "process 1's exit signal 99 is not a signal (0-64)",
        "process 1's oom_score_adj 1001 is not in -1000..1000",
        "process 1's cgroup2 cgroup /../../../tmp/x leaves its hierarchy ('..': was it dumped from inside a "
        "cgroup namespace?)",
        "process 1's cpu,cpuacct cgroup /ok/./here is not one /proc/PID/cgroup shows",
        "process 1's memory layout cannot be set (PR_SET_MM_MAP): arg_start 0x2000 > arg_end 0x1000",
        "process 1's mapping 0x600000-0x800000000000 is not within the user address space (0-0x7ffffffff000)",
        "thread 2's I/O priority 0xffffffff is not one the kernel takes (class 0-3 << 13 | level)"], got
    # and should it get that far, placing refuses it before making anything
    from ckptrace.errors import Unsupported
    from ckptrace.restorer import cgroup
    made: list[str] = []
    with pytest.raises(Unsupported, match=r"into cgroup /\.\./x: the path leaves its hierarchy"):
        cgroup.place(os.getpid(), [(0, "", "/../x")], {"": "/nonexistent-hierarchy"}, made, name=1)
    assert made == []
    t = img.task(2)
    t.sched.update(policy=6, priority=0, nice=0, runtime=1, deadline=1, period=1)
    assert sched_problems(t) == ["thread 2's SCHED_DEADLINE runtime 1, deadline 1, period 1 (ns) are not "
                                 "1024 <= runtime <= deadline <= period"]
    t.sched.update(runtime=10**6, deadline=10**7, period=10**8)
    assert sched_problems(t) == []
    t.sched["policy"] = 7
    assert sched_problems(t) == ([] if os.path.isdir("/sys/kernel/sched_ext") else
                                 ["thread 2's scheduling policy SCHED_EXT is not in this kernel (no /sys/kernel/sched_ext)"])


DEVTTY_CHECK = r"""
import fcntl, os, sys, termios
from ckptrace.restorer import tty
# (a session of its own, start_new_session: no controlling terminal)
print(tty._devtty_problem("pid 2 fd 7", dict(dev=0x401)))
m, s = os.openpty()
fcntl.ioctl(s, termios.TIOCSCTTY, 0)    # now a pty is
st = os.fstat(s)
mine = (os.minor(st.st_rdev) & 0xff) | (os.major(st.st_rdev) << 8) | ((os.minor(st.st_rdev) & ~0xff) << 12)
print(tty._devtty_problem("pid 2 fd 7", dict(dev=mine)))
print(tty._devtty_problem("pid 2 fd 7", dict(dev=0x401)))
"""


@pytest.mark.kernel
def test_a_dev_tty_fd_of_a_terminal_without_a_node_needs_the_restorers_own():
    """An fd of /dev/tty that stood for a terminal restore cannot open by node (tty 4:1, a
    console) is reopened as /dev/tty: refused when restore has no controlling terminal (ENXIO)
    or another one, accepted when it is that terminal."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", DEVTTY_CHECK], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))},
                         start_new_session=True)
    assert out.returncode == 0, out.stderr
    none, same, other = out.stdout.splitlines()
    assert "pid 2 fd 7: /dev/tty, which stood for the terminal 4:1, cannot be opened again" in none, none
    assert "restore has no controlling terminal" in none
    assert same == "None"
    assert "/dev/tty stood for the terminal 4:1, and restore's controlling terminal is 136:" in other, other


def test_a_processs_threads_are_found_reading_each_status_once(tmp_path, monkeypatch):
    """host_tid_of read the status of every thread of the process for each thread it made: 2 500
    threads took 3 million reads, and the restore ran into its watchdog. With `known` each thread
    is read once over the calls for one process."""
    from ckptrace.kernel import procfs
    from ckptrace.restorer.threads import host_tid_of

    for host, ns in ((100, 1), (101, 2), (102, 3), (103, 4)):
        d = tmp_path / "100" / "task" / str(host)
        d.mkdir(parents=True)
        (d / "status").write_text(f"Name:\tx\nTgid:\t100\nPid:\t{host}\nNSpid:\t{host}\t{ns}\n")
    reads = []
    real = procfs.status
    monkeypatch.setattr(procfs, "status", lambda pid, tid, proc: reads.append(tid) or real(pid, tid, proc))
    known: dict[int, int] = {}
    assert [host_tid_of(100, ns, str(tmp_path), known=known) for ns in (4, 2, 3)] == [103, 101, 102]
    assert sorted(reads) == [100, 101, 102, 103]  # each once
    with pytest.raises(Exception, match="did not appear"):
        host_tid_of(100, 9, str(tmp_path), known=known)


def test_a_files_users_are_named_from_one_index():
    """restore names each file it makes by its uses ("pid 2 fd 3"), and scanned every table for
    each file: 5 000 fds shared by 91 processes took a minute. The index gives the same names."""
    from ckptrace.restorer.files import _in_fd_table, _users

    img = read_image(io.BytesIO(imagegen.build()))
    assert _users(img, 2) == "pid 1 fd 0, pid 1 fd 1, pid 3 fd 0 (and 1 more)"
    assert _users(img, 5) == "pid 1 fd 7, pid 3 fd 7"
    assert _users(img, 999) == "file object 999"
    assert _in_fd_table(img, 5) and not _in_fd_table(img, 999)


def test_the_watchdog_gives_an_image_time_for_its_vmas_tasks_and_fds_not_only_its_bytes():
    """A 62 MB image of 840 000 VMAs got 61 s (its bytes at 50 MB/s plus 60 s) and was always
    cut off, after dump --kill had ended the original, with 'Connection timed out'."""
    from ckptrace.restore import WATCHDOG_PER_VMA, WATCHDOG_S, watchdog_limit

    img = read_image(io.BytesIO(imagegen.build()))
    base = watchdog_limit(img)
    assert base > WATCHDOG_S
    mm = img.obj(3)
    mm.vmas.extend(mm.vmas[:1] * 1000)
    assert watchdog_limit(img) - base == pytest.approx(1000 * WATCHDOG_PER_VMA)


def test_a_large_run_of_pages_is_copied_in_pieces_that_move_the_progress_line():
    """A 3 GiB process's pages were one injected pread: the progress line stood still for its
    whole length. They go in 64 MiB pieces, each counted and shown."""
    from types import SimpleNamespace

    from ckptrace.restorer.memory import PREAD_PIECE, MemoryRestorer

    calls, ticks = [], []

    class Inj:
        def syscall(self, nr, fd, addr, n, off):
            calls.append((addr, n, off))
            return n

    m = MemoryRestorer.__new__(MemoryRestorer)
    m.image_fd, m.bytes_written = 7, 0
    m.tick = lambda: ticks.append(m.bytes_written)
    size = 3 * PREAD_PIECE + 4096
    m._pread_run(Inj(), 1, SimpleNamespace(npages=size // 4096, vaddr=0x10000000, offset=1 << 20))
    assert [n for _, n, _ in calls] == [PREAD_PIECE] * 3 + [4096]
    assert calls[1][0] == 0x10000000 + PREAD_PIECE and calls[1][2] == (1 << 20) + PREAD_PIECE
    assert ticks == [PREAD_PIECE, 2 * PREAD_PIECE, 3 * PREAD_PIECE, size] and m.bytes_written == size


def test_own_proc_is_mounted_under_the_restored_root_or_noted(tmp_path):
    """An image whose init had its own /proc (TASK_NS OWN_PROC) gets a proc mounted at /proc under
    init's restored root (`--root DIR`: DIR/proc); with no directory there the restore keeps the
    controller's mount namespace and says so. Mounts only the original had are noted either way."""
    from ckptrace.restorer import mnt

    img = read_image(io.BytesIO(imagegen.build(ns=(2, b"h\0d\0\0t on /m type tmpfs\0"))))
    assert mnt.own_proc(img) and mnt.proc_mount(img) == "/proc"
    assert mnt.notes(img) == ["the original namespace's mount namespace also had t on /m type tmpfs, "
                              "which were not mounted again"]
    img.root = str(tmp_path)
    assert mnt.proc_mount(img) == ""
    # each reason named as it is (a copied tree's /proc symlink was "not a directory", as a file)
    assert len(mnt.notes(img)) == 2 and f"{tmp_path}/proc does not exist to mount it on" in mnt.notes(img)[0]
    (tmp_path / "proc").symlink_to("/proc")
    assert mnt.proc_mount(img) == "" and f"{tmp_path}/proc is a symbolic link, not a directory" in mnt.notes(img)[0]
    (tmp_path / "proc").unlink()
    (tmp_path / "proc").write_text("")
    assert mnt.proc_mount(img) == "" and f"{tmp_path}/proc is not a directory to mount it on" in mnt.notes(img)[0]
    (tmp_path / "proc").unlink()
    (tmp_path / "proc").mkdir()
    assert mnt.proc_mount(img) == f"{tmp_path}/proc" and len(mnt.notes(img)) == 1
    # without OWN_PROC (or an older image): the controller's mount namespace, nothing mounted
    plain = read_image(io.BytesIO(imagegen.build(ns=(0, b"h\0d\0"))))
    assert not mnt.own_proc(plain) and mnt.proc_mount(plain) == "" and mnt.notes(plain) == []


def test_a_full_tmpdir_while_spooling_says_where_the_copy_was_going(monkeypatch, tmp_path):
    """`cat img | TMPDIR=<full> ckptrace restore -` printed a bare "No space left on device": the
    write's error, which names TMPDIR, was replaced by the one the buffered copy's close() raised
    flushing the same bytes again."""
    import errno as errno_

    from ckptrace.errors import KernelError
    from ckptrace.image import stream

    class Full(io.BufferedRandom):
        def write(self, data):
            super().write(data)
            raise OSError(errno_.ENOSPC, "No space left on device")

        def flush(self):
            raise OSError(errno_.ENOSPC, "No space left on device")

    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda **kw: Full(io.FileIO(str(tmp_path / "t"), "w+")))
    with pytest.raises(KernelError, match=f"copying the image to a temporary file in {tmp_path} .TMPDIR.: ENOSPC"):
        stream.spool(io.BytesIO(imagegen.build()))


def test_a_path_that_is_no_utf8_is_shown_with_its_bytes():
    """A file name is any bytes: one that is no UTF-8 (here ff fe) was shown as Python keeps it,
    `\\udcff\\udcfe`, which names no byte a user could look for. Every restore message shows
    it as show and decode do, `\\xff\\xfe`."""
    from ckptrace.restore import range_problems

    data = imagegen.build()
    assert data.count(b"/tmp/log.txt") == 1
    img = read_image(io.BytesIO(data.replace(b"/tmp/log.txt", b"/tmp/l\xff\xfe.txt")))
    assert img.obj(2).name == "/tmp/l\udcff\udcfe.txt"
    problems = [p for p in check_files(img) if ".txt" in p]
    assert problems == ["file '/tmp/l\\xff\\xfe.txt' (object 2) does not exist"], problems
    from ckptrace.image.records import FileType
    from ckptrace.restorer.files import _what  # (what a failed reopen names)

    assert _what(img.obj(2), FileType.REGULAR) == "a file (/tmp/l\\xff\\xfe.txt)"
    img.obj(2).fields.update(f_pos=1 << 63)
    assert range_problems(img) == ["file object 2 (/tmp/l\\xff\\xfe.txt)'s offset 9223372036854775808 is past the "
                                   "largest file offset (2^63-1)"]


def test_securebits_the_kernel_does_not_know_are_named_before_anything_exists():
    """PR_SET_SECUREBITS refuses a bit the kernel does not know with EPERM: an image holding one
    failed late, `prctl(PR_SET_SECUREBITS) in PID: EPERM`, after every process existed. The
    validation names it. Linux 6.14 knows the exec bits (0x100, 0x400) and their locks too."""
    from ckptrace.restorer.creds import creds_problems, securebits_known

    img = read_image(io.BytesIO(imagegen.build()))
    t = img.task(1)
    t.creds["securebits"] = 0xFF  # every bit and lock 6.1 knows
    assert creds_problems(t, "6.1.0-18-amd64") == []
    t.creds["securebits"] = 0x1010
    want = "process 1's securebits 0x1010 hold bits this kernel does not know (0x1000; it knows {})"
    assert creds_problems(t, "6.18.0") == [want.format("0xfff")]
    assert creds_problems(t) == [want.format(hex(securebits_known()))]  # this kernel's, by default
    t.creds["securebits"] = 0x510  # SECBIT_EXEC_RESTRICT_FILE | SECBIT_EXEC_DENY_INTERACTIVE | KEEP_CAPS
    assert creds_problems(t, "6.14.0") == []
    assert creds_problems(t, "6.1.0") == ["process 1's securebits 0x510 hold bits this kernel does not know "
                                          "(0x500; it knows 0xff)"]


def test_memory_deny_write_execute_is_refused_where_the_kernel_lacks_it():
    """A process with PR_SET_MDWE (TASK_PROC.flags) on a kernel before 6.3 would come back without
    that protection: the validation names it, and lets the same image through where it is known."""
    from ckptrace.image.records import PROC_MDWE_REFUSE_EXEC_GAIN
    from ckptrace.restorer.memory import mdwe_problems

    img = read_image(io.BytesIO(imagegen.build()))
    t = img.task(1)
    assert mdwe_problems(t, supported=False) == []
    t.proc["flags"] |= PROC_MDWE_REFUSE_EXEC_GAIN
    assert mdwe_problems(t, supported=True) == []
    assert mdwe_problems(t, supported=False) == [
        "process 1 denies write-execute memory (PR_SET_MDWE), which this kernel does not support"]


def test_restore_root_does_not_follow_procs_links_to_the_hosts_files(tmp_path):
    """--root DIR of a namespace that was not chroot'ed takes /dev, /proc and /sys from the host,
    and a path through one of /proc's links (/proc/PID/root/..., which the dumper never writes)
    opened the host's file, outside DIR. Now validation names it and open_path refuses it
    (RESOLVE_NO_MAGICLINKS); the host's devices and kernel files still open."""
    import errno
    import subprocess
    import sys

    from ckptrace.restorer.files import open_path

    img = read_image(io.BytesIO(imagegen.build()))
    img.root = str(tmp_path)
    assert img.ns_root == "/"
    hostile = f"/proc/{os.getpid()}/root/etc/hostname"  # (/proc/1 may be closed even to root)
    img.obj(2).name = hostile
    named = [p for p in check_files(img) if "hostname" in p]
    assert len(named) == 1 and re.fullmatch(
        re.escape(f"file '{hostile}' (") + r"pid 1 fd \d.*\) " + re.escape(
            "leads through one of /proc's links to another process's files (/proc/PID/root, cwd, fd/N) or a "
            "symlink loop: restore --root does not follow them (they would reach this host's files, not the "
            "root's)"), named[0]), named
    with pytest.raises(OSError) as exc:
        os.close(open_path(img, hostile, os.O_RDONLY))
    assert exc.value.errno == errno.ELOOP
    master, slave = os.openpty()
    try:
        for path in ["/dev/null", "/dev/ptmx", os.ttyname(slave), "/proc/self/status", "/sys/devices/system/cpu/online"]:
            img.obj(2).name = path
            assert [p for p in check_files(img) if path in p] == []
            os.close(open_path(img, path, os.O_RDONLY | os.O_NOCTTY))
        # /dev/tty, in a new session whose controlling terminal is that pty
        code = ("import os, sys\nfrom ckptrace.image.reader import Image, Task\n"
                "from ckptrace.restorer.files import open_path\n"
                "os.close(os.open(sys.argv[1], os.O_RDWR))  # (a session leader's first tty: its own)\n"
                "img = Image(tasks=[Task(fields={}, thread={'tid': 1, 'tgid': 1}, ns_root='/')])\n"
                "img.root = sys.argv[2]\nos.close(open_path(img, '/dev/tty', os.O_RDWR))\nprint('opened')")
        p = subprocess.run([sys.executable, "-c", code, os.ttyname(slave), str(tmp_path)], capture_output=True,
                           text=True, timeout=60, start_new_session=True,
                           env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
        assert p.stdout == "opened\n", p
    finally:
        os.close(master)
        os.close(slave)


def test_listed_names_the_first_and_counts_the_rest():
    """Refusals name who holds a thing: the first holders, then how many more, never a bare list
    of every pid nor a count that is off by the ones shown."""
    from ckptrace.image.render import listed

    assert listed([7]) == "7"
    assert listed([7, 8, 9]) == "7 (and 2 more)"
    assert listed(["pid 2 fd 3", "pid 2 fd 4", "pid 3 fd 0", "pid 4 fd 1"], keep=3) == \
        "pid 2 fd 3, pid 2 fd 4, pid 3 fd 0 (and 1 more)"
    assert listed([1, 2, 3], keep=3) == "1, 2, 3"


def _cgroup_ns_image(roots1, roots3, cgroups1=((0, "", "/ns"), (3, "freezer", "/f")), cgroups3=None):
    """The sample image with processes 1 and 3 in one cgroup namespace of their own (named after
    1) whose roots they recorded as `roots1` and `roots3`."""
    from ckptrace.image.records import CLONE_NEWCGROUP

    img = read_image(io.BytesIO(imagegen.build()))
    for t, roots, cgroups in ((img.task(1), roots1, cgroups1), (img.task(3), roots3, cgroups3 or cgroups1)):
        t.own_ns |= CLONE_NEWCGROUP
        t.cgroup_ns, t.cgroup_ns_roots, t.cgroups = 1, list(roots), list(cgroups)
    return img


def test_a_cgroup_namespace_is_refused_only_where_it_cannot_be_made():
    """Restore makes a cgroup namespace of its own again from its recorded roots; it refuses an
    image that lacks them (made before they were recorded), a root no member knew, a hierarchy not
    mounted here, a root not above a member's cgroup, members that disagree, and a namespace
    named after a process not in it."""
    from ckptrace.restorer.cgroupns import problems
    from ckptrace.restorer.ownns import problems as unmade

    mounts = {"": "/sys/fs/cgroup/unified", "freezer": "/sys/fs/cgroup/freezer"}
    ok = [(0, "", "/ns"), (3, "freezer", "/")]
    img = _cgroup_ns_image(ok, ok, cgroups3=((0, "", "/ns/sub"), (3, "freezer", "/f")))
    assert problems(img, mounts) == [] and unmade(img) == []
    # (a process outside the root knows nothing of it there: another member does)
    assert problems(_cgroup_ns_image(ok, [(0, "", ""), (3, "freezer", "/")], cgroups3=((0, "", "/x"),)),
                    mounts) == []

    old = _cgroup_ns_image(ok, ok)
    for t in old.processes():
        t.cgroup_ns, t.cgroup_ns_roots = 0, []
    assert problems(old, mounts) == []
    (why,) = unmade(old)
    assert why.startswith("process 1 (host pid ") and "cgroup namespace of its own (unshare -C, or a container's: " \
        "Docker's on cgroup v2) whose root the image does not hold (made by an older ckptrace: dump it again)" in why
    assert why.endswith("(and 1 other process in one too)"), why

    unknown = [(0, "", ""), (3, "freezer", "/")]
    assert problems(_cgroup_ns_image(unknown, unknown), mounts) == [
        "process 1's cgroup namespace has no known root in the cgroup2 hierarchy: every process in it was in a "
        "cgroup outside that root at the dump"]
    assert problems(_cgroup_ns_image(ok, ok), {"": mounts[""]}) == [
        "process 1 had a cgroup namespace of its own, rooted in the freezer hierarchy too, not mounted here: "
        "restore cannot put its root there"]
    assert problems(_cgroup_ns_image(ok, ok, cgroups3=((0, "", "/nsx"),)), mounts) == [
        "process 3's cgroup2 cgroup /nsx is not under the root /ns of its cgroup namespace"]
    assert problems(_cgroup_ns_image(ok, [(0, "", "/other"), (3, "freezer", "/")]), mounts) == [
        "processes 1 and 3 share a cgroup namespace whose cgroup2 root they disagree on (/ns and /other)"]
    bad = [(0, "", "/../up")]
    assert problems(_cgroup_ns_image(bad, bad, cgroups1=((0, "", "/../up"),)), mounts)[0] == (
        "process 1's cgroup namespace's cgroup2 root /../up leaves its hierarchy ('..': was it dumped from inside "
        "a cgroup namespace?)")
    stray = _cgroup_ns_image(ok, ok)
    stray.task(1).cgroup_ns = stray.task(3).cgroup_ns = 2
    assert problems(stray, mounts) == ["process 1's cgroup namespace is named after process 2, which is not in it"]
    rootless = _cgroup_ns_image(ok, ok)
    for t in rootless.processes():
        t.cgroup_ns_roots = []  # (named, no roots: it was made at the controller's cgroup without a word)
    assert problems(rootless, mounts) == ["process 1's cgroup namespace has no root recorded in any hierarchy"]


def test_a_cgroup_namespace_root_with_controllers_for_its_children_is_refused(tmp_path):
    """cgroup v2 puts no process into a cgroup with controllers in its cgroup.subtree_control
    (a container running systemd sets that up below its root): restore failed making the
    namespace there with EBUSY, after `dump --kill` had let the original be killed."""
    from ckptrace.restorer.cgroupns import problems

    (tmp_path / "ns").mkdir()
    (tmp_path / "ns" / "cgroup.subtree_control").write_text("cpu pids\n")
    mounts = {"": str(tmp_path)}
    ok = [(0, "", "/ns")]
    img = _cgroup_ns_image(ok, ok, cgroups1=((0, "", "/ns/leaf"),), cgroups3=((0, "", "/ns/leaf"),))
    assert problems(img, mounts) == [
        "process 1's cgroup namespace's cgroup2 root /ns has controllers enabled for its children (cpu pids, "
        "cgroup.subtree_control): no process may be put there (EBUSY), and restore makes the namespace from inside it"]
    (tmp_path / "ns" / "cgroup.subtree_control").write_text("\n")
    assert problems(img, mounts) == []


def _time_ns_image(*namespaces):
    """The sample image with its processes' time namespaces (Task.time_ns) as given, in order
    (None: not in one of their own)."""
    from ckptrace.image.records import CLONE_NEWTIME

    img = read_image(io.BytesIO(imagegen.build()))
    for t, ns in zip(img.processes(), namespaces):
        if ns is not None:
            t.own_ns |= CLONE_NEWTIME
            t.time_ns = ns
    return img


def test_a_time_namespace_is_refused_only_where_it_cannot_be_made():
    """Restore makes a time namespace of its own again from its recorded name and offsets; it
    refuses an image that lacks them (made before they were recorded: dump it again), members
    that disagree on the offsets, two processes that made one namespace for their children, one
    whose children's namespace is the dumper's while its own is not, and offsets that would put a
    clock below zero here."""
    from ckptrace.restorer.ownns import problems as unmade
    from ckptrace.restorer.timens import namespaces, order, problems

    s = 10 ** 9
    n1 = (1, 100000 * s, 200000 * s)
    img = _time_ns_image((n1, n1), (n1, n1))
    assert problems(img) == [] and unmade(img) == []
    ((name, ns),) = namespaces(img).items()
    assert (name, ns.offsets, [t.tid for t in ns.members], ns.maker.tid) == (1, n1[1:], [1, 3], 1)

    # one made for its children only: that process makes it, after the one it is in
    n3 = (3, -5 * s, 0)
    img = _time_ns_image((n1, n1), (n1, n3))
    assert problems(img) == []
    made, left = order(namespaces(img))
    assert [(ns.name, ns.maker.tid, [t.tid for t in ns.members]) for ns in made] == [(1, 1, [1, 3]), (3, 3, [])]
    assert left == []
    img = _time_ns_image(((0, 0, 0), n3), (n3, n3))
    assert problems(img) == [] and [(ns.maker.tid, [t.tid for t in ns.members])
                                    for ns in order(namespaces(img))[0]] == [(1, [3])]

    old = _time_ns_image((n1, n1), (n1, n1))
    for t in old.processes():
        t.time_ns, t.time_offsets = None, "monotonic +100000 s, boottime +200000 s"
    assert problems(old) == []
    (why,) = unmade(old)
    assert why.startswith("process 1 (host pid ") and "was in a time namespace of its own, with offsets monotonic " \
        "+100000 s, boottime +200000 s, whose name the image does not hold (made by an older ckptrace: dump it " \
        "again)" in why and why.endswith("(and 1 other process in one too)"), why

    assert problems(_time_ns_image((n1, n1), ((1, 1, 0), (1, 1, 0)))) == [
        "processes 1 and 3 share a time namespace whose offsets they disagree on"]
    assert problems(_time_ns_image(((0, 0, 0), n1), ((0, 0, 0), n1))) == [
        "processes 1 and 3 both made their children in one time namespace that neither was in: only one process "
        "can make a namespace for its children"]
    assert problems(_time_ns_image((n1, (0, 0, 0)))) == [
        "process 1 was in a time namespace of its own and made its children in the dumper's: no call makes that "
        "again"]
    never = -(time.clock_gettime_ns(time.CLOCK_BOOTTIME) + 1000 * s)
    (why,) = problems(_time_ns_image(((1, 0, never), (1, 0, never))))
    assert why.startswith("process 1's time namespace has a boottime offset of -") and why.endswith(
        "the kernel refuses an offset that puts a clock below zero"), why
    # (a damaged image: each made its children's namespace inside the other's)
    assert problems(_time_ns_image(((2, s, s), (1, s, s)), ((1, s, s), (2, s, s)))) == [
        "the time namespaces of processes 1, 3 are each made by a process in another of them: none can be made "
        "first"]


@pytest.mark.parametrize("path, inside, root", [
    ("/a/ns", "/", "/a/ns"), ("/a/ns/sub", "/sub", "/a/ns"), ("/ns", "/ns", "/"), ("/", "/", "/"),
    ("/a/nsub", "/sub", ""),  # (a name's end is no cgroup)
    ("/a/x", "/../x", ""),  # outside the root: from inside, its name is not said
])
def test_a_cgroup_namespace_root_is_the_path_less_what_it_is_inside(path, inside, root):
    from ckptrace.objects.nsinfo import cgroup_ns_root

    assert cgroup_ns_root(path, inside) == root


def test_a_plain_dumps_check_of_its_image_is_advisory(tmp_path):
    """A plain dump reads its image back to say what restore would refuse; an image it cannot
    read (gone since, damaged) is a note that it was not checked, never a failed dump."""
    from ckptrace.dump import restore_refusal

    assert restore_refusal(str(tmp_path / "gone.img")).startswith(
        "whether restore can rebuild the image was not checked: ")
    cut = tmp_path / "cut.img"
    cut.write_bytes(imagegen.build()[:100])
    assert restore_refusal(str(cut)).startswith("whether restore can rebuild the image was not checked: ")
