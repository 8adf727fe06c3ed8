"""End-to-end restore: the C reference workload (tests/workloads/refwork.c) is dumped with
`ckptrace dump --kill`, restored with `ckptrace restore`, and must carry on as if never stopped:
same in-namespace pids and tids, same parents, the log continued at the dumped offset, memory
checksums unchanged, counters continuing, pipe bytes intact. Corrupt or unrestorable images
must be refused without creating anything."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections import defaultdict

import pytest

from nsutil import ns_pids, nspid, wait_for

from ckptrace.objects.files import grab

pytestmark = pytest.mark.kernel

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LINE = re.compile(r"^(\d+) (\d+) (\w+) (\d+) ([0-9a-f]{16}) (.+)$")


def ckptrace(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckptrace", *args], cwd=REPO, capture_output=True,
                          timeout=60, **kw)


def workload_exe(dir_, name: str, *flags: str) -> str:
    """tests/workloads/NAME.c compiled into directory `dir_` (with gcc `flags`): its path."""
    if not shutil.which("gcc"):
        pytest.skip(f"gcc is needed to build the {name} workload")
    out = os.path.join(str(dir_), name)
    subprocess.run(["gcc", "-O1", *flags, "-o", out, os.path.join(HERE, "workloads", f"{name}.c")], check=True)
    return out


@pytest.fixture(scope="module")
def refwork(tmp_path_factory) -> str:
    return workload_exe(tmp_path_factory.mktemp("refwork"), "refwork", "-pthread")


@pytest.fixture(autouse=True)
def no_namespace_outlives_its_test(request):
    """A restore a test expected to be refused but that worked (a regression) would leave its
    namespace running: after each test, the inits of namespaces whose processes name the test's
    tmp directory on their command line (a restored process keeps the original's) are killed."""
    yield
    tmp = request.node.funcargs.get("tmp_path")
    if tmp is None:
        return
    mark = str(tmp).encode()
    me = os.readlink("/proc/self/ns/pid")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if mark not in f.read():
                    continue
            if os.readlink(f"/proc/{d}/ns/pid") != me and nspid(int(d)) == 1:
                os.kill(int(d), signal.SIGKILL)
        except (OSError, LookupError):
            pass


@pytest.fixture
def restored():
    """Host pids of restored inits; killed (with their namespaces) at teardown."""
    inits: list[int] = []
    yield inits
    for pid in inits:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def parse_log(data: bytes) -> list[tuple]:
    assert b"\0" not in data, "the log has a hole: a write landed past the end"
    out = []
    for line in data.decode().splitlines():
        m = LINE.match(line)
        assert m, f"malformed log line {line!r}"
        out.append((int(m[1]), int(m[2]), m[3], int(m[4]), m[5], m[6]))
    return out


def last_ticks(lines) -> dict[tuple[int, int], int]:
    last = {}
    for pid, tid, _, tick, _, _ in lines:
        last[(pid, tid)] = max(tick, last.get((pid, tid), 0))
    return last


def start_workload(pidns, refwork: str, workdir: str):
    w = pidns([refwork, workdir], ready_file=os.path.join(workdir, "ready"), stdin=subprocess.DEVNULL,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    return w


def pidns_inodes(mark) -> set[str]:
    """Pid namespaces holding a process whose command line mentions `mark` (the test's tmp
    dir): other tests on this host may create namespaces meanwhile, ours are recognisable."""
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if str(mark).encode() not in f.read():
                        continue
                out.add(os.readlink(f"/proc/{d}/ns/pid"))
            except OSError:
                pass
    return out


def wait_for_ticks(log: str, after: int, want: int = 6, timeout: float = 15.0) -> bytes:
    """The log once `want` lines follow offset `after` (or the timeout passed), up to its last
    whole line: one being written as it is read is left for the next read."""
    deadline = time.monotonic() + timeout
    while True:
        with open(log, "rb") as f:
            data = f.read()
        data = data[:data.rfind(b"\n") + 1]
        if data[after:].count(b"\n") >= want or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


def log_offset(img: str, log: str) -> int:
    """f_pos of the log's open file in the image: where the restored tasks go on writing."""
    from ckptrace.image.reader import File, read_image

    with open(img, "rb") as f:
        image = read_image(f)
    return next(o.fields["f_pos"] for o in image.objects.values() if isinstance(o, File) and o.name == log)


def logged_before(workdir: str, img: str, name: str = "ref.log") -> bytes:
    """The log as it was when the tasks were frozen, i.e. up to the f_pos the image holds (also
    right for O_APPEND, whose f_pos follows the end). `dump --kill` lets the tasks run briefly
    between releasing and killing them; what they wrote then is not part of the image."""
    log = os.path.join(workdir, name)
    with open(log, "rb") as f:
        return f.read()[:log_offset(img, log)]


def check_continues(workdir: str, before: bytes, res: dict):
    """The restored namespace carries on exactly from `before` (the log at dump time)."""
    log = os.path.join(workdir, "ref.log")
    old = parse_log(before)
    old_last = last_ticks(old)
    # 15 lines, and one of every task at least (a task let go later, or slower on a loaded host,
    # than those that wrote the 15)
    deadline = time.monotonic() + 10
    while True:
        data = wait_for_ticks(log, len(before), want=15)
        new = parse_log(data[len(before):])
        if {(p, t) for p, t, *_ in new} >= set(old_last) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert data[:len(before)] == before, "restore rewrote what was already logged"
    assert new, "the restored tasks wrote nothing"
    # Same in-namespace pids and tids as before the dump.
    assert {(p, t) for p, t, *_ in new} == set(old_last)
    first_new: dict[tuple[int, int], int] = {}
    for pid, tid, _, tick, _, _ in new:
        first_new.setdefault((pid, tid), tick)
    for key, tick in first_new.items():
        assert tick == old_last[key] + 1, f"task {key} went on from tick {tick}, dumped at {old_last[key]}"
    sums = defaultdict(set)
    for pid, _, _, _, csum, _ in old + new:
        sums[pid].add(csum)
    assert all(len(s) == 1 for s in sums.values()), f"memory checksums changed: {dict(sums)}"
    # The pipe: the reader got every byte in order, buffered ones included, and keeps reading.
    reader = [x for x in new if x[2] == "reader"]
    assert reader and all(x[5].endswith("pipe=ok") for x in reader)
    # The kernel's view agrees: pids, tids and parents inside the new namespace.
    init = res["init_pid"]
    assert os.readlink(f"/proc/{init}/ns/pid") == f"pid:[{res['pidns']}]"
    assert nspid(init) == 1
    kids = {nspid(h): h for h in ns_pids(res["pidns"])}
    assert set(kids) == {p for p, _ in old_last}
    for p, host in kids.items():
        with open(f"/proc/{host}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        if p != 1:
            assert ppid == init, f"pid {p}'s parent is {ppid}, not the restored init"
        tids = {nspid(int(t)) for t in os.listdir(f"/proc/{host}/task")}
        assert tids == {t for q, t in old_last if q == p}


def dump_kill(w, img, *options: str) -> None:
    """`dump --kill` of the workload's namespace to `img` (with more `options`), which must succeed."""
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", *options, "-o", str(img))
    assert d.returncode == 0, d.stderr.decode()


def restore_json(img, restored: list) -> dict:
    """`restore --json img`, which must succeed; its init is killed at teardown (`restored`)."""
    r = ckptrace("restore", "--json", str(img))
    assert r.returncode == 0, r.stderr.decode()
    res = json.loads(r.stdout)
    restored.append(res["init_pid"])
    return res


def py_workload(pidns, code: str, tmp_path):
    """Python `code` as pid 1 of a new namespace, given tmp_path as argv[1]; ready once it has
    made tmp_path/ready. Its standard fds are /dev/null."""
    return pidns([sys.executable, "-c", code, str(tmp_path)], ready_file=str(tmp_path / "ready"),
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def migrate(w, img, restored: list) -> int:
    """`dump --kill` the single-process workload `w` to `img` and restore it: the host pid of the
    restored process."""
    dump_kill(w, str(img))
    res = restore_json(str(img), restored)
    (host,) = ns_pids(res["pidns"])
    return host


def check_layout_and_fds(img: str, res: dict):
    """Each restored process has the image's VMAs (addresses, protections), fd numbers, brk."""
    from ckptrace.image.reader import FileTable, read_image

    with open(img, "rb") as f:
        image = read_image(f)
    hosts = {nspid(h): h for h in ns_pids(res["pidns"])}
    for t in image.processes():
        host = hosts[t.tid]
        mm = image.obj(t.mm_objref)
        want = [(v.start, v.end, "".join(c if v.fields["vm_flags"] & b else "-"
                                         for c, b in (("r", 1), ("w", 2), ("x", 4))))
                for v in mm.vmas if v.start < 1 << 47]
        with open(f"/proc/{host}/maps") as f:
            got = []
            for line in f:
                rng, perms = line.split()[:2]
                a, b = (int(x, 16) for x in rng.split("-"))
                if a < 1 << 47:
                    got.append((a, b, perms[:3]))
        assert merged(got) == merged(want), f"process {t.tid}'s memory layout differs"
        table = image.obj(t.files_objref)
        assert isinstance(table, FileTable)
        assert sorted(int(x) for x in os.listdir(f"/proc/{host}/fd")) == sorted(d["fd_descriptor"] for d in table.fds)
        with open(f"/proc/{host}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        assert int(fields[44]) == mm.fields["start_brk"]  # field 47 (start_brk), after pid and comm
        # PR_SET_MM_MAP: the exe link and the argument area are the image's.
        exe = image.obj(mm.fields["exe_objref"])
        assert os.readlink(f"/proc/{host}/exe") == exe.name
        with open(f"/proc/{host}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[0] == exe.name.encode()
    check_threads(image, res)


def check_threads(image, res: dict):
    """Every restored thread has its comm and the image's rseq area and robust futex list
    registered again (glibc registered them at thread start; nothing would after a restore)."""
    from ckptrace.kernel.ptrace import Tracee

    hosts = {}
    for h in ns_pids(res["pidns"]):
        for tid in os.listdir(f"/proc/{h}/task"):
            hosts[nspid(int(tid))] = int(tid)
    registered = robust = 0
    for t in image.tasks:
        # and each thread has its own name back (it was the controller's until PR_SET_NAME)
        with open(f"/proc/{hosts[t.tid]}/task/{hosts[t.tid]}/comm") as f:
            assert f.read().rstrip("\n") == t.comm, t.tid
        tr = Tracee(hosts[t.tid])
        tr.seize()
        tr.interrupt()
        tr.wait_stop()
        try:
            got = tr.get_rseq()
        finally:
            tr.detach()
        assert got == (t.thread["rseq_ptr"], t.thread["rseq_len"], t.thread["rseq_sig"]), t.tid
        registered += bool(got[0])
        # and its robust futex list head (glibc's, in its TCB), also registered once at thread start
        assert _robust_list(hosts[t.tid]) == (t.thread["robust_list"], t.thread["robust_len"]), t.tid
        robust += bool(t.thread["robust_list"])
    assert registered == len(image.tasks), "the workload's threads should all have had rseq areas"
    assert robust == len(image.tasks), "the workload's threads should all have had robust lists"


def merged(ranges):
    """Adjacent ranges with equal permissions as one: the kernel may merge what the image split."""
    out = []
    for a, b, p in ranges:
        if out and out[-1][1] == a and out[-1][2] == p:
            out[-1] = (out[-1][0], b, p)
        else:
            out.append((a, b, p))
    return out


def reader_field(line, name: str) -> int:
    return int(dict(kv.split("=") for kv in line[5].split())[name])


def reader_rc(lines) -> int:
    return max(int(x[5].split()[0].split("=")[1]) for x in lines if x[2] == "reader")


def test_dump_kill_restore_continues(pidns, refwork, tmp_path, restored):
    workdir = str(tmp_path)
    w = start_workload(pidns, refwork, workdir)
    img = str(tmp_path / "ref.img")
    dump_kill(w, img)
    assert not w.pids(), "dump --kill left tasks behind"
    before = logged_before(workdir, img)
    res = restore_json(img, restored)
    assert res["processes"] == 3 and res["threads"] == 5
    check_continues(workdir, before, res)
    check_layout_and_fds(img, res)
    with open(tmp_path / "ref.log", "rb") as f:
        after = parse_log(f.read())
    assert reader_rc(after) > reader_rc(parse_log(before)), "the reader stopped getting pipe bytes"
    # The MAP_SHARED page still joins writer and reader: the reader sees the writer's counter move.
    old_shared = max(reader_field(x, "shared") for x in parse_log(before) if x[2] == "reader")
    new_shared = [reader_field(x, "shared") for x in after[len(parse_log(before)):] if x[2] == "reader"]
    assert len(set(new_shared)) >= 2 and min(new_shared) >= old_shared, (old_shared, new_shared)
    # vDSO time calls work and tell the truth: ~50 ms between the restored reader's ticks.
    mono = [reader_field(x, "mono") for x in after[len(parse_log(before)):] if x[2] == "reader"]
    steps = [b - a for a, b in zip(mono, mono[1:])]
    assert steps and all(30 <= s <= 1000 for s in steps), mono
    # The restored SIGUSR1 handler runs (its address came back with the image's sigactions).
    os.kill(res["init_pid"], signal.SIGUSR1)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with open(tmp_path / "ref.log", "rb") as f:
            lines = parse_log(f.read())
        if any(reader_field(x, "usr1") == 1 for x in lines if x[2] == "reader"):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the restored reader never counted the SIGUSR1 in its handler")


def _states(host: int) -> set[str]:
    out = set()
    for tid in os.listdir(f"/proc/{host}/task"):
        with open(f"/proc/{host}/task/{tid}/status") as f:
            out.add(next(line.split()[1] for line in f if line.startswith("State:")))
    return out


def test_a_stopped_process_comes_back_stopped(pidns, refwork, tmp_path, restored):
    workdir = str(tmp_path)
    w = start_workload(pidns, refwork, workdir)
    victim = max(w.pids())  # a child of init, with its threads
    os.kill(victim, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while _states(victim) != {"T"}:
        assert time.monotonic() < deadline, _states(victim)
        time.sleep(0.02)
    stopped = nspid(victim)
    img = str(tmp_path / "ref.img")
    dump_kill(w, img)
    before = logged_before(workdir, img)
    res = restore_json(img, restored)
    hosts = {nspid(h): h for h in ns_pids(res["pidns"])}
    time.sleep(0.3)  # stopped still, not merely not yet running
    assert _states(hosts[stopped]) == {"T"}
    for p, h in hosts.items():
        if p != stopped:
            assert "T" not in _states(h), (p, _states(h))
    os.kill(hosts[stopped], signal.SIGCONT)  # and then it carries on where it was
    check_continues(workdir, before, res)  # (which waits for a line of every task)


def test_restore_through_a_pipe(pidns, refwork, tmp_path, restored):
    workdir = str(tmp_path)
    w = start_workload(pidns, refwork, workdir)
    py = sys.executable
    img = str(tmp_path / "copy.img")  # tee keeps a copy only to learn the log offset afterwards
    p = subprocess.run(["bash", "-o", "pipefail", "-c",
                        f"{py} -m ckptrace dump --pidns {w.ns} --kill -q -o - | tee {img} | "
                        f"{py} -m ckptrace restore --json -"],
                       cwd=REPO, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    res = json.loads(p.stdout)
    restored.append(res["init_pid"])
    log = os.path.join(workdir, "ref.log")
    data = wait_for_ticks(log, log_offset(img, log), want=15)
    # The whole log must be one history: every task's ticks consecutive, none lost or repeated
    # across the move.
    hist = parse_log(data)
    seen: dict[tuple[int, int], int] = {}
    for pid, tid, _, tick, _, _ in hist:
        assert tick == seen.get((pid, tid), 0) + 1, f"task {(pid, tid)} skipped or repeated tick {tick}"
        seen[(pid, tid)] = tick
    assert all(x[5].endswith("pipe=ok") for x in hist if x[2] == "reader")
    assert set(seen) == {(1, 1), (2, 2), (3, 3), (3, 4), (3, 5)}
    assert nspid(res["init_pid"]) == 1


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_image_is_refused_and_creates_nothing(pidns, refwork, tmp_path, damage):
    w = start_workload(pidns, refwork, str(tmp_path))
    img = tmp_path / "ref.img"
    d = ckptrace("dump", "--pidns", str(w.ns), "--leave-stopped", "-q", "-o", str(img))
    assert d.returncode == 0, d.stderr.decode()
    data = bytearray(img.read_bytes())
    if damage == "flip":
        # The TREE record's length field (after HEADER, 3 BUFFERs, HEADER_ARCH): a corrupt len.
        off = 56 + 3 * 73 + 24 + 4
        data[off:off + 4] = (0x7FFFFFF0).to_bytes(4, "little")
    else:
        data = data[:len(data) * 2 // 3]
    img.write_bytes(bytes(data))
    nss = pidns_inodes(tmp_path)
    r = ckptrace("restore", str(img))
    assert r.returncode != 0
    assert b"bad image" in r.stderr, r.stderr
    assert pidns_inodes(tmp_path) - nss == set(), "a refused restore created a namespace"


def test_restore_as_non_root_is_refused_up_front(root, tmp_path):
    """Not root: one line naming the cause and exit status 1 (AccessDenied) before the image is
    read, as dump does, not whatever step first hits EPERM."""
    import imagegen

    img = tmp_path / "gen.img"
    img.write_bytes(imagegen.build())
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "ckptrace"]
    env = {**os.environ, "PYTHONPATH": REPO}
    for args, stdin in ((["restore", "-"], img), (["restore", "/nonexistent.img"], None)):
        with open(stdin if stdin else os.devnull, "rb") as f:
            p = subprocess.run(nobody + args, cwd=REPO, env=env, stdin=f, capture_output=True, timeout=60)
        err = p.stderr.decode()
        assert p.returncode == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith("ckptrace restore: restore needs root"), err


def test_closed_standard_input_is_refused_in_one_line(root, tmp_path):
    """`restore - <&-` (and `show -`): one line and status 2, not an AttributeError traceback
    on a stdin that is None."""
    for cmd in ("restore", "show"):
        p = subprocess.run(["sh", "-c", 'exec "$@" <&-', "sh", sys.executable, "-m", "ckptrace", cmd, "-"],
                           cwd=REPO, capture_output=True, timeout=60)
        err = p.stderr.decode()
        assert p.returncode == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert f"ckptrace {cmd}: standard input is closed" in err, err


def test_missing_file_is_refused_before_anything_exists(pidns, refwork, tmp_path):
    w = start_workload(pidns, refwork, str(tmp_path))
    img = tmp_path / "ref.img"
    dump_kill(w, str(img))
    os.rename(tmp_path / "ref.log", tmp_path / "moved.log")
    nss = pidns_inodes(tmp_path)
    r = ckptrace("restore", str(img))
    assert r.returncode != 0
    assert b"ref.log" in r.stderr and b"does not exist" in r.stderr, r.stderr
    assert pidns_inodes(tmp_path) - nss == set()
    assert not os.path.exists(tmp_path / "ref.log"), "the refused restore created the log file"


def test_failure_midway_kills_what_was_made(pidns, refwork, tmp_path, monkeypatch):
    """A restore that fails after the tasks exist (here: the 5th mmap) leaves nothing behind."""
    import errno

    from ckptrace import restore
    from ckptrace.errors import KernelError
    from ckptrace.restorer import memory

    w = start_workload(pidns, refwork, str(tmp_path))
    img = str(tmp_path / "ref.img")
    dump_kill(w, img)
    hosts: list[int] = []
    real_map = memory.MemoryRestorer._map

    def failing_map(self, inj, pid, vma):
        hosts.append(pid)
        if len(hosts) == 5:
            raise KernelError("injected failure", errno.EIO)
        return real_map(self, inj, pid, vma)

    monkeypatch.setattr(memory.MemoryRestorer, "_map", failing_map)
    nss = pidns_inodes(tmp_path)
    with pytest.raises(KernelError, match="injected failure"):
        restore.restore(img)
    assert hosts, "the failure was not reached"
    assert not os.path.exists(f"/proc/{hosts[0]}"), "a partly restored task survived"
    assert pidns_inodes(tmp_path) - nss == set(), "the partly restored namespace survived"


PTY_IDLE = r"""
import os, sys, time
m, s = os.openpty()
open(os.path.join(sys.argv[1], "ready"), "w").write(os.ttyname(s))
time.sleep(60)
"""


def test_a_pty_whose_index_is_taken_is_named_and_nothing_created(pidns, tmp_path):
    """A pty comes back with its index or not at all: when someone else holds that index by the
    time of the restore, the refusal names it, and no namespace appears."""
    w = py_workload(pidns, PTY_IDLE, tmp_path)
    index = int((tmp_path / "ready").read_text().rsplit("/", 1)[1])
    img = str(tmp_path / "pty.img")
    dump_kill(w, img)
    held = []
    try:
        while True:  # the lowest free index comes first: take them up to the image's
            m, s = os.openpty()
            held += [m, s]
            got = int(os.ttyname(s).rsplit("/", 1)[1])
            if got >= index:
                break
        assert got == index, f"pty {index} was taken by someone else meanwhile"
        nss = pidns_inodes(tmp_path)
        r = ckptrace("restore", img)
        assert r.returncode != 0
        assert f"pty {index} (/dev/pts/{index}) is in use".encode() in r.stderr, r.stderr
        assert f"held by host pid {os.getpid()}".encode() in r.stderr, r.stderr
        assert pidns_inodes(tmp_path) - nss == set()
    finally:
        for fd in held:
            os.close(fd)


def test_python_interpreter_workload_continues(pidns, tmp_path, restored):
    """The built-in sample workload (a Python parent with a thread, a child, a pipe, an O_APPEND
    log) restored: the interpreter, its thread and its counter carry on."""
    w = pidns([sys.executable, "-m", "ckptrace.sample_workload", str(tmp_path)],
              ready_file=str(tmp_path / "ready"), settle=0.3, cwd=REPO, stdin=subprocess.DEVNULL,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    img = str(tmp_path / "py.img")
    dump_kill(w, img)
    log = tmp_path / "workload.log"
    before = logged_before(str(tmp_path), img, "workload.log")
    old = [int(x.split()[1]) for x in before.decode().splitlines()]
    res = restore_json(img, restored)
    data = wait_for_ticks(str(log), len(before), want=5)
    assert data.startswith(before)
    new = [int(x.split()[1]) for x in data[len(before):].decode().splitlines()]
    # (The first new line may still come from the original, written between dump's release and
    # its kill; the restored counter then goes on from the frozen value, never from scratch.)
    assert len(new) >= 5 and new[1:] == sorted(new[1:]) and min(new) >= old[-1], (old[-3:], new)
    assert new[-1] > new[0], "the worker thread's counter did not move after the restore"
    from ckptrace.image.reader import read_image

    with open(img, "rb") as f:
        want = {t.tid for t in read_image(f).threads_of(1)}
    assert len(want) == 2
    assert {nspid(int(t)) for t in os.listdir(f"/proc/{res['init_pid']}/task")} == want


def test_deleted_executable_comes_back_from_the_image(pidns, refwork, tmp_path, restored):
    """The workload's binary is unlinked before the dump: its text is mapped again from a memfd
    filled with the contents the image carries."""
    exe = str(tmp_path / "refwork-copy")
    shutil.copy(refwork, exe)
    workdir = str(tmp_path)
    w = start_workload(pidns, exe, workdir)
    os.unlink(exe)
    img = str(tmp_path / "ref.img")
    dump_kill(w, img)
    # show says its mappings are of a deleted file (the path holds something else, or nothing)
    text = ckptrace("show", img).stdout.decode()
    assert text.count(exe) > 1 and text.count(exe) == text.count(exe + " (deleted)"), text
    before = logged_before(workdir, img)
    res = restore_json(img, restored)
    check_continues(workdir, before, res)
    assert not os.path.exists(exe)


@pytest.fixture(scope="module")
def fdkinds(tmp_path_factory) -> str:
    return workload_exe(tmp_path_factory.mktemp("fdkinds"), "fdkinds")


BIG_EVENTFD = r"""
import os, sys, time
e = os.eventfd(0, os.EFD_NONBLOCK)
os.eventfd_write(e, (1 << 40) + 3)
os.dup2(e, 9)
open(os.path.join(sys.argv[1], "ready"), "w").close()
while True:
    time.sleep(1)
"""


def _eventfd_count(pid: int, fd: int) -> int:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        return int(next(line.split()[1] for line in f if line.startswith("eventfd-count:")), 16)


def test_an_eventfd_count_beyond_32_bits_comes_back(pidns, tmp_path, restored):
    """An eventfd counts in 64 bits; restore gave the count to eventfd(2), whose initial value is
    an unsigned int: an OverflowError traceback, after `dump --kill` had ended the original."""
    w = py_workload(pidns, BIG_EVENTFD, tmp_path)
    assert _eventfd_count(w.init, 9) == (1 << 40) + 3
    host = migrate(w, tmp_path / "ev.img", restored)
    assert _eventfd_count(host, 9) == (1 << 40) + 3


def test_eventfd_signalfd_timerfd_epoll_fifo_sockets_come_back(pidns, fdkinds, tmp_path, restored):
    w = pidns([fdkinds, str(tmp_path)], ready_file=str(tmp_path / "ready"), stdin=subprocess.DEVNULL,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.25)
    img = str(tmp_path / "fd.img")
    dump_kill(w, img)
    # show says what each holds (their /proc links say only anon_inode:[...])
    shown = ckptrace("show", img).stdout.decode()
    for words in ("anon_inode:[eventfd]  (count 5)", "anon_inode:[signalfd]  (signals SIGUSR2)",
                  "anon_inode:[timerfd]  (CLOCK_MONOTONIC, in ", "anon_inode:[epoll]  (watching fds ",
                  "anon_inode:[inotify]  (2 watches: ", "/sock listening)"):
        assert words in shown, (words, shown)
    log = tmp_path / "fd.log"
    before = logged_before(str(tmp_path), img, "fd.log")
    timers = [int(x.split()[1]) for x in before.decode().splitlines() if x.startswith("timer ")]
    res = restore_json(img, restored)
    # The timerfd goes on firing, through the restored epoll, counting on from the dumped total.
    data = wait_for_ticks(str(log), len(before), want=3)
    new = [int(x.split()[1]) for x in data[len(before):].decode().splitlines() if x.startswith("timer ")]
    assert len(new) >= 3 and new == sorted(new) and new[0] > (timers[-1] if timers else 0), (timers, new)
    # SIGUSR2 reaches the restored signalfd (blocked mask restored, signalfd in the epoll); the
    # eventfd still counts 5; the FIFO still holds "hello".
    worker = next(p for p in ns_pids(res["pidns"]) if nspid(p) == 2)
    (tmp_path / "go").touch()
    os.kill(worker, signal.SIGUSR2)
    deadline = time.monotonic() + 15
    while b"go " not in log.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    go = [x for x in log.read_text().splitlines() if x.startswith("go ")]
    assert go == [f"go ev=5 fifo=hello sig={int(signal.SIGUSR2)} pair=ping"]
    # The inotify watch is back with its wd, its events reaching the task through the epoll.
    (tmp_path / "probe1").touch()
    deadline = time.monotonic() + 15
    while b"created probe1" not in log.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [x for x in log.read_text().splitlines() if x.startswith("created ")] == ["created probe1 wd=3"]
    # The unix listener is bound and listening again, its accepts driven by the restored epoll.
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(3)
        c.connect(str(tmp_path / "sock"))
        assert c.recv(16) == b"hi"


SESSIONS = r"""
import os, sys, time
d = sys.argv[1]
if os.fork() == 0:
    os.setsid()                      # pid 2 leads a session
    b = os.fork()
    if b == 0:
        os.setpgid(0, 0)             # pid 3 leads a group in it
        time.sleep(100)
    if os.fork() == 0:
        time.sleep(0.1)
        os.setpgid(0, b)             # pid 4 joins pid 3's group
        time.sleep(100)
    time.sleep(0.3)
    open(d + "/ready", "w").close()
    time.sleep(100)
while True:
    time.sleep(1)
"""


def ns_ids(hostpid: int) -> tuple[int, int, int, int]:
    """(pid, ppid-in-ns, pgid, sid) as the task's own namespace sees them."""
    with open(f"/proc/{hostpid}/status") as f:
        st = dict(line.split(":", 1) for line in f if ":" in line)
    with open(f"/proc/{hostpid}/stat") as f:
        host_ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    ppid = nspid(host_ppid) if _same_ns(host_ppid, hostpid) else 0
    return (int(st["NSpid"].split()[-1]), ppid, int(st["NSpgid"].split()[-1]), int(st["NSsid"].split()[-1]))


def _same_ns(a: int, b: int) -> bool:
    try:
        return os.readlink(f"/proc/{a}/ns/pid") == os.readlink(f"/proc/{b}/ns/pid")
    except OSError:
        return False


def test_sessions_and_process_groups_come_back(pidns, tmp_path, restored):
    w = py_workload(pidns, SESSIONS, tmp_path)
    want = sorted(ns_ids(p) for p in w.pids())
    assert [x[0] for x in want] == [1, 2, 3, 4] and want[3][2] == 3 and want[1][3] == 2, want
    img = str(tmp_path / "s.img")
    dump_kill(w, img)
    res = restore_json(img, restored)
    got = sorted(ns_ids(p) for p in ns_pids(res["pidns"]))
    # Inner sessions and groups come back as dumped; init's were outside (0), and the restored
    # init leads a session and group of its own (1) instead of staying in the restorer's.
    assert want[0] == (1, 0, 0, 0)
    assert got == [(1, 0, 1, 1)] + want[1:]


DEPARTED_LEADERS = r"""
import os, sys, time
d = sys.argv[1]
def mark(name):
    open(d + "/" + name, "w").close()
def wait(name):
    while not os.path.exists(d + "/" + name):
        time.sleep(0.01)
if os.fork() == 0:
    # forks a child, then leads a session of its own: the child stays in init's session
    if os.fork() == 0:
        time.sleep(100)
    os.setsid()
    mark("a")
    time.sleep(100)
wait("a")
if os.fork() == 0:
    # a daemon's double fork: the session (and group) leader exits, its members live on
    os.setsid()
    if os.fork() == 0:
        if os.fork() == 0:           # forked by a member of the leaderless session
            time.sleep(100)
        time.sleep(100)
    time.sleep(0.2)
    os._exit(0)
time.sleep(0.1)
os.wait()
if os.fork() == 0:
    # a daemon that forks a worker, then makes a group of its own, its session leader gone:
    # the worker alone keeps the session's group
    os.setsid()
    if os.fork() == 0:
        if os.fork() == 0:
            time.sleep(100)
        os.setpgid(0, 0)
        time.sleep(100)
    time.sleep(0.2)
    os._exit(0)
time.sleep(0.1)
os.wait()
if os.fork() == 0:
    # a double fork inside a session whose leader lives on: the grandchild is init's child now
    os.setsid()
    if os.fork() == 0:
        if os.fork() == 0:
            time.sleep(100)
        os._exit(0)
    os.wait()
    mark("ready")
    time.sleep(100)
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(1)
"""


def test_sessions_whose_leader_exited_and_setsid_after_fork_come_back(pidns, tmp_path, restored):
    w = py_workload(pidns, DEPARTED_LEADERS, tmp_path)
    want = sorted(ns_ids(p) for p in w.pids())
    assert len(want) == 9, want
    pids = {x[0] for x in want}
    daemon = [x for x in want if x[1] == 1 and x[3] not in pids | {0}]
    assert len(daemon) == 2 and daemon[0][2] == daemon[0][3], want  # reparented, leader gone
    assert daemon[1][2] == daemon[1][0], want  # the second made a group of its own
    assert [x for x in want if x[1] == daemon[1][0]][0][2] == daemon[1][3], want  # its worker did not
    relayed = [x for x in want if x[1] == 1 and x[3] in pids - {1, x[0]}]
    assert len(relayed) == 1, want  # reparented, leader alive
    kept = [x for x in want if x[3] == 0 and x[1] not in (0, 1)]
    assert len(kept) == 1, want  # forked before its parent's setsid
    img = str(tmp_path / "d.img")
    dump_kill(w, img)
    res = restore_json(img, restored)
    got = sorted(ns_ids(p) for p in ns_pids(res["pidns"]))
    # outside groups and sessions (0) become the restored init's (1), the rest as dumped; no
    # stand-in is left behind
    assert got == [(pid, ppid, pgid or 1, sid or 1) for pid, ppid, pgid, sid in want]


ORPHANED_GROUP = r"""
import os, sys, time
if os.fork() == 0:
    os.setpgid(0, 0)
    if os.fork() == 0:
        time.sleep(100)
    os._exit(0)
time.sleep(0.2)
os.wait()
open(sys.argv[1] + "/ready", "w").close()
while True:
    time.sleep(1)
"""


def _pending(host: int) -> int:
    """The process's shared and own pending signal masks, or'ed."""
    with open(f"/proc/{host}/status") as f:
        st = dict(line.split(":", 1) for line in f if ":" in line)
    return int(st["ShdPnd"], 16) | int(st["SigPnd"], 16)


def test_group_whose_leader_exited_comes_back(pidns, tmp_path, restored):
    """A group named after an exited process, in a session it does not lead (a pipeline whose
    first command ended): its member joins it again, through a stand-in that does not stay, and
    whose end sends nobody a SIGCHLD."""
    w = py_workload(pidns, ORPHANED_GROUP, tmp_path)
    want = sorted(ns_ids(p) for p in w.pids())
    assert want == [(1, 0, 0, 0), (3, 1, 2, 0)], want
    img = str(tmp_path / "g.img")
    dump_kill(w, img)
    res = restore_json(img, restored)
    hosts = ns_pids(res["pidns"])
    assert sorted(ns_ids(p) for p in hosts) == [(1, 0, 1, 1), (3, 1, 2, 1)]
    assert all(_pending(p) & (1 << (signal.SIGCHLD - 1)) == 0 for p in hosts)


APPEND_READER = r"""
import os, sys, time
d = sys.argv[1]
with open(d + "/data", "w") as f:
    f.write("0123456789")
fd = os.open(d + "/data", os.O_RDWR | os.O_APPEND)
assert fd == 3
os.read(fd, 4)
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""


def _fd_pos(host: int, fd: int) -> int:
    with open(f"/proc/{host}/fdinfo/{fd}") as f:
        return int(f.readline().split()[1])


def test_append_mode_file_keeps_its_read_offset(pidns, tmp_path, restored):
    w = py_workload(pidns, APPEND_READER, tmp_path)
    (host,) = w.pids()
    assert _fd_pos(host, 3) == 4
    host = migrate(w, tmp_path / "a.img", restored)
    assert _fd_pos(host, 3) == 4


READ_IMPLIES_EXEC = r"""
import ctypes, mmap, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.personality(0x0400000)          # READ_IMPLIES_EXEC: from now on, readable maps are executable
m = mmap.mmap(-1, 4 * 4096)          # rwx, made after
open(sys.argv[1] + "/ready", "w").close()
while True:
    time.sleep(1)
"""


def _perms(host: int) -> list[tuple[int, int, str]]:
    out = []
    with open(f"/proc/{host}/maps") as f:
        for line in f:
            rng, perms = line.split()[:2]
            if "[v" not in line:
                a, b = rng.split("-")
                out.append((int(a, 16), int(b, 16), perms))
    return out


def _perm_at(maps: list[tuple[int, int, str]], addr: int) -> str:
    return next((p for a, b, p in maps if a <= addr < b), "")


def test_read_implies_exec_personality_does_not_make_everything_executable(pidns, tmp_path, restored):
    w = py_workload(pidns, READ_IMPLIES_EXEC, tmp_path)
    (host,) = w.pids()
    want = _perms(host)
    assert any(p == "rw-p" for *_, p in want) and any(p == "rwxs" for *_, p in want), want
    host = migrate(w, tmp_path / "p.img", restored)
    got = _perms(host)
    # (adjacent mappings may come back merged: compared address by address)
    assert [(hex(a), _perm_at(got, a)) for a, _, _ in want] == [(hex(a), p) for a, _, p in want]
    with open(f"/proc/{host}/personality") as f:
        assert int(f.read(), 16) & 0x0400000


CHROOTED = r"""
#include <fcntl.h>
#include <unistd.h>
int main(void) {
    char b[8];
    int fd = open("/data.txt", O_RDONLY);   /* the container's, not the host's */
    if (fd != 3 || read(fd, b, 4) != 4)
        return 1;
    close(open("/ready", O_CREAT | O_WRONLY, 0644));
    for (;;)
        pause();
}
"""


@pytest.fixture
def chroot_dir(tmp_path):
    """A directory holding a static program that reads its own /data.txt, run chroot'ed there."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing")
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "p.c").write_text(CHROOTED)
    subprocess.run(["gcc", "-static", "-O1", "-o", str(root / "prog"), str(tmp_path / "p.c")], check=True)
    (root / "data.txt").write_text("inside the chroot")
    return root


def _where(host: int) -> tuple[str, str, str, int]:
    return (os.readlink(f"/proc/{host}/root"), os.readlink(f"/proc/{host}/exe"),
            os.readlink(f"/proc/{host}/fd/3"), _fd_pos(host, 3))


def test_chrooted_namespace_comes_back_in_its_root_or_under_root(pidns, chroot_dir, tmp_path, restored):
    """A chroot'ed init comes back chroot'ed, with its own files (its /data.txt: the dump used to
    write paths as seen from its root, and restore opened the host's /data.txt, silently), or
    with a copy of them given with --root; its stdin, outside its root, stays the host's."""
    root = str(chroot_dir)
    w = pidns(["chroot", root, "/prog"], ready_file=str(chroot_dir / "ready"),
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (host,) = w.pids()
    want = (root, f"{root}/prog", f"{root}/data.txt", 4)
    assert _where(host) == want and os.readlink(f"/proc/{host}/fd/0") == "/dev/null"
    img = str(tmp_path / "c.img")
    dump_kill(w, img)
    shown = ckptrace("show", img)
    assert b"cwd / " not in shown.stdout and f"root {root} ".encode() in shown.stdout, shown.stdout
    # another copy of the files, given with --root
    copy = str(tmp_path / "copy")
    shutil.copytree(root, copy)
    r = ckptrace("restore", "--json", "--root", copy, img)
    assert r.returncode == 0, r.stderr.decode()
    res = json.loads(r.stdout)
    restored.append(res["init_pid"])
    (host,) = ns_pids(res["pidns"])
    assert _where(host) == (copy, f"{copy}/prog", f"{copy}/data.txt", 4)
    assert os.readlink(f"/proc/{host}/fd/0") == "/dev/null"
    # by default, where it was
    res = restore_json(img, restored)
    (host,) = ns_pids(res["pidns"])
    assert _where(host) == want
    # and neither there nor given: said, nothing made
    os.rename(root, root + ".gone")
    nss = pidns_inodes(tmp_path)
    for args, why in (((), f"process 1's root '{root}' does not exist here"),
                      (("--root", root), f"--root '{root}' does not exist")):
        r = ckptrace("restore", *args, img)
        assert r.returncode != 0 and why in r.stderr.decode(), r.stderr
    assert pidns_inodes(tmp_path) - nss == set()


ODD_NAMES = r"""
import ctypes, mmap, os, sys, threading, time
d = sys.argv[1].encode()
libc = ctypes.CDLL(None)
path = d + b"/map\xffped.bin"
with open(path, "wb") as f:
    f.write(b"x" * 4096)
fd = os.open(path, os.O_RDONLY)
m = mmap.mmap(fd, 4096, prot=mmap.PROT_READ)
os.close(fd)                                 # named by the mapping only
def worker():
    libc.prctl(15, b"t\xfe\n", 0, 0, 0)     # a thread's name, not UTF-8 either, a newline its last byte
    time.sleep(1000)
threading.Thread(target=worker, daemon=True).start()
time.sleep(0.1)
libc.prctl(15, b"a\xff", 0, 0, 0)           # PR_SET_NAME
open(d + b"/ready", "w").close()
while True:
    time.sleep(1)
"""


def _comms(host: int) -> list[bytes]:
    out = []
    for tid in sorted(os.listdir(f"/proc/{host}/task"), key=int):
        with open(f"/proc/{host}/task/{tid}/comm", "rb") as f:
            out.append(f.read())
    return out


def test_names_that_are_not_utf8_dump_and_restore(pidns, tmp_path, restored):
    """Process and thread names and mapped file paths are bytes: a dump read the maps as text and
    died on a mapped file's name; a restore read the tasks' status as text and died on a name,
    after `dump --kill` had ended the original. A name's own last newline stays (the dump took
    off every newline, not only the one /proc adds)."""
    w = py_workload(pidns, ODD_NAMES, tmp_path)
    (host,) = w.pids()
    want = _comms(host)
    assert want == [b"a\xff\n", b"t\xfe\n\n"]
    host = migrate(w, tmp_path / "odd.img", restored)
    assert _comms(host) == want
    with open(f"/proc/{host}/maps", "rb") as f:
        assert b"map\xffped.bin" in f.read()


IO_SIGNALS = r"""
import fcntl, os, signal, sys, threading, time
d = sys.argv[1]
log = open(d + "/log", "a", buffering=1)
r, w = os.pipe()
def on_io(sig, frame):
    os.read(r, 16)
    log.write(f"io {sig}\n")
signal.signal(signal.SIGRTMIN + 5, on_io)
signal.signal(signal.SIGUSR1, lambda s, f: os.write(w, b"x"))
fcntl.fcntl(r, fcntl.F_SETOWN, os.getpid())
fcntl.fcntl(r, 10, signal.SIGRTMIN + 5)          # F_SETSIG
fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC | os.O_NONBLOCK)
os.write(w, b"x")                                 # one before the dump
time.sleep(0.2)
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""


def test_io_signal_owner_signal_and_o_async_come_back(pidns, tmp_path, restored):
    """A pipe read end with O_ASYNC, an owner (F_SETOWN) and a signal (F_SETSIG): data written
    into the pipe after restore still raises that signal in its owner (they used to be dropped:
    no signal at all)."""
    w = py_workload(pidns, IO_SIGNALS, tmp_path)
    log = tmp_path / "log"
    sig = int(signal.SIGRTMIN) + 5
    assert log.read_text().splitlines() == [f"io {sig}"]
    host = migrate(w, tmp_path / "io.img", restored)
    assert os.readlink(f"/proc/{host}/fd/4").startswith("pipe:")  # r (the log is 3)
    with open(f"/proc/{host}/fdinfo/4") as f:
        assert int(f.read().split("flags:")[1].split()[0], 8) & os.O_ASYNC
    os.kill(host, signal.SIGUSR1)
    deadline = time.monotonic() + 15
    while len(log.read_text().splitlines()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.read_text().splitlines() == [f"io {sig}"] * 2


def test_io_signals_name_the_processs_own_fd(pidns, tmp_path, restored):
    """The I/O signal's si_fd is the number of the fd O_ASYNC was set through: after restore it
    must be the process's (20), not that of the restorer's copy of the file."""
    exe = workload_exe(tmp_path, "sigio")
    w = pidns([exe, str(tmp_path)], ready_file=str(tmp_path / "ready"),
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "log"
    assert log.read_text().splitlines() == ["io fd=20"]
    host = migrate(w, tmp_path / "sigio.img", restored)
    os.kill(host, signal.SIGUSR1)
    deadline = time.monotonic() + 15
    while len(log.read_text().splitlines()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.read_text().splitlines() == ["io fd=20"] * 2


UNIX_LISTENER = r"""
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1] + "/l.sock")
s.listen(8)
open(sys.argv[1] + "/ready", "w").close()
while True:
    c, _ = s.accept()
    c.sendall(b"hi")
    c.close()
"""


def test_a_live_unix_socket_path_is_not_taken_from_its_owner(pidns, tmp_path, restored):
    """Restore rebinds a listener at its path, removing a dead original's socket file first: it
    removed a live one's too (the original still running after a dump without --kill), which
    nobody could reach again, even when the restore then failed."""
    import socket

    w = py_workload(pidns, UNIX_LISTENER, tmp_path)
    path = tmp_path / "l.sock"
    ino = path.stat().st_ino
    img = str(tmp_path / "l.img")
    d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", img)
    assert d.returncode == 0, d.stderr.decode()
    nss = pidns_inodes(tmp_path)
    r = ckptrace("restore", "--json", img)
    if r.returncode == 0:  # (the bug: killed at teardown rather than left running)
        restored.append(json.loads(r.stdout)["init_pid"])
    assert r.returncode != 0 and b"is in use by a live socket" in r.stderr, r.stderr
    assert pidns_inodes(tmp_path) - nss == set()
    assert path.stat().st_ino == ino
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(3)
        c.connect(str(path))
        assert c.recv(2) == b"hi"  # the original still answers


OTHER_NETNS_SERVER = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(8)
open(sys.argv[2], "w").close()
while True:
    c, _ = s.accept()
    c.sendall(b"other")
    c.close()
"""


def test_a_socket_path_live_in_another_network_namespace_is_left_alone(pidns, tmp_path, restored):
    """A unix path socket is reachable from every network namespace, but restore asked only its
    own (/proc/net/unix, sock_diag) whether a socket was bound at the path: a server in a network
    namespace of its own looked dead, its socket file was unlinked and the restored listener
    bound there, leaving that server unreachable for good. Now the restore is refused, naming
    the server's pid, and the server still answers."""
    import socket

    w = py_workload(pidns, UNIX_LISTENER, tmp_path)
    path = tmp_path / "l.sock"
    img = str(tmp_path / "l.img")
    dump_kill(w, img)
    path.unlink()  # (the dead original's file)
    up = tmp_path / "other-up"
    other = subprocess.Popen(["unshare", "-n", sys.executable, "-c", OTHER_NETNS_SERVER, str(path), str(up)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not up.exists():
            assert other.poll() is None and time.monotonic() < deadline, other.stderr.read()
            time.sleep(0.02)
        assert os.readlink(f"/proc/{other.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        ino = path.stat().st_ino
        nss = pidns_inodes(tmp_path)
        r = ckptrace("restore", "--json", img)
        if r.returncode == 0:  # (the bug: killed at teardown rather than left running)
            restored.append(json.loads(r.stdout)["init_pid"])
        err = r.stderr.decode()
        assert r.returncode != 0 and "is in use by a live socket" in err, err
        assert f"host pid {other.pid}" in err and "EADDRINUSE" in err and len(err.splitlines()) == 1, err
        assert pidns_inodes(tmp_path) - nss == set()
        assert path.stat().st_ino == ino
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(3)
            c.connect(str(path))
            assert c.recv(5) == b"other"  # the other namespace's server still answers
    finally:
        other.kill()
        other.wait()


PORTS_AND_PATH = r"""
import os, socket, sys, time
d = sys.argv[1]
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
u.bind(d + "/l.sock")
u.listen(8)
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(5)
us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
us.bind(("127.0.0.1", 0))
with open(d + "/ports", "w") as f:
    f.write(f"{ls.getsockname()[1]} {us.getsockname()[1]} {ls.fileno()} {us.fileno()}")
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""


def test_taken_ports_are_all_named_before_anything_is_made(pidns, tmp_path, restored):
    """A TCP port and a UDP port of the image taken by other programs: the restore found the
    first clash only while making the files, after it had bound the unix listener at its path,
    and left that new socket file behind. The validation step now tries every address, names
    each that is taken in one error, and nothing is made."""
    import socket

    w = py_workload(pidns, PORTS_AND_PATH, tmp_path)
    tcp, udp, tcp_fd, udp_fd = (int(x) for x in (tmp_path / "ports").read_text().split())
    img = str(tmp_path / "p.img")
    dump_kill(w, img)
    (tmp_path / "l.sock").unlink()
    with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        t.bind(("127.0.0.1", tcp))
        t.listen(1)
        u.bind(("127.0.0.1", udp))
        nss = pidns_inodes(tmp_path)
        r = ckptrace("restore", img)
        if r.returncode == 0:
            pytest.fail("restored while its ports were taken")
        err = r.stderr.decode()
        assert len(err.splitlines()) == 1 and err.count("EADDRINUSE") == 2, err
        assert f"pid 1 fd {tcp_fd} (an inet socket (tcp 127.0.0.1:{tcp} listening))" in err, err
        assert f"pid 1 fd {udp_fd} (an inet socket (udp 127.0.0.1:{udp}))" in err, err
        assert pidns_inodes(tmp_path) == nss
        assert not os.path.lexists(tmp_path / "l.sock")
    # free again: the same image restores, the listener at its path
    restore_json(img, restored)
    assert (tmp_path / "l.sock").is_socket()


LISTENER_WITH_FLOCK = r"""
import fcntl, os, socket, sys, time
d = sys.argv[1]
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
u.bind(d + "/l.sock")
u.listen(8)
a = open(d + "/a.lock", "w")
fcntl.flock(a, fcntl.LOCK_EX)
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""


def test_a_failed_restore_removes_the_socket_files_it_bound(pidns, tmp_path, restored):
    """A restore failing after the files are made (here at the file locks, the last step: the
    lock is taken by another program meanwhile) left the socket file it had bound at the
    listener's path, a dead socket's file in the way of any other program binding there. It is
    removed now, and the lock's error names the file and who holds the lock."""
    import fcntl

    w = py_workload(pidns, LISTENER_WITH_FLOCK, tmp_path)
    img = str(tmp_path / "f.img")
    dump_kill(w, img)
    sock = tmp_path / "l.sock"
    sock.unlink()
    with open(tmp_path / "a.lock", "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        nss = pidns_inodes(tmp_path)
        r = ckptrace("restore", img)
        if r.returncode == 0:
            pytest.fail("restored while its lock was held")
        err = r.stderr.decode()
        assert len(err.splitlines()) == 1 and "EAGAIN" in err, err
        assert f"({tmp_path / 'a.lock'}): FLOCK lock is held by host pid {os.getpid()} now" in err, err
        assert pidns_inodes(tmp_path) == nss
        assert not os.path.lexists(sock)
        # a socket file someone else put there meanwhile is not ours to remove
        # (FileSet.unbind checks the inode it made)
    restore_json(img, restored)
    assert sock.is_socket()


PACKET_PIPE = r"""
import os, signal, sys, time
d = sys.argv[1]
log = open(d + "/log", "a", buffering=1)
r, w = os.pipe2(os.O_DIRECT)          # packet mode: each write is one read
def exchange(sig, frame):
    os.write(w, b"a" * 5)
    os.write(w, b"b" * 5)
    log.write(f"{len(os.read(r, 100))} {len(os.read(r, 100))}\n")
signal.signal(signal.SIGUSR1, exchange)
exchange(0, None)
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""


def test_a_packet_mode_pipe_stays_one(pidns, tmp_path, restored):
    w = py_workload(pidns, PACKET_PIPE, tmp_path)
    log = tmp_path / "log"
    assert log.read_text().splitlines() == ["5 5"]
    host = migrate(w, tmp_path / "pk.img", restored)
    os.kill(host, signal.SIGUSR1)
    deadline = time.monotonic() + 15
    while len(log.read_text().splitlines()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.read_text().splitlines() == ["5 5", "5 5"]  # not "10 ...": a plain pipe


FIFO_WRITER = r"""
import os, sys, time
d = sys.argv[1]
fd = os.open(d + "/fifo", os.O_WRONLY)   # the reader is the test, outside the namespace
os.write(fd, b"A\nB\n")
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""

FIFO_READER = r"""
import os, sys, time
d = sys.argv[1]
fd = os.open(d + "/fifo", os.O_RDONLY | os.O_NONBLOCK)   # the writer is the test, outside
open(d + "/ready", "w").close()
while not os.path.exists(d + "/go"):     # a slow reader: nothing read until told
    time.sleep(0.02)
got = b""
while True:
    try:
        chunk = os.read(fd, 4096)
    except BlockingIOError:
        break
    if not chunk:
        break
    got += chunk
with open(d + "/got.tmp", "wb") as f:
    f.write(got)
os.rename(d + "/got.tmp", d + "/got")
while True:
    time.sleep(1)
"""


def pipe_bytes(fd: int) -> int:
    """Bytes in the pipe `fd` is an end of (FIONREAD works on either end)."""
    import fcntl
    import termios

    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]


def restore_stderr(img, restored: list) -> str:
    """`restore --json img`, which must succeed: what it said on stderr."""
    r = ckptrace("restore", "--json", str(img))
    assert r.returncode == 0, r.stderr.decode()
    restored.append(json.loads(r.stdout)["init_pid"])
    return r.stderr.decode()


def left_alone(err: str) -> bool:
    """Whether restore's stderr says it left a live FIFO's bytes in place (one note line)."""
    return any(line.startswith("ckptrace restore: pid 1 fd ") and "not written again" in line
               for line in err.splitlines())


def test_fifo_bytes_an_outside_reader_kept_come_once(pidns, tmp_path, restored):
    """A FIFO open outside the namespace too keeps its pipe, and the bytes in it, through dump
    --kill (the kernel frees a FIFO's pipe only once nobody has it open): restore must not write
    the image's copy of them into that same pipe again."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        w = py_workload(pidns, FIFO_WRITER, tmp_path)
        img = tmp_path / "fw.img"
        dump_kill(w, img)
        assert pipe_bytes(reader) == 4  # still there, the writer gone
        err = restore_stderr(img, restored)
        assert os.read(reader, 100) == b"A\nB\n"  # not "A\nB\nA\nB\n"
        with pytest.raises(BlockingIOError):  # the restored writer holds the pipe: no EOF
            os.read(reader, 100)
        assert left_alone(err), err
    finally:
        os.close(reader)


@pytest.mark.parametrize("kill", [True, False], ids=["kill", "original-running"])
def test_fifo_bytes_from_an_outside_writer_come_once(pidns, tmp_path, restored, kill):
    """The other direction: a host writer feeding a FIFO whose reader in the namespace had not
    read yet. Its unread bytes are in the live pipe (kept by the writer after dump --kill, and by
    the original reader itself when it still runs): the restored reader gets them once."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    w = py_workload(pidns, FIFO_READER, tmp_path)
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(writer, b"one\ntwo\n")
        img = tmp_path / "fr.img"
        if kill:
            dump_kill(w, img)
        else:
            d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", str(img))
            assert d.returncode == 0, d.stderr.decode()
        err = restore_stderr(img, restored)
        assert pipe_bytes(writer) == 8  # not 16
        assert left_alone(err), err
        if not kill:
            w.kill()  # else the original's reader, told to go as well, may take the bytes
        (tmp_path / "go").touch()
        deadline = time.monotonic() + 5
        while not (tmp_path / "got").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "got").read_bytes() == b"one\ntwo\n"
    finally:
        os.close(writer)


DGRAM_CLIENT = r"""
import os, socket, sys, time
d = sys.argv[1]
path = d + "/dg.sock"
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
srv.bind(path)
if os.fork() == 0:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    c.connect(path)                       # a syslog-style client: connected, the server not back
    n = 0
    while True:
        try:
            c.send(b"%d" % n)
        except OSError as exc:
            open(d + "/client-error", "w").write(repr(exc))
        n += 1
        time.sleep(0.05)
log = open(d + "/log", "a", buffering=1)
while True:
    log.write(srv.recv(64).decode() + "\n")
    if not os.path.exists(d + "/ready"):
        open(d + "/ready", "w").close()
"""


def test_a_datagram_client_stays_connected_to_its_bound_server(pidns, tmp_path, restored):
    """A client connect()ed to a bound datagram server (peer_ino set, the server's 0) came back as
    half of a socketpair nobody else held: every send failed with ENOTCONN, silently to restore."""
    w = py_workload(pidns, DGRAM_CLIENT, tmp_path)
    img = str(tmp_path / "dg.img")
    dump_kill(w, img)
    before = len((tmp_path / "log").read_text().splitlines())
    restore_json(img, restored)
    deadline = time.monotonic() + 15
    while len((tmp_path / "log").read_text().splitlines()) < before + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (tmp_path / "client-error").exists(), (tmp_path / "client-error").read_text()
    assert len((tmp_path / "log").read_text().splitlines()) >= before + 5


SHARED_FILE_TABLE = r"""
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
# clone(CLONE_FILES | SIGCHLD) without CLONE_VM: a forked child that shares its parent's fd table
if libc.syscall(56, 0x400 | signal.SIGCHLD, 0, 0, 0, 0) == 0:
    while True:
        time.sleep(1)
open(sys.argv[1] + "/ready", "w").close()
while True:
    time.sleep(1)
"""


def test_kill_dump_refuses_what_restore_refuses_and_leaves_it_running(pidns, tmp_path):
    """Processes sharing one file table cannot be restored (they would come back with two):
    `dump --kill` says so before killing anything, with restore's own words."""
    w = py_workload(pidns, SHARED_FILE_TABLE, tmp_path)
    before = sorted(w.pids())
    assert len(before) == 2
    img = str(tmp_path / "f.img")
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", img)
    assert d.returncode != 0
    err = d.stderr.decode()
    assert "not killing" in err and "processes 1 and 2 share one file table" in err, err
    assert sorted(w.pids()) == before and all(_states(p) <= {"S", "R"} for p in before)
    d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", img)
    assert d.returncode == 0, d.stderr.decode()
    r = ckptrace("restore", img)
    assert r.returncode != 0 and b"share one file table" in r.stderr, r.stderr


STOPPED_JOB = "sleep 1000 & kill -STOP $!; while true; do sleep 1; done"


def _cmdline(host: int) -> bytes:
    with open(f"/proc/{host}/cmdline", "rb") as f:
        return f.read()


def test_restored_namespace_outlives_the_restoring_shell_with_a_stopped_job(pidns, tmp_path, restored):
    """The image's init had its session and group outside the namespace (sid/pgid 0 inside). The
    restored init must lead a session of its own, not sit in the restorer's group: a shell script
    running `ckptrace restore` in its own job exits, the group it leaves behind would be orphaned
    with a stopped member, and the kernel would SIGHUP (then SIGCONT) the whole restored tree."""
    w = pidns(["sh", "-c", STOPPED_JOB], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)
    # (the shell stops its child before that child has exec'd sleep: it is a stopped `sh`)
    deadline = time.monotonic() + 5
    while not any(nspid(p) == 2 and _states(p) == {"T"} for p in w.pids()):
        assert time.monotonic() < deadline, "the workload's background job never stopped"
        time.sleep(0.02)
    img = str(tmp_path / "stopped.img")
    dump_kill(w, img)
    out = tmp_path / "res.json"
    # A non-interactive script, run as a job of its own (process_group=0: its own group, our
    # session), as an interactive shell would run it: its exit orphans the group it leads.
    script = f"{sys.executable} -m ckptrace restore --json {img} > {out}; true"
    r = subprocess.run(["sh", "-c", script], cwd=REPO, process_group=0, timeout=60,
                       stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr.decode()
    res = json.loads(out.read_text())
    restored.append(res["init_pid"])
    time.sleep(0.5)  # a SIGHUP sent at the script's exit would have been delivered by now
    hosts = {nspid(h): h for h in ns_pids(res["pidns"])}
    assert 1 in hosts, "the restored init is gone"
    assert 2 in hosts, "the stopped job is gone"
    stopped = hosts[2]
    assert _states(stopped) == {"T"}
    init = hosts[1]
    assert ns_ids(init)[2:] == (1, 1), "init does not lead a session and group of its own"
    assert os.getsid(init) != os.getsid(0) and os.getpgid(init) != os.getpgrp()
    with open(f"/proc/{init}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[4]) == 0, "init has a controlling terminal"
    # pgid/sid 0 (outside) became the restored init's: the job is in init's group and session
    assert ns_ids(stopped)[2:] == (1, 1)
    with open(f"/proc/{stopped}/status") as f:
        assert "TracerPid:\t0\n" in f.read()
    os.kill(stopped, signal.SIGCONT)  # and it goes on: the stopped shell child execs its sleep
    deadline = time.monotonic() + 5
    while _cmdline(stopped) != b"sleep\x001000\x00":
        assert time.monotonic() < deadline, _cmdline(stopped)
        time.sleep(0.02)
    assert "T" not in _states(stopped)


def test_credentials_come_back(pidns, tmp_path, restored):
    """Credentials from the image are applied last. (`ckptrace dump` of a non-root task fails on
    this host today: prlimit of another uid's task needs CAP_SYS_RESOURCE. So a root task is
    dumped and its TASK_CREDS record rewritten to non-root ids.)"""
    from ckptrace.image.records import RECORDS, RecType
    from ckptrace.image.stream import RecordReader

    ready = tmp_path / "ready"
    code = ("import threading, time; threading.Thread(target=time.sleep, args=(100,), daemon=True).start(); "
            f"open({str(ready)!r}, 'w').close(); time.sleep(100)")
    w = pidns([sys.executable, "-c", code], ready_file=str(ready), stdin=subprocess.DEVNULL,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    img = tmp_path / "c.img"
    dump_kill(w, str(img))
    raw = img.read_bytes()
    out = bytearray()
    with open(img, "rb") as f:
        rd = RecordReader(f)
        while (rec := rd.next()) is not None:
            if rec.type == RecType.TASK_CREDS:
                v = dict(rec.fields, uid=2001, euid=2002, suid=2003, fsuid=2002, gid=1001, egid=1002,
                         sgid=1003, fsgid=1002, ngroups=2)
                out += RECORDS[RecType.TASK_CREDS].encode(v, [dict(gid=1234), dict(gid=5678)])
            else:
                out += raw[rec.offset:rec.offset + rec.length]
    img.write_bytes(bytes(out))
    res = restore_json(img, restored)
    tids = os.listdir(f"/proc/{res['init_pid']}/task")
    assert len(tids) == 2
    for tid in tids:  # the kernel keeps credentials per thread: every one of them gets the image's
        with open(f"/proc/{res['init_pid']}/task/{tid}/status") as f:
            st = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        assert st["Uid"].split() == ["2001", "2002", "2003", "2002"], tid
        assert st["Gid"].split() == ["1001", "1002", "1003", "1002"], tid
        assert st["Groups"].split() == ["1234", "5678"], tid


def test_signal_masks_handlers_and_pending_signals_come_back(pidns, tmp_path, restored):
    ready = tmp_path / "ready"
    code = ("import os, signal, threading, time\n"
            "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH})\n"
            "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
            "os.kill(os.getpid(), signal.SIGUSR1)\n"                          # process-wide pending
            "signal.pthread_kill(threading.get_ident(), signal.SIGUSR2)\n"    # this thread's pending
            f"open({str(ready)!r}, 'w').close()\n"
            "time.sleep(100)\n")
    w = pidns([sys.executable, "-c", code], ready_file=str(ready), settle=0.1, stdin=subprocess.DEVNULL,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def sigstate(pid: int) -> dict[str, str]:
        with open(f"/proc/{pid}/status") as f:
            st = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        return {k: st[k] for k in ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")}

    want = sigstate(w.init)
    assert int(want["ShdPnd"], 16) == 1 << (signal.SIGUSR1 - 1)
    assert int(want["SigPnd"], 16) == 1 << (signal.SIGUSR2 - 1)
    img = str(tmp_path / "sig.img")
    dump_kill(w, img)
    res = restore_json(img, restored)
    assert sigstate(res["init_pid"]) == want


def test_a_caught_or_ignored_sigtrap_comes_back(pidns, tmp_path, restored):
    """Restore blocks every signal before it sets the image's handlers, and its later calls
    (memory, credentials, threads) were single-stepped: each step's forced SIGTRAP made a
    caught SIGTRAP SIG_DFL again, and an ignored one too, so the restored process died of the
    SIGTRAP it had meant to catch or ignore."""
    from test_dump import TRAP_WORK, assert_sigtrap_taken_as_meant, sig_dispositions

    w = py_workload(pidns, TRAP_WORK, tmp_path)
    want = {nspid(h): sig_dispositions(h) for h in w.pids()}
    assert sorted(want) == [1, 2]
    img = tmp_path / "trap.img"
    dump_kill(w, str(img))
    res = restore_json(img, restored)
    hosts = {nspid(h): h for h in ns_pids(res["pidns"])}
    assert {pid: sig_dispositions(h) for pid, h in hosts.items()} == want
    assert_sigtrap_taken_as_meant(hosts, tmp_path)


TTY_SIGIO = r"""
import fcntl, os, signal, sys, time
d = sys.argv[1]
log = open(d + "/log", "a", buffering=1)
def on_io(sig, frame):
    log.write(f"io {sig} {os.read(0, 64)!r}\n")
signal.signal(signal.SIGRTMIN + 3, on_io)
fcntl.fcntl(0, fcntl.F_SETOWN, os.getpid())
fcntl.fcntl(0, 10, signal.SIGRTMIN + 3)          # F_SETSIG
fcntl.fcntl(0, fcntl.F_SETFL, fcntl.fcntl(0, fcntl.F_GETFL) | os.O_ASYNC | os.O_NONBLOCK)
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""


def test_a_terminal_with_o_async_still_signals_its_owner(pidns, tmp_path, restored):
    """A pty slave reopened by path: O_ASYNC given to open() is recorded without registering the
    file for signals, and a tty's fasync makes its caller the owner. Typing on the terminal after
    restore must still raise the chosen signal in the process."""
    import termios
    import tty

    master, slave = os.openpty()
    try:
        tty.setraw(slave, termios.TCSANOW)
        w = pidns([sys.executable, "-c", TTY_SIGIO, str(tmp_path)], ready_file=str(tmp_path / "ready"),
                  stdin=slave, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = tmp_path / "log"
        sig = int(signal.SIGRTMIN) + 3
        os.write(master, b"a")
        deadline = time.monotonic() + 15
        while (not log.exists() or not log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.read_text().splitlines() == [f"io {sig} b'a'"]
        img = str(tmp_path / "tty.img")
        dump_kill(w, img)
        restore_json(img, restored)
        os.write(master, b"b")
        deadline = time.monotonic() + 15
        while len(log.read_text().splitlines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.read_text().splitlines() == [f"io {sig} b'a'", f"io {sig} b'b'"]
    finally:
        os.close(master)
        os.close(slave)


def _ticks_go_on_through(master: int, w, img: str, restored) -> dict:
    """`dump --kill` the workload, which prints "tick N" lines to the terminal of `master`, and
    restore it: the ticks go on on that terminal, the counter carrying on (not from 0). The
    restore's --json result."""
    import select

    dump_kill(w, img)
    time.sleep(0.1)
    while select.select([master], [], [], 0)[0]:
        os.read(master, 65536)  # what the original wrote
    res = restore_json(img, restored)
    got = b""
    deadline = time.monotonic() + 15
    while got.count(b"\n") < 3 and time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            got += os.read(master, 65536)
    ticks = [int(x.split()[1]) for x in got.decode().splitlines() if x.startswith("tick ")]
    assert len(ticks) >= 3 and min(ticks) >= 3, got
    return res


def test_terminal_is_reopened(pidns, tmp_path, restored):
    """A task writing to a pty slave writes to the same terminal after the restore."""
    master, slave = os.openpty()
    try:
        ready = tmp_path / "ready"
        code = ("import itertools, time\n"
                f"open({str(ready)!r}, 'w').close()\n"
                "for n in itertools.count():\n"
                "    print('tick', n, flush=True)\n"
                "    time.sleep(0.05)\n")
        w = pidns([sys.executable, "-c", code], ready_file=str(ready), stdin=subprocess.DEVNULL,
                  stdout=slave, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        _ticks_go_on_through(master, w, str(tmp_path / "tty.img"), restored)
    finally:
        os.close(master)
        os.close(slave)


PTY_SESSION = r"""
import fcntl, os, pty, select, struct, sys, termios, time, tty
d = sys.argv[1]
pid, master = pty.fork()   # the child leads a session, the pty's slave its controlling terminal
if pid == 0:
    tty.setraw(0)
    mode = termios.tcgetattr(0)
    mode[6][termios.VKILL] = 0x0b             # and a changed control character
    termios.tcsetattr(0, termios.TCSANOW, mode)
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 41, 132, 0, 0))
    job = os.fork()
    if job == 0:           # the foreground job, in a group of its own: echoes the lines it reads
        os.setpgid(0, 0)
        while os.tcgetpgrp(0) != os.getpid():
            time.sleep(0.01)
        os.write(1, b"ready\n")
        buf = b""
        while True:
            buf += os.read(0, 256)
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                os.write(1, b"echo " + line + b"\n")
    os.setpgid(job, job)
    os.tcsetpgrp(0, job)
    os.waitpid(job, 0)
    os._exit(0)
# init drives the master, once the job is ready: a line every 0.1 s, and what comes back into the log
got = b""
while b"ready\n" not in got:
    got += os.read(master, 4096)
got = got.split(b"ready\n", 1)[1]
open(os.path.join(d, "ready"), "w").close()
log = open(os.path.join(d, "log"), "ab", buffering=0)
n, due = 0, time.monotonic()
while True:
    if time.monotonic() >= due:
        os.write(master, b"line %d\n" % n)
        n, due = n + 1, due + 0.1
    if select.select([master], [], [], max(0.0, due - time.monotonic()))[0]:
        got += os.read(master, 4096)
        while b"\n" in got:
            line, got = got.split(b"\n", 1)
            log.write(line + b"\n")
"""


def _tty_view(host: int) -> dict:
    """What a process shows of its terminal: fd 0's link, and its stat's tty_nr and tpgid (the
    foreground group, as a host pid)."""
    with open(f"/proc/{host}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return dict(fd0=os.readlink(f"/proc/{host}/fd/0"), tty_nr=int(fields[4]), tpgid=int(fields[5]))


def _terminal_state(host: int) -> tuple:
    """termios and window size of the terminal on `host`'s fd 0 (opened again by its /proc link)."""
    import termios

    fd = os.open(f"/proc/{host}/fd/0", os.O_RDWR | os.O_NOCTTY)
    try:
        return termios.tcgetattr(fd), struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    finally:
        os.close(fd)


def _echoes(log) -> list[int]:
    lines = log.read_bytes().split(b"\n")[:-1]
    assert all(x.startswith(b"echo line ") for x in lines), lines
    return [int(x.split()[-1]) for x in lines]


def _migrate_logging(w, img, restored, lines, more: int, what: str) -> dict[int, int]:
    """`dump --kill` the workload (tried again when it refused, harmlessly, because it met a
    line in flight on a pty) and restore it; then wait (5 s at most) until `lines()`, the numbers
    it logs, has `more` than at the dump, none lost or repeated. The restored host pids by pid."""
    for _ in range(5):
        d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", img)
        if d.returncode == 0 or b"pty" not in d.stderr:
            break
    assert d.returncode == 0, d.stderr.decode()
    want = len(lines()) + more
    res = restore_json(img, restored)
    deadline = time.monotonic() + 5
    while len(lines()) < want and time.monotonic() < deadline:
        time.sleep(0.1)
    got = lines()
    assert len(got) >= want, what
    assert got == list(range(len(got))), "lines lost or repeated across the migration"
    return {nspid(p): p for p in ns_pids(res["pidns"])}


def test_a_pty_pair_comes_back_with_its_index_state_and_controlling_terminal(pidns, tmp_path, restored):
    """Both ends of a pty inside the namespace (pty.fork: init drives the master, a session leader
    has the slave as its controlling terminal, its foreground job echoes lines): after dump --kill
    and restore the pty has the same index, termios (raw mode, a changed c_cc) and window size,
    is the session's controlling terminal with the same foreground group, and the echoes go on."""
    w = py_workload(pidns, PTY_SESSION, tmp_path)
    log = tmp_path / "log"
    time.sleep(0.5)
    by_ns = {nspid(p): p for p in w.pids()}
    assert sorted(by_ns) == [1, 2, 3]
    before = {n: _tty_view(by_ns[n]) for n in (2, 3)}
    state = _terminal_state(by_ns[3])
    assert before[2]["fd0"].startswith("/dev/pts/") and before[2]["tpgid"] == by_ns[3]
    assert before[3]["tty_nr"] == before[2]["tty_nr"] != 0
    img = str(tmp_path / "pty.img")
    by_ns = _migrate_logging(w, img, restored, lambda: _echoes(log), 10, "the echoes did not go on")
    after = {n: _tty_view(by_ns[n]) for n in (2, 3)}
    for n in (2, 3):
        assert after[n]["fd0"] == before[n]["fd0"] and after[n]["tty_nr"] == before[n]["tty_nr"], (before, after)
    assert after[2]["tpgid"] == after[3]["tpgid"] == by_ns[3]  # the job is in the foreground
    assert os.readlink(f"/proc/{by_ns[1]}/fd/3") == "/dev/ptmx"
    assert _terminal_state(by_ns[3]) == state
    (mode, winsize) = state
    assert winsize == (41, 132, 0, 0) and mode[6][termios.VKILL] == b"\x0b"
    assert not mode[3] & termios.ICANON and not mode[3] & termios.ECHO  # raw


PTY_DEVTTY = r"""
import os, pty, select, sys, time
d = sys.argv[1]
pid, master = pty.fork()   # the child leads a session, the pty's slave its controlling terminal
if pid == 0:
    t = os.open("/dev/tty", os.O_WRONLY)   # as ssh, sudo or vim prompts do
    os.dup2(t, 7)
    n = 0
    while True:
        os.write(7, b"tty %d\n" % n)
        n += 1
        time.sleep(0.1)
got = b""
while b"tty 2\r\n" not in got:  # (onlcr: CR LF)
    got += os.read(master, 4096)
open(os.path.join(d, "ready"), "w").close()
log = open(os.path.join(d, "log"), "ab", buffering=0)
while True:
    got += os.read(master, 4096)
    while b"\n" in got:
        line, got = got.split(b"\n", 1)
        log.write(line.rstrip(b"\r") + b"\n")
"""


def _tty_lines(log) -> list[int]:
    return [int(x.split()[1]) for x in log.read_bytes().split(b"\n") if x.startswith(b"tty ")]


def test_an_fd_of_dev_tty_comes_back_on_the_pty_it_stood_for(pidns, tmp_path, restored):
    """An fd opened as /dev/tty stands for the opener's controlling terminal, here a pty whose
    master the image holds: restore gives it a slave of that pty again (its link now says
    /dev/pts/N), not whatever /dev/tty would mean for the restorer (ENXIO when it has none),
    and what the program writes through it still reaches the master's reader."""
    w = py_workload(pidns, PTY_DEVTTY, tmp_path)
    log = tmp_path / "log"
    by_ns = {nspid(p): p for p in w.pids()}
    assert os.readlink(f"/proc/{by_ns[2]}/fd/7") == "/dev/tty"
    pts = os.readlink(f"/proc/{by_ns[2]}/fd/0")
    img = str(tmp_path / "pty.img")
    by_ns = _migrate_logging(w, img, restored, lambda: _tty_lines(log), 5,
                             "the writes through /dev/tty did not reach the master")
    assert os.readlink(f"/proc/{by_ns[2]}/fd/7") == os.readlink(f"/proc/{by_ns[2]}/fd/0") == pts

    from ckptrace.image.reader import read_image
    from ckptrace.image.records import TTY_DEVTTY, RecType

    with open(img, "rb") as f:
        image = read_image(f, skip_pages=True)
    (rec,) = [r.fields for o in image.objects.values() for r in getattr(o, "extra", ())
              if r.type == RecType.FILE_TTY and r.fields["flags"] & TTY_DEVTTY]
    assert f"/dev/pts/{rec['index']}" == pts and rec["dev"] >> 8 == 136, rec  # (new_encode_dev)


HUNG_UP = r"""
import errno, os, sys, time
d = sys.argv[1]
m, s = os.openpty()
os.close(m)                # the slave is hung up: EOF on read, EIO on write and ioctl
log = open(os.path.join(d, "log"), "a", buffering=1)
n = 0
while True:
    got = os.read(s, 10)
    try:
        os.write(s, b"x")
        wrote = "ok"
    except OSError as exc:
        wrote = errno.errorcode[exc.errno]
    print(n, repr(got), wrote, file=log)
    if n == 2:
        open(os.path.join(d, "ready"), "w").close()
    n += 1
    time.sleep(0.05)
"""


def test_a_hung_up_pty_slave_comes_back_hung_up(pidns, tmp_path, restored):
    """A pty slave whose master was closed is hung up (read gives EOF, write EIO) and its node
    is gone ("/dev/pts/N (deleted)"): restore makes a hung-up slave again (a new pair's, whose
    master it closes) instead of refusing a path that does not exist."""
    w = py_workload(pidns, HUNG_UP, tmp_path)
    log = tmp_path / "log"
    (host,) = w.pids()
    assert os.readlink(f"/proc/{host}/fd/4").endswith(" (deleted)")
    img = str(tmp_path / "hup.img")
    dump_kill(w, img)
    dumped = len(log.read_text().splitlines())
    res = restore_json(img, restored)
    (host,) = ns_pids(res["pidns"])
    deadline = time.monotonic() + 5
    while len(log.read_text().splitlines()) < dumped + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = log.read_text().splitlines()
    assert len(lines) >= dumped + 5, "the program did not go on"
    assert [int(x.split()[0]) for x in lines] == list(range(len(lines)))
    assert {x.split(None, 1)[1] for x in lines} == {"b'' EIO"}, lines
    assert os.readlink(f"/proc/{host}/fd/4").startswith("/dev/pts/")
    assert os.readlink(f"/proc/{host}/fd/4").endswith(" (deleted)")


OUTSIDE_DEVTTY = r"""
import fcntl, itertools, os, sys, termios, time
d = sys.argv[1]
os.setsid()
fcntl.ioctl(1, termios.TIOCSCTTY, 0)     # the host's pty on stdout becomes its terminal
t = os.open("/dev/tty", os.O_WRONLY)
os.dup2(t, 7)
open(os.path.join(d, "ready"), "w").close()
for n in itertools.count():
    os.write(7, b"tick %d\n" % n)
    time.sleep(0.05)
"""


IDLE = r"""
import os, sys, time
open(os.path.join(sys.argv[1], "ready"), "w").close()
time.sleep(60)
"""


def _take_pty(index: int, held: list[int]) -> None:
    """Open ptys until one has `index` (the lowest free one comes first), keeping them in `held`."""
    deadline = time.monotonic() + 5
    while True:
        m, s = os.openpty()
        held += [m, s]
        got = int(os.ttyname(s).rsplit("/", 1)[1])
        if got == index:
            return
        if got > index:  # (still held by the dying original: try again)
            for fd in held:
                os.close(fd)
            held.clear()
            assert time.monotonic() < deadline, f"pty {index} was taken by someone else meanwhile"
            time.sleep(0.05)


def test_a_dev_tty_fd_on_an_outside_terminal_comes_back_on_it(pidns, tmp_path, restored):
    """An fd of /dev/tty standing for a terminal of the outside world (the host's pty, the
    namespace's controlling terminal) is reopened on that terminal's node, not as /dev/tty (which
    names the restorer's terminal, or fails with ENXIO): the ticks go on through it."""
    master, slave = os.openpty()
    index = int(os.ttyname(slave).rsplit("/", 1)[1])
    try:
        w = pidns([sys.executable, "-c", OUTSIDE_DEVTTY, str(tmp_path)], ready_file=str(tmp_path / "ready"),
                  stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.DEVNULL)
        time.sleep(0.2)
        res = _ticks_go_on_through(master, w, str(tmp_path / "tty.img"), restored)  # via /dev/tty
        (host,) = ns_pids(res["pidns"])
        assert os.readlink(f"/proc/{host}/fd/7") == f"/dev/pts/{index}"
    finally:
        os.close(master)
        os.close(slave)


def test_an_outside_terminal_whose_number_went_to_another_is_refused(pidns, tmp_path):
    """A terminal of the outside world (the host's pty on stdout) is reopened by path only when
    the node there is still that terminal: once that pty is closed and its number given to a new
    one, restore refuses, naming it, instead of handing the programs a stranger's terminal."""
    master, slave = os.openpty()
    index = int(os.ttyname(slave).rsplit("/", 1)[1])
    held: list[int] = []
    try:
        w = pidns([sys.executable, "-c", IDLE, str(tmp_path)], ready_file=str(tmp_path / "ready"),
                  stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.DEVNULL)
        img = str(tmp_path / "tty.img")
        dump_kill(w, img)
        os.close(master)
        os.close(slave)
        master = slave = -1
        _take_pty(index, held)
        nss = pidns_inodes(tmp_path)
        r = ckptrace("restore", img)
        assert r.returncode != 0
        assert f"/dev/pts/{index} is not the terminal the dump saw".encode() in r.stderr, r.stderr
        assert pidns_inodes(tmp_path) - nss == set()
    finally:
        for fd in [master, slave] + held:
            if fd >= 0:
                os.close(fd)


def _status(tid_dir: str) -> dict[str, str]:
    with open(f"{tid_dir}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_seccomp_filters_and_no_new_privs_come_back(pidns, tmp_path, restored):
    """Two stacked filters (one installed with SECCOMP_FILTER_FLAG_LOG) and no_new_privs, on both
    threads: the image holds them as installed, the restored threads have them again, and the
    filtered calls keep failing the way the filters say."""
    from ckptrace.image.reader import read_image

    w = pidns([sys.executable, os.path.join(HERE, "workloads", "seccompwork.py"), str(tmp_path)],
              ready_file=str(tmp_path / "ready"), settle=0.2, stdin=subprocess.DEVNULL,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    img = str(tmp_path / "sc.img")
    dump_kill(w, img)
    with open(img, "rb") as f:
        image = read_image(f)
    assert len(image.tasks) == 2
    for t in image.tasks:
        assert t.seccomp == {"mode": 2, "no_new_privs": 1, "nfilters": 2}, t.tid
        # oldest first: uname -> EPERM (flags 0), then getcwd -> ENOTTY (SECCOMP_FILTER_FLAG_LOG)
        (f1, p1), (f2, p2) = t.seccomp_filters
        assert (f1, f2) == (0, 2)
        assert struct.unpack_from("<I", p1, 12)[0] == 63 and struct.unpack_from("<I", p1, 20)[0] == 0x00050001
        assert struct.unpack_from("<I", p2, 12)[0] == 79 and struct.unpack_from("<I", p2, 20)[0] == 0x00050019
    shown = ckptrace("show", img)
    assert b"seccomp filter (2 filters), no_new_privs" in shown.stdout, shown.stdout[:400]
    log = tmp_path / "seccomp.log"
    before = len(log.read_text().splitlines())
    res = restore_json(img, restored)
    tids = os.listdir(f"/proc/{res['init_pid']}/task")
    assert len(tids) == 2
    for tid in tids:
        st = _status(f"/proc/{res['init_pid']}/task/{tid}")
        assert (st["Seccomp"], st["Seccomp_filters"], st["NoNewPrivs"]) == ("2", "2", "1"), tid
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        after = log.read_text().splitlines()[before:]
        if {x.split()[0] for x in after} == {"main", "thread"}:
            break
        time.sleep(0.05)
    assert {x.split()[0] for x in after} == {"main", "thread"}, after
    assert all(x.endswith("uname=1 getcwd=25") for x in after), after


SCHED_WORKLOAD = r"""
import ctypes, os, sys, threading, time
libc = ctypes.CDLL(None)
with open("/proc/self/oom_score_adj", "w") as f:
    f.write("500")
with open("/proc/self/coredump_filter", "w") as f:
    f.write("0x1f")  # (the default is 0x33)
os.sched_setaffinity(0, {1})
os.setpriority(os.PRIO_PROCESS, 0, 5)  # Linux: the calling thread; new threads inherit it
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
libc.prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE
libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
libc.prctl(67, 1, 0, 0, 0)  # PR_SET_MEMORY_MERGE
libc.prctl(33, 1, 1, 0, 0)  # PR_MCE_KILL, PR_MCE_KILL_SET, early (before the threads: inherited)

def worker():
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    os.setpriority(os.PRIO_PROCESS, 0, 7)
    libc.prctl(29, 250000, 0, 0, 0)  # PR_SET_TIMERSLACK, this thread only
    open(os.path.join(sys.argv[1], "ready"), "w").close()
    time.sleep(1000)

idle_set = threading.Event()

def idler():
    os.setpriority(os.PRIO_PROCESS, 0, 3)  # kept by SCHED_IDLE, which has no nice of its own
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    idle_set.set()
    time.sleep(1000)

rr_set = threading.Event()

def rr():
    os.setpriority(os.PRIO_PROCESS, 0, 4)  # kept by SCHED_RR too (sched_getattr reports 0)
    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(5))
    rr_set.set()
    time.sleep(1000)

threading.Thread(target=idler, daemon=True).start()
idle_set.wait()
threading.Thread(target=rr, daemon=True).start()
rr_set.wait()
threading.Thread(target=worker, daemon=True).start()
out = open(os.path.join(sys.argv[1], "prctl.log"), "a", buffering=1)
v = ctypes.c_int()
while True:
    libc.prctl(37, ctypes.byref(v), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
    out.write(f"dumpable={libc.prctl(3, 0, 0, 0, 0)} subreaper={v.value} thp_off={libc.prctl(42, 0, 0, 0, 0)} "
              f"merge={libc.prctl(68, 0, 0, 0, 0)} mce={libc.prctl(34, 0, 0, 0, 0)}\n")
    time.sleep(0.05)
"""


def _sched_of(tid: int) -> tuple:
    with open(f"/proc/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{tid}/timerslack_ns") as f:
        slack = int(f.read())
    # proc(5) fields 19 nice, 40 rt_priority, 41 policy (this list starts at field 3)
    return int(fields[16]), int(fields[37]), int(fields[38]), sorted(os.sched_getaffinity(tid)), slack


def test_scheduling_affinity_and_oom_score_adj_come_back(pidns, tmp_path, restored):
    if os.cpu_count() < 2:
        pytest.fail("needs 2 CPUs (the CI machine has them): the workload pins itself to CPU 1")
    w = pidns([sys.executable, "-c", SCHED_WORKLOAD, str(tmp_path)], ready_file=str(tmp_path / "ready"),
              settle=0.2, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from ckptrace.image.reader import read_image

    want = {nspid(int(t)): _sched_of(int(t)) for t in os.listdir(f"/proc/{w.init}/task")}
    # OTHER, IDLE, RR (the kernel gives a real-time thread no timer slack), BATCH
    assert sorted(want.values()) == [(3, 0, 5, [1], 50000), (4, 5, 2, [1], 0), (5, 0, 0, [1], 50000),
                                     (7, 0, 3, [1], 250000)], want
    img = str(tmp_path / "sched.img")
    dump_kill(w, img)
    with open(img, "rb") as f:
        scheds = sorted((t.sched["policy"], t.sched["nice"], t.sched["priority"]) for t in read_image(f).tasks)
    assert scheds == [(0, 5, 0), (2, 4, 5), (3, 7, 0), (5, 3, 0)], scheds
    from ckptrace.image.reader import Mm

    with open(img, "rb") as f:  # MM.flags: dumpable 0, the filter in bits 2-10 (mm->flags' own layout)
        assert [m.fields["flags"] for m in read_image(f).objects.values() if isinstance(m, Mm)] == [0x1F << 2]
    res = restore_json(img, restored)
    init = res["init_pid"]
    got = {nspid(int(t)): _sched_of(int(t)) for t in os.listdir(f"/proc/{init}/task")}
    assert got == want
    # the real-time thread's nice is its own again once it goes back to SCHED_OTHER
    rr_tid = next(int(t) for t in os.listdir(f"/proc/{init}/task") if os.sched_getscheduler(int(t)) == os.SCHED_RR)
    os.sched_setscheduler(rr_tid, os.SCHED_OTHER, os.sched_param(0))
    assert os.getpriority(os.PRIO_PROCESS, rr_tid) == 4
    with open(f"/proc/{init}/oom_score_adj") as f:
        assert f.read().strip() == "500"
    with open(f"/proc/{init}/coredump_filter") as f:
        assert f.read().strip() == "0000001f"
    assert _status(f"/proc/{init}")["THP_enabled"] == "0"
    log = tmp_path / "prctl.log"
    n = len(log.read_text().splitlines())
    deadline = time.monotonic() + 15
    while len(log.read_text().splitlines()) < n + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = log.read_text().splitlines()
    assert len(lines) >= n + 3 and set(lines) == {"dumpable=0 subreaper=1 thp_off=1 merge=1 mce=1"}, lines[-5:]


_libc = None


def _sys(nr: int, *args) -> int:
    """A raw syscall from the test itself (not through ckptrace), raising OSError on failure."""
    import ctypes

    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    ret = _libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    if ret == -1:
        raise OSError(ctypes.get_errno(), f"syscall {nr}")
    return ret


def _ioprio(tid: int) -> int:
    return _sys(252, 1, tid)  # ioprio_get(IOPRIO_WHO_PROCESS, host tid)


def _robust_list(tid: int) -> tuple[int, int]:
    import ctypes

    head, size = ctypes.c_ulong(), ctypes.c_size_t()
    _sys(274, tid, ctypes.addressof(head), ctypes.addressof(size))  # get_robust_list(host tid)
    return head.value, size.value


IOPRIO_WORKLOAD = r"""
import ctypes, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
def ioprio_set(value):  # this thread only (IOPRIO_WHO_PROCESS, 0)
    assert libc.syscall(251, 1, 0, value) == 0, ctypes.get_errno()
ioprio_set(3 << 13)  # IOPRIO_CLASS_IDLE
def worker():
    ioprio_set(2 << 13 | 6)  # IOPRIO_CLASS_BE, level 6
    open(os.path.join(sys.argv[1], "ready"), "w").close()
    time.sleep(1000)
threading.Thread(target=worker, daemon=True).start()
time.sleep(1000)
"""


def test_io_priorities_come_back(pidns, tmp_path, restored):
    """Each thread's I/O priority (per thread, like nice) is the image's after the restore: an
    IDLE-class main thread and a best-effort level-6 worker, where the restored tasks would
    otherwise have the controller's (none set, 0)."""
    w = pidns([sys.executable, "-c", IOPRIO_WORKLOAD, str(tmp_path)], ready_file=str(tmp_path / "ready"),
              settle=0.1, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    want = {nspid(int(t)): _ioprio(int(t)) for t in os.listdir(f"/proc/{w.init}/task")}
    assert sorted(want.values()) == [2 << 13 | 6, 3 << 13], want
    img = str(tmp_path / "ioprio.img")
    dump_kill(w, img)
    res = restore_json(img, restored)
    init = res["init_pid"]
    got = {nspid(int(t)): _ioprio(int(t)) for t in os.listdir(f"/proc/{init}/task")}
    assert got == want


@pytest.fixture(scope="module")
def robustwork(tmp_path_factory) -> str:
    return workload_exe(tmp_path_factory.mktemp("robustwork"), "robustwork", "-pthread")


def _syscall_nr(tid_dir: str) -> str:
    with open(f"{tid_dir}/syscall") as f:
        return f.read().split()[0]


def test_robust_mutex_held_by_a_restored_task_that_dies_reports_eownerdead(pidns, robustwork, tmp_path, restored):
    """tests/workloads/robustwork.c: a child's main thread and second thread each hold a
    process-shared robust mutex; both threads of pid 1 are blocked locking them. After the
    restore the child exits: the kernel finds the mutexes through each dying thread's robust list
    (registered by glibc at thread start, so it must be registered again on restore) and both
    waiters' pthread_mutex_lock return EOWNERDEAD. Without the lists they would wait for ever."""
    log = tmp_path / "robust.log"
    w = pidns([robustwork, str(tmp_path)], ready_file=str(tmp_path / "ready"),
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while {_syscall_nr(f"/proc/{w.init}/task/{t}") for t in os.listdir(f"/proc/{w.init}/task")} != {"202"}:
        assert time.monotonic() < deadline, "pid 1's threads never blocked in futex"
        time.sleep(0.02)
    assert sorted(line.split()[:2] for line in log.read_text().splitlines()) == [["A", "held"], ["B", "held"]]
    img = str(tmp_path / "robust.img")
    dump_kill(w, img)
    from ckptrace.image.reader import read_image

    with open(img, "rb") as f:
        image = read_image(f)
    assert len(image.tasks) == 4
    assert all(t.thread["robust_list"] and t.thread["robust_len"] == 24 for t in image.tasks)
    res = restore_json(img, restored)
    hosts = {}
    for h in ns_pids(res["pidns"]):
        for tid in os.listdir(f"/proc/{h}/task"):
            hosts[nspid(int(tid))] = int(tid)
    for t in image.tasks:  # each restored thread has its own list head registered again
        assert _robust_list(hosts[t.tid]) == (t.thread["robust_list"], t.thread["robust_len"]), t.tid
    time.sleep(0.2)
    assert len(log.read_text().splitlines()) == 2, "a waiter got the lock before its holder died"
    (tmp_path / "die").touch()
    deadline = time.monotonic() + 5
    while len(log.read_text().splitlines()) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(log.read_text().splitlines()[2:]) == ["A EOWNERDEAD", "B EOWNERDEAD"], log.read_text()

THREADED_TREE = r"""
import os, sys, threading, time
def sleeper():
    threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()
for i in range(3):
    sleeper()
for i in range(2):
    if os.fork() == 0:
        sleeper()
        while True:
            time.sleep(1)
open(os.path.join(sys.argv[1], "ready"), "w").close()
while True:
    time.sleep(1)
"""


def test_a_late_failure_after_threaded_processes_were_made_ends_at_once(pidns, tmp_path):
    """A restore failing in its last steps (here: its cpuset has no CPU left), once init and other
    processes with threads exist: the abort waited for one of init's threads, which waits in the
    kernel for the namespace's other tasks, traced zombies only the restore reaps: it hung for
    ever, SIGTERM blocked, and the error was never said. It ends at once, saying why, pid 1 named
    as inside the namespace, and leaves nothing."""
    from ckptrace.kernel.procfs import cgroup_mounts
    from ckptrace.restorer.cgroup import _inherit_cpuset

    cpuset = os.path.join(cgroup_mounts()["cpuset"], f"ckptrace-late-{os.getpid()}")
    os.makedirs(cpuset, exist_ok=True)
    _inherit_cpuset(cpuset)
    try:
        w = py_workload(pidns, THREADED_TREE, tmp_path)
        for h in w.pids():
            with open(os.path.join(cpuset, "cgroup.procs"), "w") as f:
                f.write(str(h))
        img = str(tmp_path / "late.img")
        dump_kill(w, img)
        deadline = time.monotonic() + 5
        while True:
            try:
                with open(os.path.join(cpuset, "cpuset.cpus"), "w") as f:
                    f.write("\n")  # no CPU: a task put in it gets ENOSPC
                break
            except OSError:  # the killed tasks are not all gone yet
                assert time.monotonic() < deadline
                time.sleep(0.05)
        nss = pidns_inodes(tmp_path)
        t0 = time.monotonic()
        r = ckptrace("restore", img)
        assert r.returncode == 1 and time.monotonic() - t0 < 20, r.stderr
        assert "put process 1 into cpuset cgroup" in r.stderr.decode() and "ENOSPC" in r.stderr.decode(), r.stderr
        assert pidns_inodes(tmp_path) - nss == set()
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(cpuset)


@pytest.mark.parametrize("version", ["v2", "v1-made-under"])
def test_a_frozen_cgroup_is_refused_before_anything_is_made(pidns, tmp_path, restored, version):
    """Restore puts each process in its cgroups after its point of no return: one frozen there
    could not run the last injected calls, and restore waited for a thaw for good, deaf to
    SIGTERM. A frozen cgroup (v1: or the frozen parent a missing one would be made under) is
    refused at validation; thawed, the same image restores."""
    from ckptrace.kernel.procfs import cgroup_mounts

    mounts = cgroup_mounts()
    top = os.path.join(mounts["" if version == "v2" else "freezer"], f"ckptrace-frz-{os.getpid()}")
    cg = top if version == "v2" else os.path.join(top, "inner")
    freeze_file, frozen, thawed = (os.path.join(top, "cgroup.freeze"), "1", "0") if version == "v2" \
        else (os.path.join(top, "freezer.state"), "FROZEN", "THAWED")
    os.makedirs(cg)
    try:
        w = py_workload(pidns, "import sys, time\nopen(sys.argv[1] + '/ready', 'w').close()\ntime.sleep(3600)\n",
                        tmp_path)
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(w.init))
        img = str(tmp_path / "frz.img")
        dump_kill(w, img)
        wait_gone = time.monotonic() + 5
        while os.path.isdir(cg) and cg != top:  # (v1: the restore is to make it again, frozen)
            try:
                os.rmdir(cg)
            except OSError:
                assert time.monotonic() < wait_gone
                time.sleep(0.05)
        with open(freeze_file, "w") as f:
            f.write(frozen)
        before = pidns_inodes(tmp_path)
        r = ckptrace("restore", img)
        err = r.stderr.decode()
        assert r.returncode == 1 and f"process 1's {'cgroup2' if version == 'v2' else 'freezer'} cgroup" in err, err
        assert f"is frozen here ({freeze_file} is {frozen}): thaw it first" in err, err
        assert pidns_inodes(tmp_path) == before and (version == "v2" or not os.path.exists(cg))
        with open(freeze_file, "w") as f:
            f.write(thawed)
        res = restore_json(img, restored)
        with open(f"/proc/{res['init_pid']}/cgroup") as f:
            assert cg.removeprefix(mounts["" if version == "v2" else "freezer"]) in f.read()
    finally:
        with open(freeze_file, "w") as f:
            f.write(thawed)
        for p in restored:
            with contextlib.suppress(OSError):
                with open(os.path.join(os.path.dirname(top), "cgroup.procs"), "w") as f:
                    f.write(str(p))
        for d in (cg, top):
            with contextlib.suppress(OSError):
                os.rmdir(d)


def test_cgroups_come_back_and_missing_ones_are_made(pidns, tmp_path, restored):
    """The workload sits in a cgroup v2 two levels down, a v1 freezer cgroup and a v1 cpuset; the
    v2 ones and the cpuset are gone by restore time (as on a new host) and are made again (a new
    v1 cpuset needs CPUs and memory nodes before it takes a task)."""
    from ckptrace.kernel.procfs import cgroup_mounts
    from ckptrace.restorer.cgroup import _inherit_cpuset

    mounts = cgroup_mounts()
    assert "" in mounts and "freezer" in mounts and "cpuset" in mounts, mounts  # this machine kind: hybrid
    name = f"ckptrace-test-{os.getpid()}"
    v2_outer = os.path.join(mounts[""], name)
    v2 = os.path.join(v2_outer, "inner")
    v1 = os.path.join(mounts["freezer"], name)
    cpuset = os.path.join(mounts["cpuset"], name)
    os.makedirs(v2)
    os.makedirs(v1, exist_ok=True)
    os.makedirs(cpuset, exist_ok=True)
    _inherit_cpuset(cpuset)
    ready = tmp_path / "ready"
    code = ("import threading, time; threading.Thread(target=time.sleep, args=(100,), daemon=True).start(); "
            f"open({str(ready)!r}, 'w').close(); time.sleep(100)")
    try:
        w = pidns([sys.executable, "-c", code], ready_file=str(ready), stdin=subprocess.DEVNULL,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for d in (v2, v1, cpuset):
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(w.init))
        img = str(tmp_path / "cg.img")
        dump_kill(w, img)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.rmdir(v2)
                os.rmdir(v2_outer)
                os.rmdir(cpuset)
                break
            except OSError:  # the killed tasks are not all reaped yet
                time.sleep(0.05)
        assert not os.path.exists(v2_outer) and not os.path.exists(cpuset)
        res = restore_json(img, restored)
        with open(f"/proc/{res['init_pid']}/cgroup") as f:
            lines = f.read().splitlines()
        assert f"0::/{name}/inner" in lines and any(x.endswith(f":freezer:/{name}") for x in lines), lines
        assert any(x.endswith(f":cpuset:/{name}") for x in lines), lines
        for tid in os.listdir(f"/proc/{res['init_pid']}/task"):  # threads moved with the process
            with open(os.path.join(v2, "cgroup.threads")) as f:
                assert tid in f.read().split()
    finally:
        for r in restored:
            with contextlib.suppress(ProcessLookupError):
                os.kill(r, signal.SIGKILL)
        deadline = time.monotonic() + 5
        for d in (v2, v2_outer, v1, cpuset):
            while os.path.exists(d) and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    os.rmdir(d)
                time.sleep(0.02)


# init waits for `go` (the test has put it in its cgroups by then), makes a cgroup namespace of
# its own there and forks a child into it; with argv[2] "own" the child waits for `go-child` (the
# test has moved it on) and makes one of its own too. `child` says the child is done.
CGROUPNS_WORKLOAD = r"""
import ctypes, os, sys, time
d, child_own = sys.argv[1], sys.argv[2] == "own"
libc = ctypes.CDLL(None, use_errno=True)

def wait_for(name):
    while not os.path.exists(os.path.join(d, name)):
        time.sleep(0.02)

def unshare_cgroup():
    if libc.unshare(0x02000000) != 0:  # CLONE_NEWCGROUP
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWCGROUP)")

open(os.path.join(d, "ready"), "w").close()
wait_for("go")
unshare_cgroup()
if os.fork() == 0:
    if child_own:
        wait_for("go-child")
        unshare_cgroup()
    open(os.path.join(d, "child"), "w").close()
while True:
    time.sleep(1)
"""


def _cgroup_views(host: int) -> tuple[str, str, int]:
    """A process's /proc/PID/cgroup as the host reads it, as read from inside its own cgroup
    namespace (nsenter), and that namespace's inode."""
    with open(f"/proc/{host}/cgroup") as f:
        outside = f.read()
    inside = subprocess.run(["nsenter", f"--cgroup=/proc/{host}/ns/cgroup", "cat", f"/proc/{host}/cgroup"],
                            capture_output=True, text=True, check=True).stdout
    return outside, inside, os.stat(f"/proc/{host}/ns/cgroup").st_ino


def _move(pid: int, *cgroups: str) -> None:
    for cg in cgroups:
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(pid))


@pytest.mark.parametrize("child", ["shared", "own"])
def test_a_cgroup_namespace_comes_back_with_its_root(pidns, tmp_path, restored, child):
    """Init made a cgroup namespace of its own in cgroup2 `ckpt-test-…/ns` and v1 freezer
    `ckpt-test-…`; its child moved into `sub` of both after (shared: it is in init's namespace,
    whose root it is below; own: it made one of its own there). Restore refused such an image;
    now it makes the namespaces again: the host sees the dumped paths, each process sees from
    inside what it saw before the dump (`0::/`, or `0::/sub` below init's root), init and its
    child share one namespace or have one each as they did, none the host's. The cgroups are
    gone by restore time (as on a new host): the roots are made again too."""
    from ckptrace.kernel.procfs import cgroup_mounts

    mounts = cgroup_mounts()
    assert "" in mounts and "freezer" in mounts, mounts  # this machine kind: hybrid
    top = os.path.join(mounts[""], f"ckpt-test-{os.getpid()}")
    v2, v1 = os.path.join(top, "ns"), os.path.join(mounts["freezer"], f"ckpt-test-{os.getpid()}")
    v2_sub, v1_sub = os.path.join(v2, "sub"), os.path.join(v1, "sub")
    for d in (v2_sub, v1_sub):
        os.makedirs(d)
    w = None
    try:
        w = pidns([sys.executable, "-c", CGROUPNS_WORKLOAD, str(tmp_path), child],
                  ready_file=str(tmp_path / "ready"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
        _move(w.init, v2, v1)
        (tmp_path / "go").touch()
        deadline = time.monotonic() + 5
        while len(w.pids()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        kid = max(w.pids())
        _move(kid, v2_sub, v1_sub)
        (tmp_path / "go-child").touch()
        while not (tmp_path / "child").exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        before = {nspid(h): _cgroup_views(h) for h in w.pids()}
        host_ns = os.stat("/proc/self/ns/cgroup").st_ino
        init_in = before[1][1].splitlines()
        assert "0::/" in init_in and any(x.endswith(":freezer:/") for x in init_in), init_in
        kid_in = before[2][1].splitlines()
        below = "/" if child == "own" else "/sub"
        assert f"0::{below}" in kid_in and any(x.endswith(f":freezer:{below}") for x in kid_in), kid_in
        assert (before[1][2] == before[2][2]) == (child == "shared") and host_ns not in (before[1][2], before[2][2])
        img = str(tmp_path / "cgns.img")
        dump_kill(w, img)
        deadline = time.monotonic() + 5
        for d in (v2_sub, v2, top, v1_sub, v1):
            while os.path.exists(d):
                assert time.monotonic() < deadline, d
                with contextlib.suppress(OSError):  # (the killed tasks are not all reaped yet)
                    os.rmdir(d)
                time.sleep(0.02)
        res = restore_json(img, restored)
        after = {nspid(h): _cgroup_views(h) for h in ns_pids(res["pidns"])}
        assert sorted(after) == [1, 2]
        for pid in (1, 2):
            assert after[pid][:2] == before[pid][:2], (pid, before[pid], after[pid])
        assert (after[1][2] == after[2][2]) == (child == "shared"), after
        # (not compared with the dumped ones': gone, their inode numbers are given out again)
        assert host_ns not in (after[1][2], after[2][2])
    finally:
        if w is not None:  # (not killed by a dump that failed: its cgroups go once it is reaped)
            w.kill()
        for r in restored:
            with contextlib.suppress(ProcessLookupError):
                os.kill(r, signal.SIGKILL)
        deadline = time.monotonic() + 5
        for d in (v2_sub, v2, top, v1_sub, v1):
            while os.path.exists(d) and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    os.rmdir(d)
                time.sleep(0.02)


def test_a_cgroup_namespace_whose_root_no_process_is_under_is_refused(pidns, tmp_path):
    """Init made its cgroup namespace in cgroup2 `ckpt-test-…/ns`, then was moved out to a
    sibling: from inside it reads `0::/../out`, which does not name the root. The dump says
    restore will refuse the image, `dump --kill` refuses to kill, restore refuses it."""
    from ckptrace.kernel.procfs import cgroup_mounts

    top = os.path.join(cgroup_mounts()[""], f"ckpt-test-{os.getpid()}")
    ns, out = os.path.join(top, "ns"), os.path.join(top, "out")
    for d in (ns, out):
        os.makedirs(d)
    w = None
    try:
        w = pidns([sys.executable, "-c", CGROUPNS_WORKLOAD, str(tmp_path), "shared"],
                  ready_file=str(tmp_path / "ready"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
        _move(w.init, ns)
        (tmp_path / "go").touch()
        deadline = time.monotonic() + 5
        while not (tmp_path / "child").exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        for pid in w.pids():
            _move(pid, out)
        assert "0::/../out" in _cgroup_views(w.init)[1].splitlines()
        img = str(tmp_path / "out.img")
        d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", img)
        err = d.stderr.decode()
        assert d.returncode == 0 and "restore will refuse this image as things stand: " in err and \
            "process 1's cgroup namespace has no known root in the cgroup2 hierarchy" in err, err
        before = sorted(w.pids())
        d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", img)
        assert d.returncode != 0 and b"not killing" in d.stderr and sorted(w.pids()) == before, d.stderr
        r = ckptrace("restore", img)
        assert r.returncode != 0 and "process 1's cgroup namespace has no known root in the cgroup2 hierarchy" in \
            r.stderr.decode(), r.stderr
    finally:
        if w is not None:  # (now: its cgroups go once it is reaped)
            w.kill()
        deadline = time.monotonic() + 5
        for d in (ns, out, top):
            while os.path.exists(d) and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    os.rmdir(d)
                time.sleep(0.02)


# a workload's start: SIGALRM counted in `ticks`
ALARM_COUNTER = r"""
import os, signal, sys, time
ticks = 0

def on_alarm(sig, frame):
    global ticks
    ticks += 1

signal.signal(signal.SIGALRM, on_alarm)
"""

ITIMER_WORKLOAD = ALARM_COUNTER + r"""
signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)
signal.setitimer(signal.ITIMER_VIRTUAL, 100, 7)
out = open(os.path.join(sys.argv[1], "timers.log"), "a", buffering=1)
open(os.path.join(sys.argv[1], "ready"), "w").close()
while True:
    v, i = signal.getitimer(signal.ITIMER_VIRTUAL)
    out.write(f"{ticks} {v:.6f} {i:.6f}\n")
    time.sleep(0.05)
"""


def test_interval_timers_come_back(pidns, tmp_path, restored):
    """An ITIMER_REAL ticking every 100 ms into a SIGALRM handler and an armed ITIMER_VIRTUAL: the
    restored process keeps ticking, and its virtual timer has the image's interval and no more
    than the time left at the dump."""
    from ckptrace.image.reader import read_image

    w = pidns([sys.executable, "-c", ITIMER_WORKLOAD, str(tmp_path)], ready_file=str(tmp_path / "ready"),
              settle=0.3, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    img = str(tmp_path / "it.img")
    dump_kill(w, img)
    with open(img, "rb") as f:
        it = read_image(f).tasks[0].itimers
    # 0 when frozen between its firing and the handler (test_a_fired_real_timer_keeps_ticking)
    assert it["real_interval"] == 100_000 and 0 <= it["real_value"] <= 100_000, it
    # (the kernel rounds a CPU-time timer up to its tick: a few ms above 100 s at first)
    assert it["virtual_interval"] == 7_000_000 and 99_000_000 < it["virtual_value"] <= 100_020_000, it
    assert it["prof_value"] == it["prof_interval"] == 0
    log = tmp_path / "timers.log"
    last_ticks = int(log.read_text().splitlines()[-1].split()[0])
    n = len(log.read_text().splitlines())
    restore_json(img, restored)
    after = wait_for(lambda: [x.split() for x in log.read_text().splitlines()[n:]],
                     lambda a: len(a) >= 5 and int(a[-1][0]) >= last_ticks + 3)
    assert len(after) >= 5, after
    ticks = [int(x[0]) for x in after]
    assert ticks == sorted(ticks) and ticks[-1] >= last_ticks + 3, (last_ticks, ticks)  # SIGALRM every 100 ms again
    # the time left is what the image says, less the CPU time used since (no tick added again)
    assert all(float(x[2]) == 7.0 and 99 < float(x[1]) <= it["virtual_value"] / 1e6 for x in after), after


FIRED_ITIMER_WORKLOAD = ALARM_COUNTER + r"""
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
signal.setitimer(signal.ITIMER_REAL, 0.02, 0.1)
time.sleep(0.2)  # fired, its SIGALRM pending and blocked: not armed again until taken
open(os.path.join(sys.argv[1], "ready"), "w").close()
while not os.path.exists(os.path.join(sys.argv[1], "go")):
    time.sleep(0.02)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
out = open(os.path.join(sys.argv[1], "ticks.log"), "a", buffering=1)
while True:
    out.write(f"{ticks}\n")
    time.sleep(0.05)
"""


def test_a_fired_real_timer_keeps_ticking(pidns, tmp_path, restored):
    """A periodic ITIMER_REAL that fired while SIGALRM was blocked shows no time left (the kernel
    arms it again when the signal is taken): the image says so and has SIGALRM pending, and the
    restored process, once it unblocks SIGALRM, takes that signal and then one every 100 ms."""
    from ckptrace.image.reader import read_image

    w = py_workload(pidns, FIRED_ITIMER_WORKLOAD, tmp_path)
    img = str(tmp_path / "fired.img")
    dump_kill(w, img)
    with open(img, "rb") as f:
        t = read_image(f).tasks[0]
    assert (t.itimers["real_value"], t.itimers["real_interval"]) == (0, 100_000), t.itimers
    assert t.proc["shared_pending"] == 1 << (signal.SIGALRM - 1), t.proc
    restore_json(img, restored)
    (tmp_path / "go").touch()
    ticks_log = tmp_path / "ticks.log"
    ticks = wait_for(lambda: [int(x) for x in ticks_log.read_text().split()] if ticks_log.exists() else [],
                     lambda t: t and t[-1] >= 4)
    assert ticks and ticks[-1] >= 4, ticks  # the pending one, then ~6 more (1 alone: disarmed)


FAST_ITIMER_WORKLOAD = ALARM_COUNTER + r"""
signal.setitimer(signal.ITIMER_REAL, 0.011, 0.011)
open(os.path.join(sys.argv[1], "ready"), "w").close()
while True:
    time.sleep(0.05)
"""


def test_a_timer_firing_during_the_dump_keeps_its_signal(pidns, tmp_path):
    """An ITIMER_REAL firing every 11 ms fires while the dump reads the process: each image has
    its SIGALRM both queued and in the pending mask, or neither; and one that shows no time left
    has it pending (restore would otherwise disarm the timer for good). A mask read before the
    timer fired, with the queue peeked after, had the entry and not the bit: restore then queued
    nothing, and the timer stopped (about 9 dumps in 10 on this machine)."""
    from ckptrace.image.reader import read_image
    from ckptrace.image.records import siginfo_signo

    w = py_workload(pidns, FAST_ITIMER_WORKLOAD, tmp_path)
    alrm = 1 << (signal.SIGALRM - 1)
    for i in range(12):
        img = tmp_path / f"t{i}.img"
        d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", str(img))
        assert d.returncode == 0, d.stderr.decode()
        with open(img, "rb") as f:
            t = read_image(f).tasks[0]
        pending = t.proc["shared_pending"]
        queued = {siginfo_signo(i) for i in t.shared_siginfo}
        assert all(pending >> (s - 1) & 1 for s in queued), (i, hex(pending), queued)
        assert t.itimers["real_value"] > 0 or pending & alrm, (i, t.itimers, hex(pending))


CPU_ITIMER_WORKLOAD = r"""
import os, signal, sys, time
signal.setitimer(signal.ITIMER_VIRTUAL, 100, 7)
signal.setitimer(signal.ITIMER_PROF, 50, 3)
open(os.path.join(sys.argv[1], "ready"), "w").close()
while True:
    time.sleep(1000)
"""


def test_cpu_time_interval_timers_do_not_gain_a_tick_per_restore(pidns, tmp_path, restored):
    """setitimer adds a scheduler tick to the value of ITIMER_VIRTUAL and ITIMER_PROF: restore
    takes it off, so a sleeping process dumped, restored and dumped again, three generations,
    shows no more time left each time (its own CPU time may count it down), and the same
    intervals."""
    from ckptrace.image.reader import read_image

    w = py_workload(pidns, CPU_ITIMER_WORKLOAD, tmp_path)
    gens = []
    ns = w.ns
    for gen in range(3):
        img = str(tmp_path / f"gen{gen}.img")
        d = ckptrace("dump", "--pidns", str(ns), "--kill", "-q", "-o", img)
        assert d.returncode == 0, d.stderr.decode()
        with open(img, "rb") as f:
            gens.append(read_image(f).tasks[0].itimers)
        if gen < 2:
            ns = restore_json(img, restored)["pidns"]
    assert all((it["virtual_interval"], it["prof_interval"]) == (7_000_000, 3_000_000) for it in gens), gens
    for name, first in (("virtual", 100_000_000), ("prof", 50_000_000)):
        values = [it[f"{name}_value"] for it in gens]
        # the workload's own setitimer got its tick (a few ms over at first); restore adds none
        assert first - 100_000 < values[0] <= first + 20_000, (name, values)
        assert values == sorted(values, reverse=True) and values[-1] > values[0] - 100_000, (name, values)


POSIX_TIMER_WORKLOAD = r"""
import ctypes, os, signal, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
ticks = 0

def on_usr1(sig, frame):
    global ticks
    ticks += 1

signal.signal(signal.SIGUSR1, on_usr1)

def create(clock, notify, signo, value):
    sev = ctypes.create_string_buffer(struct.pack("<Qiii44x", value, signo, notify, 0), 64)
    t = ctypes.c_void_p()
    assert libc.timer_create(clock, sev, ctypes.byref(t)) == 0, ctypes.get_errno()
    return t

def arm(t, value, interval):
    spec = struct.pack("<qqqq", 0, interval, int(value), 0) if value >= 1 else struct.pack("<qqqq", 0, interval, 0, int(value * 1e9))
    assert libc.timer_settime(t, 0, ctypes.create_string_buffer(spec, 32), None) == 0

a = create(1, 0, signal.SIGUSR1, 0x1234)  # CLOCK_MONOTONIC, SIGEV_SIGNAL SIGUSR1
gone = create(0, 1, 0, 0)
b = create(0, 1, 0, 0)  # CLOCK_REALTIME, SIGEV_NONE: armed for 500 s, never signals
libc.timer_delete(gone)  # ids now have a hole: restore must not renumber
arm(a, 0.1, 100_000_000)
with open(os.path.join(sys.argv[1], "b_armed"), "w") as f:
    f.write(repr(time.time()))  # (just before: b has at most 500 s less the time since then left)
arm(b, 500, 0)
out = open(os.path.join(sys.argv[1], "ptimers.log"), "a", buffering=1)
open(os.path.join(sys.argv[1], "ready"), "w").close()
while True:
    out.write(f"{ticks}\n")
    time.sleep(0.05)
"""


def _timers_of(pid: int) -> list[tuple]:
    from ckptrace.kernel.procfs import posix_timers

    return sorted((t["id"], t["clock"], t["signo"], t["sival"], t["notify"]) for t in posix_timers(pid))


def test_a_pending_posix_timer_signal_comes_once_from_its_timer(pidns, tmp_path, restored):
    """A periodic timer whose signal is blocked has it pending once: the kernel does not re-arm
    the timer until it is delivered, and then counts the periods missed as its overrun. Restore
    queued the image's SI_TIMER entry again as an ordinary signal and re-armed the timer, which
    queued its own beside it: two deliveries, the first with the dumped overrun (0). Now the
    timer itself makes its signal pending again, to the process or (SIGEV_THREAD_ID) to its
    thread: one delivery, whose overrun counts the periods since the restore, and the timer goes
    on."""
    exe = workload_exe(tmp_path, "timerpend")
    w = pidns([exe, str(tmp_path)], ready_file=str(tmp_path / "ready"), stdin=subprocess.DEVNULL,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    img = str(tmp_path / "t.img")
    dump_kill(w, img)
    restore_json(img, restored)
    time.sleep(0.3)
    (tmp_path / "go").touch()
    lines = _log_lines(tmp_path / "log", 5, 5)
    assert "drained" in lines, lines
    taken = [tuple(int(x) for x in line.split()) for line in lines[:lines.index("drained")]]
    assert sorted((sig, val) for sig, val, _ in taken) == [(5, 66), (6, 77)], lines
    assert all(ovr >= 5 for _, _, ovr in taken), lines  # ~30 periods since the restore
    assert sorted(lines[lines.index("drained") + 1:]) == ["next 5 66", "next 6 77"], lines


def test_posix_timers_come_back_under_their_ids(pidns, tmp_path, restored):
    from ckptrace.image.reader import read_image

    w = pidns([sys.executable, "-c", POSIX_TIMER_WORKLOAD, str(tmp_path)], ready_file=str(tmp_path / "ready"),
              settle=0.3, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    want = _timers_of(w.init)
    assert [(i, c) for i, c, *_ in want] == [(0, 1), (2, 0)], want
    img = str(tmp_path / "pt.img")
    dump_kill(w, img)
    # (b's time left is 500 s less the time from its arming to the dump: over a second on a
    # loaded host, from the workload's start until after the kill)
    b_left_at_least = 500 - (time.time() - float((tmp_path / "b_armed").read_text()))
    with open(img, "rb") as f:
        (pt_a, pt_b) = sorted(read_image(f).tasks[0].posix_timers, key=lambda t: t["id"])
    assert pt_a["interval"] == 100_000_000 and 0 < pt_a["value"] <= 100_000_000 and pt_a["target"] == 1
    assert pt_b["interval"] == 0 and b_left_at_least * 10**9 < pt_b["value"] <= 500 * 10**9, (b_left_at_least, pt_b)
    log = tmp_path / "ptimers.log"
    last = int(log.read_text().split()[-1])
    res = restore_json(img, restored)
    assert _timers_of(res["init_pid"]) == want
    after = wait_for(lambda: [int(x) for x in log.read_text().split()], lambda a: a[-1] >= last + 3)
    assert after[-1] >= last + 3, (last, after[-5:])  # SIGUSR1 every 100 ms again, into the handler


LOCK_WORKLOAD = r"""
import fcntl, os, struct, sys, time
d = sys.argv[1]
a = open(os.path.join(d, "a.lock"), "w"); fcntl.flock(a, fcntl.LOCK_EX)
b = open(os.path.join(d, "b.lock"), "w"); fcntl.lockf(b, fcntl.LOCK_EX, 10, 5)  # bytes 5..14
c = open(os.path.join(d, "c.lock"), "w")
fcntl.fcntl(c, 37, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))  # F_OFD_SETLK, whole file
if os.fork() == 0:  # shares a's open file (and its flock) but holds no lock of its own
    time.sleep(1000)
open(os.path.join(d, "ready"), "w").close()
time.sleep(1000)
"""


def _conflicts(path: str, how) -> bool:
    """Whether taking a lock with `how` on a fresh open of `path` would block (it is released at once)."""
    with open(path, "r+") as f:
        try:
            how(f)
        except BlockingIOError:
            return True
        return False


def test_file_locks_come_back_and_a_held_one_fails_the_restore(pidns, tmp_path, restored):
    import fcntl
    from ckptrace.image.reader import read_image

    w = pidns([sys.executable, "-c", LOCK_WORKLOAD, str(tmp_path)], ready_file=str(tmp_path / "ready"),
              settle=0.2, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a, b, c = (str(tmp_path / f"{x}.lock") for x in "abc")
    flock_ex = lambda f: fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # noqa: E731
    posix_mid = lambda f: fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 9)  # noqa: E731
    posix_head = lambda f: fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 0)  # noqa: E731
    ofd = lambda f: fcntl.fcntl(f, 37, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))  # noqa: E731
    assert _conflicts(a, flock_ex) and _conflicts(b, posix_mid) and _conflicts(c, ofd)
    # Dumped while the original runs on: its locks are still held, so the restore must fail
    # cleanly, naming the lock, and leave nothing behind.
    img = str(tmp_path / "lk.img")
    d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", img)
    assert d.returncode == 0, d.stderr.decode()
    with open(img, "rb") as f:
        image = read_image(f)
    held = [(lk["kind"], lk["type"], lk["start"], lk["length"]) for t in image.processes() for lk in t.locks]
    assert sorted(held) == [(1, 1, 5, 10), (2, 1, 0, 0), (3, 1, 0, 0)], held  # POSIX, FLOCK (once), OFD
    before = pidns_inodes(tmp_path)
    r = ckptrace("restore", img)
    err = r.stderr.decode()
    # (named by its file and holder: the original, whichever of its locks comes first)
    assert r.returncode != 0 and f"lock is held by host pid {w.init} now" in err, err
    assert re.search(r"pid 1 fd \d+ \(" + re.escape(str(tmp_path)) + r"/[ab]\.lock\)", err), err
    assert pidns_inodes(tmp_path) == before
    dump_kill(w, img)
    assert not _conflicts(a, flock_ex)  # released with the original...
    res = restore_json(img, restored)
    assert _conflicts(a, flock_ex) and _conflicts(b, posix_mid) and _conflicts(c, ofd)  # ...and held again
    assert not _conflicts(b, posix_head)  # only bytes 5..14 are locked, as before
    with open("/proc/locks") as f:
        owners = [int(line.split()[4]) for line in f if " POSIX " in line]
    assert res["init_pid"] in owners


INET_WORKLOAD = r"""
import os, select, socket, sys
d = sys.argv[1]
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
ls.bind(("127.0.0.1", 0))
ls.listen(5)
us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
us.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
us.bind(("127.0.0.1", 0))
held = []
if len(sys.argv) > 2:  # also a connection to ourselves, half closed (FIN_WAIT2 / CLOSE_WAIT)
    c = socket.create_connection(ls.getsockname())
    held += [c, ls.accept()[0]]
    c.shutdown(socket.SHUT_WR)
with open(os.path.join(d, "ports"), "w") as f:
    f.write(f"{ls.getsockname()[1]} {us.getsockname()[1]} {ls.fileno()} {us.fileno()}")
open(os.path.join(d, "ready"), "w").close()
while True:
    for s in select.select([ls, us], [], [], 0.05)[0]:
        if s is ls:
            conn, _ = ls.accept()
            conn.sendall(b"hi")
            conn.close()
        else:
            data, peer = us.recvfrom(100)
            us.sendto(b"echo:" + data, peer)
"""


def test_listening_tcp_and_udp_sockets_come_back(pidns, tmp_path, restored):
    import socket

    w = py_workload(pidns, INET_WORKLOAD, tmp_path)
    tcp, udp, tcp_fd, udp_fd = (int(x) for x in (tmp_path / "ports").read_text().split())
    img = str(tmp_path / "inet.img")
    dump_kill(w, img)
    shown = ckptrace("show", img).stdout.decode()
    assert f"(tcp 127.0.0.1:{tcp} listening)" in shown and f"(udp 127.0.0.1:{udp})" in shown, shown[-600:]
    res = restore_json(img, restored)
    from ckptrace.kernel.sys import pidfd_getfd, pidfd_open

    pidfd = pidfd_open(res["init_pid"])
    try:  # the options set on the originals are set again (SO_REUSEPORT before the bind)
        for fd, opt in ((tcp_fd, socket.SO_REUSEPORT), (udp_fd, socket.SO_BROADCAST)):
            with socket.socket(fileno=pidfd_getfd(pidfd, fd)) as s:
                assert s.getsockopt(socket.SOL_SOCKET, opt) == 1, (fd, opt)
    finally:
        os.close(pidfd)
    with socket.create_connection(("127.0.0.1", tcp), timeout=3) as c:
        assert c.recv(10) == b"hi"  # the restored listener accepts, from its restored select loop
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(3)
        u.sendto(b"x", ("127.0.0.1", udp))
        assert u.recvfrom(100)[0] == b"echo:x"
    # a second copy while the first holds the ports: refused, naming the socket and its fd
    before = pidns_inodes(tmp_path)
    r = ckptrace("restore", img)
    err = r.stderr.decode().strip()
    assert r.returncode != 0 and len(err.splitlines()) == 1, err
    assert "EADDRINUSE" in err and f"udp 127.0.0.1:{udp}" in err and f"fd {udp_fd}" in err and "None" not in err, err
    assert f"its address is taken here, by host pid {res['init_pid']} (" in err, err  # who holds it
    assert pidns_inodes(tmp_path) == before


def test_a_connection_held_by_the_original_names_it(pidns, tmp_path):
    """A copy of a namespace restored while the original still has its TCP connection: the
    4-tuple is taken (EADDRNOTAVAIL), and the error says who holds it."""
    import socket

    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(4)
        code = ("import socket, sys, time\nc = socket.create_connection(('127.0.0.1', %d))\n"
                "open(sys.argv[1] + '/ready', 'w').close()\ntime.sleep(3600)\n" % lst.getsockname()[1])
        w = py_workload(pidns, code, tmp_path)
        img = str(tmp_path / "conn.img")
        d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", img)
        assert d.returncode == 0, d.stderr.decode()
        r = ckptrace("restore", img)
        err = r.stderr.decode()
        assert r.returncode == 1 and "EADDRNOTAVAIL" in err and len(err.strip().splitlines()) == 1, err
        assert f"its connection is held here by host pid {w.init} (python" in err, err


def test_tcp_connection_being_closed_is_refused_by_name(pidns, tmp_path):
    """Only listeners, unconnected and ESTABLISHED TCP sockets come back: a connection half
    closed (its FIN in flight or waiting) is refused by name, before anything exists, and a
    migration refuses before killing."""
    w = pidns([sys.executable, "-c", INET_WORKLOAD, str(tmp_path), "conn"], ready_file=str(tmp_path / "ready"),
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tcp = (tmp_path / "ports").read_text().split()[0]
    img = str(tmp_path / "conn.img")
    time.sleep(0.1)
    d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", img)
    assert d.returncode == 0, d.stderr.decode()
    before = pidns_inodes(tmp_path)
    r = ckptrace("restore", img)
    err = r.stderr.decode()
    assert r.returncode != 0 and ("fin-wait" in err or "close-wait" in err) and tcp in err, err
    assert "not connections being opened or closed" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert pidns_inodes(tmp_path) == before
    # so a migration (dump --kill) refuses before killing anything
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", img)
    err = d.stderr.decode()
    assert d.returncode != 0 and "not killing" in err and "not connections being opened or closed" in err, err
    assert w.pids() and os.path.getsize(img) > 0  # the earlier image is still there too
    # a state that may pass (the program may close it): --retry tries again
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "--retry", "1", "-o", img)
    err = d.stderr.decode()
    assert d.returncode == 1 and "try 1 of 2 refused: not killing" in err and "try 2" not in err, err
    assert err.count("close-wait") == 2 and w.pids(), err  # (refused twice)


# Inet sockets sock_diag does not list: never bound (made for a later sendto or connect), TCP
# bound but neither listening nor connected, bound by address alone (IP_BIND_ADDRESS_NO_PORT).
UNLISTED_INET = r"""
import json, os, socket, sys, time
d = sys.argv[1]
NO_PORT = 24  # IP_BIND_ADDRESS_NO_PORT
socks = {
    "udp4": socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
    "udp6": socket.socket(socket.AF_INET6, socket.SOCK_DGRAM),
    "tcp4": socket.socket(socket.AF_INET, socket.SOCK_STREAM),
    "tcp6": socket.socket(socket.AF_INET6, socket.SOCK_STREAM),
    "tcp4 bound": socket.socket(socket.AF_INET, socket.SOCK_STREAM),
    "tcp6 bound v6only": socket.socket(socket.AF_INET6, socket.SOCK_STREAM),
    "tcp4 no port": socket.socket(socket.AF_INET, socket.SOCK_STREAM),
    "udp4 no port": socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
}
socks["tcp4"].setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
socks["tcp4 bound"].bind(("127.0.0.1", 0))
socks["tcp6 bound v6only"].setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
socks["tcp6 bound v6only"].bind(("::", 0))
for name in ("tcp4 no port", "udp4 no port"):
    socks[name].setsockopt(socket.IPPROTO_IP, NO_PORT, 1)
    socks[name].bind(("127.0.0.1", 0))
with open(os.path.join(d, "socks"), "w") as f:
    json.dump({name: [s.fileno(), s.family, s.type, list(s.getsockname())] for name, s in socks.items()}, f)
open(os.path.join(d, "ready"), "w").close()
while True:
    time.sleep(0.05)
"""


def test_unbound_and_bound_only_inet_sockets_come_back(pidns, tmp_path, restored):
    """TCP and UDP sockets that sock_diag does not list (never bound, or bound but neither
    listening nor connected), IPv4 and IPv6, are dumped and come back with their family, type,
    local address and options: the UDP ones send, the TCP ones connect, from where they were
    bound (a port of their own, or an address alone, the port chosen at connect)."""
    import socket

    from ckptrace.kernel.sys import pidfd_getfd, pidfd_open

    w = py_workload(pidns, UNLISTED_INET, tmp_path)
    socks = json.loads((tmp_path / "socks").read_text())
    img = str(tmp_path / "unlisted.img")
    dump_kill(w, img)
    shown = ckptrace("show", img).stdout.decode()
    assert "(udp (unbound))" in shown and "(udp6 (unbound))" in shown, shown[-1500:]
    assert f"(tcp 127.0.0.1:{socks['tcp4 bound'][3][1]} " in shown, shown[-1500:]
    res = restore_json(img, restored)
    pidfd = pidfd_open(res["init_pid"])
    try:
        got = {name: socket.socket(fileno=pidfd_getfd(pidfd, fd)) for name, (fd, *_) in socks.items()}
    finally:
        os.close(pidfd)
    try:
        for name, (_, family, stype, local) in socks.items():
            s = got[name]
            assert (s.family, s.type, list(s.getsockname())) == (family, stype, local), name
        opt = lambda name, level, o: got[name].getsockopt(level, o)  # noqa: E731
        assert opt("tcp4", socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert opt("tcp4", socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0  # unbound: none of restore's own
        assert opt("tcp6 bound v6only", socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        for name, host, family in (("udp4", "127.0.0.1", socket.AF_INET), ("udp6", "::1", socket.AF_INET6),
                                   ("udp4 no port", "127.0.0.1", socket.AF_INET)):
            with socket.socket(family, socket.SOCK_DGRAM) as rx:
                rx.bind((host, 0))
                rx.settimeout(3)
                got[name].sendto(name.encode(), rx.getsockname())
                data, src = rx.recvfrom(100)
                assert data == name.encode() and src[0] == host, (name, src)
        for name, host, family in (("tcp4", "127.0.0.1", socket.AF_INET), ("tcp6", "::1", socket.AF_INET6),
                                   ("tcp4 bound", "127.0.0.1", socket.AF_INET),
                                   ("tcp6 bound v6only", "::1", socket.AF_INET6),
                                   ("tcp4 no port", "127.0.0.1", socket.AF_INET)):
            with socket.socket(family, socket.SOCK_STREAM) as ls:
                ls.bind((host, 0))
                ls.listen(1)
                ls.settimeout(3)
                got[name].settimeout(3)
                got[name].connect(ls.getsockname())
                conn, src = ls.accept()
                conn.close()
                if name in ("tcp4 bound", "tcp6 bound v6only"):
                    assert src[1] == socks[name][3][1], (name, src)  # from the port it was bound to
    finally:
        for s in got.values():
            s.close()
    assert os.path.exists(f"/proc/{res['init_pid']}")  # (still running its loop)


UNSUPPORTED_SOCKET = r"""
import os, socket, struct, sys, time
d = sys.argv[1]
kind = sys.argv[2]
held = []
if kind == "netlink":
    held.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE))
elif kind == "raw":
    held.append(socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
elif kind == "reset":  # a TCP connection its peer reset, still open
    ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
    c = socket.create_connection(ls.getsockname())
    a, _ = ls.accept()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    a.close(); ls.close()
    time.sleep(0.1)
    try:
        c.recv(1)  # (which takes the error: the connection is over, nothing pending)
    except ConnectionResetError:
        pass
    held.append(c)
elif kind == "refused":  # a non-blocking connect that failed, its error not read yet
    ls = socket.socket(); ls.bind(("127.0.0.1", 0)); port = ls.getsockname()[1]; ls.close()
    c = socket.socket(); c.setblocking(False)
    try:
        c.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    held.append(c)
time.sleep(0.2)
open(os.path.join(d, "fd"), "w").write(str(held[0].fileno()))
open(os.path.join(d, "ready"), "w").close()
while True:
    time.sleep(1)
"""


@pytest.mark.parametrize("kind, words", [
    ("netlink", "is an AF_NETLINK SOCK_RAW socket (protocol 0), which ckptrace cannot checkpoint"),
    ("raw", "is an AF_INET SOCK_RAW socket (protocol 1), which ckptrace cannot checkpoint"),
    ("reset", "(an AF_INET SOCK_STREAM socket (protocol 6)) is a TCP connection that has ended"),
    ("refused", "(an AF_INET SOCK_STREAM socket (protocol 6)) is a TCP socket with an error pending"),
])
def test_sockets_that_cannot_be_checkpointed_are_refused_by_what_they_are(pidns, tmp_path, kind, words):
    """Netlink and raw sockets, and TCP sockets sock_diag does not list that are not simply
    unbound or bound (a connection that ended, a connect whose failure is not read yet), are
    refused by what they are, before anything is written or killed."""
    w = pidns([sys.executable, "-c", UNSUPPORTED_SOCKET, str(tmp_path), kind], ready_file=str(tmp_path / "ready"),
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fd = (tmp_path / "fd").read_text()
    before = sorted(w.pids())
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", str(tmp_path / "x.img"))
    err = d.stderr.decode()
    assert d.returncode != 0 and words in err and f"fd {fd}:" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert sorted(w.pids()) == before and all(_states(p) <= {"S", "R"} for p in before)


# A TCP server and client in one process over 127.0.0.1, each line numbered: the client sends two
# lines a round, the server reads 5 bytes a round (its receive queue grows: there is always data
# it has not read at a dump) and echoes every whole line; the client reads the echoes as they
# come. Any byte lost, repeated or out of order is logged as ERROR.
# What the TCP workloads share: the numbered lines each end checks, in order, without a gap.
TCP_LINES = r"""
import sys
import termios
def take_lines(buf, prefix, n, who, log, answer=None):
    # the whole lines at the head of buf, each prefix + n, n + 1, ... (and answer(n) called for
    # each): the bytes left, and the number wanted next; any other line ends the program
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        if line != prefix + b"%d" % n:
            log.write(f"ERROR {who} got {line!r}, wanted {prefix.decode()}{n}\n"); sys.exit(1)
        if answer is not None:
            answer(n)
        n += 1
    return buf, n
"""

TCP_LOOP_WORKLOAD = TCP_LINES + r"""
import os, socket, sys, time
d = sys.argv[1]
ls = socket.create_server(("127.0.0.1", 0))
c = socket.create_connection(ls.getsockname())
srv, _ = ls.accept()
c.setblocking(False)
log = open(os.path.join(d, "tcp.log"), "a", buffering=1)
sent = got = echoed = 0
sbuf = cbuf = b""
open(os.path.join(d, "ready"), "w").close()
while True:
    for _ in range(2):
        c.send(b"%d\n" % sent)
        sent += 1
    data = srv.recv(5)
    if not data:
        log.write("ERROR server got EOF\n"); sys.exit(1)
    sbuf, got = take_lines(sbuf + data, b"", got, "server", log, lambda n: srv.sendall(b"e%d\n" % n))
    try:
        cbuf += c.recv(65536)
    except BlockingIOError:
        pass
    cbuf, echoed = take_lines(cbuf, b"e", echoed, "client", log)
    log.write(f"{sent} {got} {echoed}\n")
    time.sleep(0.01)
"""


def _tcp_progress(log) -> list[tuple[int, ...]]:
    text = log.read_text()
    assert "ERROR" not in text, text[-500:]
    return [tuple(int(x) for x in line.split()) for line in text.splitlines() if line.count(" ") == 2]


def _wait_progress(log, past: int, timeout: float = 10.0) -> tuple[int, ...]:
    """The log's last line once its second number has passed `past`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _tcp_progress(log)
        if rows and rows[-1][1] > past:
            return rows[-1]
        time.sleep(0.05)
    raise AssertionError(f"no progress past {past}: {log.read_text()[-300:]}")


def _tcp_records(img: str) -> list[dict]:
    from ckptrace.image.reader import File, read_image
    from ckptrace.image.records import RecType

    with open(img, "rb") as f:
        image = read_image(f)
    return [r.fields for o in image.objects.values() if isinstance(o, File) for r in o.extra
            if r.type == RecType.FILE_TCP]


def _dump_tcp_loop(pidns, code: str, tmp_path):
    """Start a TCP_LOOP_WORKLOAD-like `code`, let its exchange run 50 lines, `dump --kill` it:
    (image path, its FILE_TCP fields, the log, the log's last progress at the dump)."""
    w = py_workload(pidns, code, tmp_path)
    log = tmp_path / "tcp.log"
    _wait_progress(log, 50)
    img = str(tmp_path / "tcp.img")
    dump_kill(w, img)
    return img, _tcp_records(img), log, _tcp_progress(log)[-1]


def _tcp_loop_goes_on(log, at_dump) -> None:
    """The restored exchange runs 100 lines past the dump, echoing as it goes."""
    _, _, echoed = _wait_progress(log, at_dump[1] + 100)
    assert echoed > at_dump[2] + 50


def test_tcp_connection_inside_the_namespace_carries_on(pidns, tmp_path, restored):
    """Both ends of a loopback connection in the namespace, with bytes in a receive queue the
    program has not read: after dump --kill and restore (TCP_REPAIR), the numbered exchange goes
    on with no byte lost, repeated or reordered (the workload checks every line)."""
    img, conns, log, at_dump = _dump_tcp_loop(pidns, TCP_LOOP_WORKLOAD, tmp_path)
    assert len(conns) == 2 and any(c["inq_len"] > 0 for c in conns), conns
    shown = ckptrace("show", img).stdout.decode()
    assert "established, " in shown and " to read, " in shown, shown[-800:]
    # show --json's `queued` has those bytes too (it counted unix queue records only: 0)
    fds = [f for p in json.loads(ckptrace("show", "--json", img).stdout)["procs"] for f in p["fds"]
           if f["socket"] and f["socket"].startswith("tcp") and "established" in f["socket"]]
    assert sorted(f["queued"]["bytes"] for f in fds) == sorted(c["inq_len"] for c in conns), fds
    assert all(f["queued"]["messages"] == 0 for f in fds)
    # and its VMAs' `file` names the heap and stack as /proc/PID/maps does (it was "")
    vmas = [v for p in json.loads(ckptrace("show", "--json", img).stdout)["procs"] for v in p["vmas"]]
    assert {"[heap]", "[stack]", "[vdso]", "[vvar]"} <= {v["file"] for v in vmas}, {v["file"] for v in vmas}
    restore_json(img, restored)
    _tcp_loop_goes_on(log, at_dump)


# TCP_LOOP_WORKLOAD over ::1, its listener with IPV6_V6ONLY (socket.create_server sets it for
# AF_INET6): the accepted socket inherits the option. Its fd numbers go to tmp_path/fds.
TCP_LOOP_V6_WORKLOAD = TCP_LOOP_WORKLOAD.replace(
    'ls = socket.create_server(("127.0.0.1", 0))',
    'ls = socket.create_server(("::1", 0), family=socket.AF_INET6)').replace(
    "socket.create_connection(ls.getsockname())", "socket.create_connection(ls.getsockname()[:2])").replace(
    "c.setblocking(False)\n",
    "c.setblocking(False)\nopen(os.path.join(d, 'fds'), 'w').write('%d %d' % (srv.fileno(), c.fileno()))\n")


def test_ipv6_connection_with_v6only_carries_on(pidns, tmp_path, restored):
    """An IPv6 connection over ::1 whose accepted end has IPV6_V6ONLY (from its listener): the
    option was set after tcprepair.make had bound the socket, which the kernel refuses (EINVAL),
    so the restore failed. It is set before bind now, and the exchange goes on."""
    import socket

    assert TCP_LOOP_V6_WORKLOAD != TCP_LOOP_WORKLOAD and "fds" in TCP_LOOP_V6_WORKLOAD
    img, conns, log, at_dump = _dump_tcp_loop(pidns, TCP_LOOP_V6_WORKLOAD, tmp_path)
    assert len(conns) == 2, conns
    res = restore_json(img, restored)
    _tcp_loop_goes_on(log, at_dump)
    srv_fd, c_fd = (int(x) for x in (tmp_path / "fds").read_text().split())
    # (the client's end was bound by its connect(), which leaves V6ONLY 0; bound again by restore
    # to ::1, it reads 1: binding to a specific IPv6 address sets it. See docs/restore.md.)
    for fd in (srv_fd, c_fd):
        with grab(res["init_pid"], fd) as dup:
            s = socket.socket(fileno=dup)
            try:
                assert s.family == socket.AF_INET6 and s.getsockname()[0] == "::1"
                assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            finally:
                s.detach()


# Both queues large: a writes 8 MiB of numbered 4-byte words to b, which does not read until
# tmp_path/go exists (b's receive queue fills up, the rest waits in a's send queue, never sent);
# then b reads every byte and checks it. a is non-blocking. "ready" once a's send() took it all.
TCP_BIG_QUEUES_WORKLOAD = r"""
import os, socket, struct, sys, time
d = sys.argv[1]
N = 8 << 20
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, 33, 768 << 10)  # SO_RCVBUFFORCE: b, accepted, inherits it
ls.bind(("127.0.0.1", 0))
ls.listen()
a = socket.socket()
a.setsockopt(socket.SOL_SOCKET, 32, 8 << 20)  # SO_SNDBUFFORCE
a.connect(ls.getsockname())
b, _ = ls.accept()
a.setblocking(False)
data = b"".join(struct.pack("<I", i) for i in range(N // 4))
sent = 0
while sent < N:
    try:
        sent += a.send(data[sent:])
    except BlockingIOError:
        time.sleep(0.01)
time.sleep(0.5)
open(os.path.join(d, "fds"), "w").write("%d %d" % (a.fileno(), b.fileno()))
open(os.path.join(d, "ready"), "w").close()
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.05)
got = bytearray()
b.settimeout(10)
while len(got) < N:
    chunk = b.recv(1 << 20)
    if not chunk:
        break
    got += chunk
b.setblocking(False)
try:
    extra = b.recv(1 << 16)
except BlockingIOError:
    extra = b""
log = open(os.path.join(d, "big.log"), "w")
log.write("ok\n" if got == data and not extra else f"ERROR got {len(got)} bytes (+{len(extra)}), "
          f"first difference at {next((i for i in range(min(len(got), N)) if got[i] != data[i]), min(len(got), N))}\n")
log.close()
while True:
    time.sleep(1)
"""


def test_tcp_connection_with_large_queues_carries_on(pidns, tmp_path, restored):
    """A connection whose reader stopped reading, with 1.5 MiB in its receive queue and over
    6 MiB in its writer's send queue (more than tcp_wmem[2], which the original's SO_SNDBUFFORCE
    passed): the restore filled the queues into the new sockets' default buffers, where the send
    queue could not take it all (waiting for acknowledgments that a peer which does not read
    never sends; repair mode never gets any). The buffers are made big enough first: every byte
    arrives, once, in order, and the non-blocking writer is non-blocking still."""
    w = py_workload(pidns, TCP_BIG_QUEUES_WORKLOAD, tmp_path)
    img = str(tmp_path / "big.img")
    dump_kill(w, img)
    conns = _tcp_records(img)
    assert len(conns) == 2, conns
    assert max(c["inq_len"] for c in conns) > 1 << 20 and max(c["outq_len"] for c in conns) > 5 << 20, conns
    res = restore_json(img, restored)
    a_fd, _ = (int(x) for x in (tmp_path / "fds").read_text().split())
    with open(f"/proc/{res['init_pid']}/fdinfo/{a_fd}") as f:
        flags = int(next(line for line in f if line.startswith("flags:")).split()[1], 8)
    assert flags & os.O_NONBLOCK, "the writer's socket came back blocking"
    (tmp_path / "go").touch()
    deadline = time.monotonic() + 20
    while not (tmp_path / "big.log").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "big.log").read_text() == "ok\n"


def test_tcprepair_make_fills_queues_past_the_default_buffers(root):
    """tcprepair.make with 2 MiB to read and 6 MiB sent and not acknowledged (more than tcp_wmem[2]):
    the send queue's fill in repair mode used to wait forever once past sk_sndbuf, nothing being
    acknowledged in repair mode. A real connection is taken over in its place: its peer gets the
    6 MiB (retransmitted once out of repair mode) and the new socket reads the 2 MiB."""
    import socket

    from ckptrace.kernel import tcprepair

    def timed_out(signum, frame):
        raise TimeoutError("tcprepair.make hung")

    listener = socket.create_server(("127.0.0.1", 0))
    ours = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    local, remote = ours.getsockname(), ours.getpeername()
    tcprepair.set_repair(ours.fileno(), True)
    state = tcprepair.read_state(ours.fileno(), "ours")
    ours.close()  # in repair mode: silently
    inq, outq = os.urandom(2 << 20), os.urandom(6 << 20)
    f = dict(state.fields, inq_len=len(inq), outq_len=len(outq), unsent_len=0,
             inq_seq=(state.fields["inq_seq"] - len(inq)) & 0xFFFFFFFF, outq_seq=state.fields["outq_seq"])
    old = signal.signal(signal.SIGALRM, timed_out)
    signal.setitimer(signal.ITIMER_REAL, 15)
    try:
        s = tcprepair.make(socket.AF_INET, local, remote, f, inq, outq)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    with listener, peer, s:
        tcprepair.finish(s, f, outq)
        s.settimeout(10)
        peer.settimeout(20)
        got = bytearray()
        while len(got) < len(inq):
            got += s.recv(1 << 20)
        assert got == inq
        got = bytearray()
        while len(got) < len(outq):
            chunk = peer.recv(1 << 20)
            assert chunk, f"EOF after {len(got)} bytes"
            got += chunk
        assert got == outq


# A client in the namespace of a server outside it (the test): numbered lines sent every 10 ms,
# each answered by the server with "r<n>"; the client checks the answers' order.
TCP_CLIENT_WORKLOAD = TCP_LINES + r"""
import os, socket, sys, time
d, port = sys.argv[1], int(sys.argv[2])
c = socket.create_connection(("127.0.0.1", port))
c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
c.setblocking(False)
log = open(os.path.join(d, "tcp.log"), "a", buffering=1)
with open(os.path.join(d, "fd"), "w") as f:
    f.write(str(c.fileno()))
sent = got = 0
buf = b""
open(os.path.join(d, "ready"), "w").close()
while True:
    c.send(b"%d\n" % sent)
    sent += 1
    try:
        data = c.recv(65536)
        if not data:
            log.write("ERROR client got EOF\n"); sys.exit(1)
        buf += data
    except BlockingIOError:
        pass
    except OSError as exc:
        log.write(f"ERROR client {exc}\n"); sys.exit(1)
    buf, got = take_lines(buf, b"r", got, "client", log)
    log.write(f"{sent} {got} 0\n")
    time.sleep(0.01)
"""


class _LineServer:
    """The outside end: accepts one connection, checks the numbered lines it gets and answers
    each, from a thread; `errors` holds what went wrong (a reset, a gap)."""

    def __init__(self):
        import socket
        import threading

        self.ls = socket.create_server(("127.0.0.1", 0))
        self.port = self.ls.getsockname()[1]
        self.got = 0
        self.errors: list[str] = []
        self.done = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        self.ls.settimeout(10)
        try:
            conn, _ = self.ls.accept()
        except OSError as exc:
            self.errors.append(f"server: accept: {exc!r}")
            return
        conn.settimeout(0.2)
        buf = b""
        with conn:
            while not self.done.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError as exc:
                    self.errors.append(f"server: {exc!r}")
                    return
                if not data:
                    self.errors.append("server: EOF")
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if int(line) != self.got:
                        self.errors.append(f"server got {line!r}, wanted {self.got}")
                        return
                    conn.sendall(b"r%d\n" % self.got)
                    self.got += 1

    def wait(self, past: int, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.got <= past and not self.errors:
            time.sleep(0.05)
        assert not self.errors, self.errors
        assert self.got > past, f"the server got nothing past line {past}"
        return self.got

    def close(self):
        self.done.set()
        self.t.join(2)
        self.ls.close()


def _tcp_client(pidns, tmp_path, port: int):
    """TCP_CLIENT_WORKLOAD in a namespace of its own, talking to 127.0.0.1:port (outside)."""
    return pidns([sys.executable, "-c", TCP_CLIENT_WORKLOAD, str(tmp_path), str(port)],
                 ready_file=str(tmp_path / "ready"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)


def _client_dumped(w, tmp_path, server: "_LineServer") -> tuple[str, int, int]:
    """Once `server` has 30 lines from client `w`: dump --kill of it. (image, the lines the
    server had then, the answers the client had)."""
    server.wait(30)
    img = str(tmp_path / "tcp.img")
    # The server, outside, answers the line the client sent just before the freeze whenever it
    # gets to it: after the dump read the connection, on a loaded host, and the kill is refused
    # for those 4 bytes the image lacks (a passing state; docs/dump.md, --retry).
    dump_kill(w, img, "--retry", "5")
    return img, server.got, _tcp_progress(tmp_path / "tcp.log")[-1][1]


@pytest.fixture
def line_server():
    srv = _LineServer()
    yield srv
    srv.close()


def test_tcp_connection_to_a_server_outside_carries_on_without_a_reset(pidns, tmp_path, restored, line_server):
    """A client in the namespace, its server outside (here): dump --kill closes the client's end
    silently (repair mode: no FIN, no RST), and the restored end picks the exchange up where it
    was: the server gets every line in order, with no reset, and its answers reach the restored
    client in order."""
    w = _tcp_client(pidns, tmp_path, line_server.port)
    log = tmp_path / "tcp.log"
    img, at_kill, answered = _client_dumped(w, tmp_path, line_server)
    assert len(_tcp_records(img)) == 1
    time.sleep(0.3)
    assert line_server.got == at_kill and not line_server.errors, line_server.errors  # nothing seen meanwhile
    restore_json(img, restored)
    line_server.wait(at_kill + 100)
    _wait_progress(log, answered + 100)  # the server's answers reach the restored client, in order


@pytest.mark.parametrize("where", ["raise_pending", "detach"])
def test_a_late_restore_failure_closes_tcp_connections_silently(pidns, tmp_path, restored, line_server,
                                                                 monkeypatch, where):
    """A restore that fails in its last steps (here: queueing the pending signals, or letting the
    first task go) kills what it made. Its TCP connections used to leave repair mode before those
    steps, so the kill closed them with a FIN: the server outside saw EOF and the connection was
    lost. Now they leave it only just before the tasks are let go, and a failure after that puts
    them back into repair mode before the kill: the server sees nothing, and a second restore of
    the same image carries the exchange on."""
    import errno

    from ckptrace import restore
    from ckptrace.errors import KernelError
    from ckptrace.kernel.ptrace import Tracee
    from ckptrace.restorer import creds
    from ckptrace.restorer.files import FileSet

    w = _tcp_client(pidns, tmp_path, line_server.port)
    log = tmp_path / "tcp.log"
    img, at_kill, answered = _client_dumped(w, tmp_path, line_server)
    finished = []
    real_finish = FileSet.finish_tcp

    def finish_tcp(self):
        finished.append(True)
        return real_finish(self)

    def fail(*args, **kw):
        raise KernelError(f"injected failure in {where}", errno.EIO)

    monkeypatch.setattr(FileSet, "finish_tcp", finish_tcp)
    monkeypatch.setattr(creds if where == "raise_pending" else Tracee, where, fail)
    nss = pidns_inodes(tmp_path)
    with pytest.raises(KernelError, match="injected failure"):
        restore.restore(img)
    monkeypatch.undo()
    assert finished == ([] if where == "raise_pending" else [True])
    assert pidns_inodes(tmp_path) - nss == set(), "the partly restored namespace survived"
    time.sleep(0.5)
    assert not line_server.errors, line_server.errors  # no EOF, no reset
    assert line_server.got == at_kill
    restore_json(img, restored)
    line_server.wait(at_kill + 100)
    _wait_progress(log, answered + 100)


def test_dump_leaves_a_running_tcp_connection_working(pidns, tmp_path, line_server):
    """A dump that leaves the namespace running turns repair mode off again, with the
    socket's SO_REUSEADDR as it was: the exchange goes on."""
    import socket

    w = _tcp_client(pidns, tmp_path, line_server.port)
    log = tmp_path / "tcp.log"
    line_server.wait(20)
    img = str(tmp_path / "tcp.img")
    d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", img)
    assert d.returncode == 0, d.stderr.decode()
    assert len(_tcp_records(img)) == 1
    answered = _tcp_progress(log)[-1][1]
    line_server.wait(line_server.got + 100)
    _wait_progress(log, answered + 100)
    with grab(w.init, int((tmp_path / "fd").read_text())) as fd:
        s = socket.socket(fileno=fd)
        try:
            assert s.getsockopt(socket.IPPROTO_TCP, 19) == 0  # TCP_REPAIR: off again
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        finally:
            s.detach()


UTS_WORKLOAD = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None)
assert libc.sethostname(b"ckpt-host", 9) == 0 and libc.setdomainname(b"ckpt-dom", 8) == 0
out = open(os.path.join(sys.argv[1], "uts.log"), "a", buffering=1)
open(os.path.join(sys.argv[1], "ready"), "w").close()
while True:
    with open("/proc/sys/kernel/domainname") as f:
        out.write(f"{os.uname().nodename} {f.read().strip()}\n")
    time.sleep(0.05)
"""


def test_own_uts_and_ipc_namespaces_come_back_with_their_names(pidns, tmp_path, restored):
    from ckptrace.image.reader import read_image
    from ckptrace.image.records import CLONE_NEWIPC, CLONE_NEWUTS

    w = pidns(["unshare", "-u", "-i", sys.executable, "-c", UTS_WORKLOAD, str(tmp_path)],
              ready_file=str(tmp_path / "ready"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)
    img = str(tmp_path / "uts.img")
    dump_kill(w, img)
    with open(img, "rb") as f:
        init = read_image(f).tasks[0]
    assert init.own_ns & CLONE_NEWUTS and init.own_ns & CLONE_NEWIPC, hex(init.own_ns)
    assert (init.nodename, init.domainname) == (b"ckpt-host", b"ckpt-dom")
    log = tmp_path / "uts.log"
    n = len(log.read_text().splitlines())
    res = restore_json(img, restored)
    for kind in ("uts", "ipc"):
        assert os.readlink(f"/proc/{res['init_pid']}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}"), kind
    assert os.uname().nodename != "ckpt-host"  # ours is untouched
    after = wait_for(lambda: log.read_text().splitlines()[n:], bool)
    assert after and set(after) == {"ckpt-host ckpt-dom"}, after


PROC_WORKLOAD = r"""
import json, os, sys, time
d = sys.argv[1]
who = "child" if os.fork() == 0 else "init"
out = open(os.path.join(d, who + ".log"), "a", buffering=1)
while True:
    with open("/proc/1/stat") as f:
        one = f.read().rsplit(")", 1)[1].split()
    with open("/proc/self/status") as f:
        nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
    out.write(json.dumps(dict(self=os.readlink("/proc/self"), nspid=nspid, starttime=one[19],
                              pids=sorted(int(x) for x in os.listdir("/proc") if x.isdigit()))) + "\n")
    if who == "init" and not os.path.exists(os.path.join(d, "ready")):
        open(os.path.join(d, "ready"), "w").close()
    time.sleep(0.05)
"""


def _proc_view(log, after: int) -> dict:
    """The workload's latest look at its /proc, once it has written more than `after` lines."""
    deadline = time.monotonic() + 5
    while True:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) > after:
            return json.loads(lines[-1])
        assert time.monotonic() < deadline, f"{log} has no line after {after}"
        time.sleep(0.05)


def _starttime(host: int) -> str:
    with open(f"/proc/{host}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[19]


def _proc_mounts(host: int | str) -> list[tuple[str, str, str]]:
    """(device, mount point, mount options) of every proc mount in host pid's mount namespace."""
    with open(f"/proc/{host}/mountinfo") as f:
        rows = [line.split(" - ")[0].split() + line.split(" - ")[1].split() for line in f]
    return [(r[2], r[4], r[5]) for r in rows if r[-3] == "proc"]


def test_own_proc_comes_back_in_a_new_mount_namespace(pidns, tmp_path, restored):
    """A namespace made with `unshare -p -f --mount-proc` (every test namespace here) came back
    in the controller's mount namespace, and saw the host's /proc: /proc/self its host pid,
    /proc/1 the host's init, every host process listed. Now init comes back in a new mount
    namespace with a proc of the new pid namespace at /proc, while ours is untouched."""
    from ckptrace.image.reader import read_image
    from ckptrace.image.records import CLONE_NEWNS, NS_OWN_PROC

    w = py_workload(pidns, PROC_WORKLOAD, tmp_path)
    assert os.readlink(f"/proc/{w.init}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    assert _proc_view(tmp_path / "child.log", 0)["pids"] == [1, 2]
    img = str(tmp_path / "proc.img")
    dump_kill(w, img)
    with open(img, "rb") as f:
        init = read_image(f).tasks[0]
    assert init.own_ns & CLONE_NEWNS and init.ns_flags & NS_OWN_PROC, (hex(init.own_ns), init.ns_flags)
    seen = {who: len((tmp_path / f"{who}.log").read_text().splitlines()) for who in ("init", "child")}
    ours = _proc_mounts("self")
    r = ckptrace("restore", "--json", img)
    assert r.returncode == 0, r.stderr.decode()
    res = json.loads(r.stdout)
    restored.append(res["init_pid"])
    assert r.stderr == b"", r.stderr  # nothing but its /proc was its own: nothing to note
    init = res["init_pid"]
    for who, me in (("init", "1"), ("child", "2")):
        view = _proc_view(tmp_path / f"{who}.log", seen[who])
        assert view == dict(self=me, nspid=[me], starttime=_starttime(init), pids=[1, 2]), (who, view)
    # init's own mount namespace, with a new proc on top at /proc, mounted as --mount-proc does
    assert os.readlink(f"/proc/{init}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    assert all(os.readlink(f"/proc/{h}/ns/mnt") == os.readlink(f"/proc/{init}/ns/mnt") for h in ns_pids(res["pidns"]))
    dev, where, opts = _proc_mounts(init)[-1]
    assert where == "/proc" and {"nosuid", "nodev", "noexec"} <= set(opts.split(",")), (where, opts)
    # ours is as it was: the same proc mounts (none made or propagated here), our own /proc
    assert _proc_mounts("self") == ours and dev not in {d for d, _, _ in ours}
    assert os.readlink("/proc/self") == str(os.getpid())
    # and no restored process holds the controller's /proc (init's way to its host pid)
    for h in ns_pids(res["pidns"]):
        links = [os.readlink(f"/proc/{h}/fd/{fd}") for fd in os.listdir(f"/proc/{h}/fd")]
        assert not [x for x in links if x.startswith("/proc")], (h, links)


SLEEPER = r"""
import os, sys, time
open(os.path.join(sys.argv[1], "ready"), "w").close()
while True:
    time.sleep(1)
"""


def test_a_namespace_in_our_mount_namespace_stays_in_it(pidns, tmp_path, restored):
    """`unshare -p -f` without --mount-proc: init shares our mount namespace and /proc, and
    comes back in ours, with no mount made."""
    from ckptrace.image.reader import read_image
    from ckptrace.image.records import NS_OWN_PROC

    w = pidns([sys.executable, "-c", SLEEPER, str(tmp_path)], mount_proc=False, ready_file=str(tmp_path / "ready"),
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert os.readlink(f"/proc/{w.init}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    img = str(tmp_path / "shared.img")
    dump_kill(w, img)
    with open(img, "rb") as f:
        init = read_image(f).tasks[0]
    assert not init.ns_flags & NS_OWN_PROC
    ours = _proc_mounts("self")
    res = restore_json(img, restored)
    assert os.readlink(f"/proc/{res['init_pid']}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    assert _proc_mounts("self") == ours


def test_mounts_of_its_own_mount_namespace_are_noted(pidns, tmp_path, restored):
    """A tmpfs mounted inside the namespace's mount namespace is not made again: the dump says
    so, the image keeps it in words (TASK_NS), and the restore says it again."""
    mdir = tmp_path / "m"
    mdir.mkdir()
    w = pidns(["sh", "-c", 'mount -t tmpfs ckpt-extra "$1" && shift && exec "$@"', "sh", str(mdir),
               sys.executable, "-c", SLEEPER, str(tmp_path)], ready_file=str(tmp_path / "ready"),
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    img = str(tmp_path / "mnt.img")
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", img)
    assert d.returncode == 0, d.stderr.decode()
    err = d.stderr.decode()
    assert f"ckpt-extra on {mdir} type tmpfs" in err and "a proc of its own" in err, err
    assert "on /proc type proc" not in err, err  # (its own /proc is made again)
    r = ckptrace("restore", "--json", img)
    assert r.returncode == 0, r.stderr.decode()
    res = json.loads(r.stdout)
    restored.append(res["init_pid"])
    err = r.stderr.decode()
    assert err.startswith("ckptrace restore: ") and f"ckpt-extra on {mdir} type tmpfs" in err, err
    assert "not mounted again" in err and len(err.splitlines()) == 1, err
    for who in (res["init_pid"], "self"):
        with open(f"/proc/{who}/mountinfo") as f:
            assert f" {mdir} " not in f.read(), who


USERNS_WORKLOAD = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x10000000) == 0, ctypes.get_errno()  # CLONE_NEWUSER
print("unshared", flush=True)
sys.stdin.readline()  # the test has mapped uid 0 here to host uid 100000
os.setresgid(0, 0, 0)
os.setresuid(0, 0, 0)
try:
    open("/etc/shadow").close()
    print("read", flush=True)
except PermissionError:
    print("EACCES", flush=True)
null = os.open(os.devnull, os.O_RDWR)  # (no pipe to the test left in the image)
for fd in (0, 1, 2):
    os.dup2(null, fd)
while True:
    time.sleep(1)
"""

TIMENS_FOR_CHILDREN = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x80) == 0, ctypes.get_errno()  # CLONE_NEWTIME: for its children, not entered
with open("/proc/self/timens_offsets", "w") as f:
    f.write("monotonic 3000 0\n")
open(os.path.join(sys.argv[1], "ready"), "w").close()
while True:
    time.sleep(1)
"""


def _unmade_ns_workload(pidns, tmp_path, kind: str):
    """A namespace whose init is in a `kind` namespace of its own that restore does not make;
    checked to be really in it."""
    quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kind == "user":
        # (it talks over pipes: as host uid 100000 it cannot reach tmp_path, root's alone)
        w = pidns([sys.executable, "-c", USERNS_WORKLOAD, str(tmp_path)], stdin=subprocess.PIPE,
                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        with w.proc.stdin, w.proc.stdout:
            assert w.proc.stdout.readline() == "unshared\n"
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{w.init}/{name}", "w") as f:
                    f.write("0 100000 65536\n")
            w.proc.stdin.write("mapped\n")
            w.proc.stdin.flush()
            # its capabilities are over its user namespace only, not over the host's files
            assert w.proc.stdout.readline() == "EACCES\n"
        with open(f"/proc/{w.init}/status") as f:
            assert next(line.split()[1:] for line in f if line.startswith("Uid:")) == ["100000"] * 4
    elif kind == "time_children":
        w = pidns([sys.executable, "-c", TIMENS_FOR_CHILDREN, str(tmp_path)], ready_file=str(tmp_path / "ready"), **quiet)
    else:
        unshare = {"time": ["-T", "--monotonic=1000000", "--boottime=2000000"]}[kind]
        w = pidns(["unshare", *unshare, sys.executable, "-c", SLEEPER, str(tmp_path)],
                  ready_file=str(tmp_path / "ready"), **quiet)
    if kind == "time_children":
        assert os.readlink(f"/proc/{w.init}/ns/time") == os.readlink("/proc/self/ns/time")
        assert os.readlink(f"/proc/{w.init}/ns/time_for_children") != os.readlink("/proc/self/ns/time")
    else:
        assert os.readlink(f"/proc/{w.init}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}"), kind
    return w


@pytest.mark.parametrize("kind,said", [
    ("user", "was in a user namespace of its own: restore does not make user namespaces, it would come back as "
             "host uid 100000 with its capabilities over the host"),
])
def test_a_namespace_restore_does_not_make_is_refused_by_name(pidns, tmp_path, kind, said):
    """A user namespace of its own: restore puts every process in the controller's, so a
    container with uid 0 mapped to host uid 100000 came back as uid 100000 with every capability
    over the host (/etc/shadow readable), without a word (cgroup and time namespaces are made
    again: test_a_cgroup_namespace_comes_back_with_its_root, test_a_time_namespace_comes_back_
    with_its_offsets). Now `dump --kill` refuses, naming the process and the namespace, and
    leaves it running; a plain dump writes the image and says restore will refuse it; and
    restore refuses it before it makes anything."""
    from ckptrace.image.reader import read_image
    from ckptrace.image import records

    w = _unmade_ns_workload(pidns, tmp_path, kind)
    before = sorted(w.pids())
    img = str(tmp_path / "ns.img")
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", img)
    err = d.stderr.decode()
    assert d.returncode != 0 and len(err.strip().splitlines()) == 1, err
    assert "not killing" in err and f"process 1 (host pid {w.init} at the dump) {said}" in err, err
    assert sorted(w.pids()) == before and all(_states(p) <= {"S", "R"} for p in before)

    d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", img)
    err = d.stderr.decode()
    assert d.returncode == 0, err
    assert f"restore will refuse this image as things stand: process 1 (host pid {w.init} at the dump) {said}" in err, err
    with open(img, "rb") as f:
        init = read_image(f).tasks[0]
    made = records.CLONE_NEWNS | records.CLONE_NEWUTS | records.CLONE_NEWIPC | records.CLONE_NEWNET
    assert records.NS_FLAG_NAMES.get(init.own_ns & ~made) == kind.removesuffix("_children"), hex(init.own_ns)
    assert bool(init.ns_flags & records.NS_TIME_CHILDREN) == (kind == "time_children"), init.ns_flags

    nss = pidns_inodes(tmp_path)
    r = ckptrace("restore", img)
    err = r.stderr.decode()
    assert r.returncode != 0 and len(err.strip().splitlines()) == 1, err
    assert f"cannot restore this image: process 1 (host pid {w.init} at the dump) {said}" in err, err
    assert pidns_inodes(tmp_path) - nss == set(), "a refused restore created a namespace"
    assert sorted(w.pids()) == before


TIMENS_CLOCKS = r"""
import ctypes, os, sys, time
d, mode = sys.argv[1], sys.argv[2]
if mode in ("children", "nested"):  # a time namespace for its children only: it stays in its own
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.unshare(0x80) == 0, ctypes.get_errno()  # CLONE_NEWTIME
    with open("/proc/self/timens_offsets", "w") as f:
        f.write("monotonic 3000 0\nboottime 4000 0\n")


def log_clocks(name):
    while True:
        if name == "init" and os.path.exists(os.path.join(d, "fork")):
            os.rename(os.path.join(d, "fork"), os.path.join(d, "forked"))
            if os.fork() == 0:
                name = "late"
        with open(os.path.join(d, name), "a") as f:
            f.write(f"{time.clock_gettime_ns(time.CLOCK_MONOTONIC)} {time.clock_gettime_ns(time.CLOCK_BOOTTIME)}\n")
        time.sleep(0.05)


if os.fork() == 0:
    log_clocks("early")
open(os.path.join(d, "ready"), "w").close()
log_clocks("init")
"""


def _clock_lines(path) -> list[tuple[int, int]]:
    with open(path) as f:
        return [tuple(int(x) for x in line.split()) for line in f.read().splitlines() if len(line.split()) == 2]


def _time_ns(pid, which: str = "time") -> str:
    return os.readlink(f"/proc/{pid}/ns/{which}")


@pytest.mark.parametrize("mode", ["entered", "children", "nested"])
def test_a_time_namespace_comes_back_with_its_offsets(pidns, tmp_path, restored, mode):
    """entered: init in a time namespace of its own (`unshare -T --monotonic 100000 --boottime
    200000`) with a child in it too; children: init made one for its children only
    (unshare(CLONE_NEWTIME), TASK_NS TIME_CHILDREN), which its child is in; nested: both, init
    in the first and making its children in the second. Restore refused these; now it makes the
    namespaces again with their offsets: each process's CLOCK_MONOTONIC and CLOCK_BOOTTIME go on
    from where they were (not jumping back by the offsets), the processes share namespaces as
    they did (init in the host's and making its children in its own, for children),
    timens_offsets reads as before, and a child forked after the restore is in init's
    children's namespace."""
    from ckptrace.image.reader import read_image

    s = 10 ** 9
    own, for_kids = (100000 * s, 200000 * s), (3000 * s, 4000 * s)
    init_offsets, kid_offsets = {"entered": (own, own), "children": ((0, 0), for_kids), "nested": (own, for_kids)}[mode]
    argv = [sys.executable, "-c", TIMENS_CLOCKS, str(tmp_path), mode]
    if mode != "children":
        argv = ["unshare", "-T", f"--monotonic={own[0] // s}", f"--boottime={own[1] // s}", *argv]
    w = pidns(argv, ready_file=str(tmp_path / "ready"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)
    assert wait_for(lambda: (tmp_path / "early").exists() and len(w.pids()) == 2, bool)
    host_ns = _time_ns("self")
    kid = max(w.pids())
    assert _time_ns(w.init, "time_for_children") == _time_ns(kid) != host_ns
    assert (_time_ns(w.init) == host_ns) == (mode == "children")
    assert (_time_ns(w.init) == _time_ns(kid)) == (mode == "entered")
    img = str(tmp_path / "timens.img")
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-o", img)
    assert d.returncode == 0 and b"time namespace" not in d.stderr, d.stderr
    last = {name: _clock_lines(tmp_path / name)[-1] for name in ("init", "early")}
    with open(img, "rb") as f:
        dumped = read_image(f)
    kids_name = {"entered": 1, "children": 1, "nested": 2}[mode]
    assert dumped.task(1).time_ns == ({"entered": (1, *own), "children": (0, 0, 0), "nested": (1, *own)}[mode],
                                      (kids_name, *kid_offsets))
    assert dumped.task(2).time_ns == ((kids_name, *kid_offsets), (kids_name, *kid_offsets))

    res = restore_json(img, restored)
    host = {nspid(h): h for h in ns_pids(res["pidns"])}
    assert sorted(host) == [1, 2]
    made = _time_ns(host[2])
    assert made != host_ns and _time_ns(host[2], "time_for_children") == made == _time_ns(host[1], "time_for_children")
    assert (_time_ns(host[1]) == host_ns) == (mode == "children")
    assert (_time_ns(host[1]) == made) == (mode == "entered")
    for pid in (host[1], host[2]):  # (init's shows its children's)
        with open(f"/proc/{pid}/timens_offsets") as f:
            assert f.read().split() == ["monotonic", str(kid_offsets[0] // s), "0",
                                        "boottime", str(kid_offsets[1] // s), "0"], pid

    for name, offsets in (("init", init_offsets), ("early", kid_offsets)):
        seen = len(_clock_lines(tmp_path / name))
        assert wait_for(lambda: len(_clock_lines(tmp_path / name)) > seen + 2, bool)
        now = (time.clock_gettime_ns(time.CLOCK_MONOTONIC), time.clock_gettime_ns(time.CLOCK_BOOTTIME))
        for clock, before, after, host_now, offset in zip(("monotonic", "boottime"), last[name],
                                                          _clock_lines(tmp_path / name)[-1], now, offsets):
            # on from where it was, its namespace's offset ahead of the host's clock
            assert 0 < after - before < 30 * s, (name, clock, before, after)
            assert abs(host_now + offset - after) < 10 * s, (name, clock, host_now, after)

    (tmp_path / "fork").touch()
    assert wait_for(lambda: (tmp_path / "late").exists(), bool)
    late = {nspid(h): h for h in ns_pids(res["pidns"])}
    (late_pid,) = set(late) - {1, 2}
    assert _time_ns(late[late_pid]) == made
    assert wait_for(lambda: _clock_lines(tmp_path / "late"), bool)
    assert abs(time.clock_gettime_ns(time.CLOCK_MONOTONIC) + kid_offsets[0] - _clock_lines(tmp_path / "late")[-1][0]) \
        < 10 * s


def test_a_time_namespace_without_offsets_migrates(pidns, tmp_path, restored):
    """`unshare -T` with no offsets: its clocks read as the host's, so the restore, which puts it
    in the controller's time namespace, changes nothing it can see: no refusal."""
    w = pidns(["unshare", "-T", sys.executable, "-c", SLEEPER, str(tmp_path)], ready_file=str(tmp_path / "ready"),
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert os.readlink(f"/proc/{w.init}/ns/time") != os.readlink("/proc/self/ns/time")
    img = str(tmp_path / "t0.img")
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-o", img)
    assert d.returncode == 0 and b"time namespace" not in d.stderr, d.stderr
    restore_json(img, restored)


NETNS_WORKLOAD = r"""
import fcntl, os, select, socket, struct, sys, time
d, port, abstract = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # lo up, as `ip link set lo up`
    req = bytearray(struct.pack("16sH22x", b"lo", 0))
    fcntl.ioctl(s, 0x8913, req)
    struct.pack_into("H", req, 16, struct.unpack_from("H", req, 16)[0] | 1)
    fcntl.ioctl(s, 0x8914, req)
lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", port))
lst.listen(8)
abs_lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
abs_lst.bind(b"\0" + abstract)
abs_lst.listen(8)
if os.fork() == 0:  # a client inside: its connection over loopback must live on (TCP repair)
    c = socket.create_connection(("127.0.0.1", port))
    n = 0
    while True:
        n += 1
        c.sendall(b"%d\n" % n)
        time.sleep(0.02)
conn, _ = lst.accept()
log = open(os.path.join(d, "conn.log"), "ab", buffering=0)
open(os.path.join(d, "ready"), "w").close()
while True:
    for r in select.select([lst, abs_lst, conn], [], [])[0]:
        if r is conn:
            log.write(conn.recv(4096))
        else:
            c, _ = r.accept()
            c.sendall(b"inner" if r is lst else b"abs-inner")
            c.close()
"""

ASK_INSIDE = r"""
import socket, sys
port, abstract = int(sys.argv[1]), sys.argv[2].encode()
with socket.create_connection(("127.0.0.1", port), timeout=3) as c:
    tcp = c.recv(16)
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u:
    u.settimeout(3)
    u.connect(b"\0" + abstract)
    unix = u.recv(16)
print(tcp.decode(), unix.decode())
"""


def _lo_flags(pid: int) -> int:
    """lo's interface flags in host pid `pid`'s network namespace (SIOCGIFFLAGS, from inside)."""
    code = ("import fcntl, socket, struct; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "r = bytearray(struct.pack('16sH22x', b'lo', 0)); fcntl.ioctl(s, 0x8913, r); "
            "print(struct.unpack_from('H', r, 16)[0])")
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_own_network_namespace_comes_back_in_a_new_one(pidns, tmp_path, restored):
    """A namespace started with `unshare -n` (lo up) came back in the controller's network
    namespace: its listener on 127.0.0.1:PORT met the host's own listener there (EADDRINUSE,
    nothing restored), and its abstract unix name the host's socket of that name. Now it comes
    back in a new network namespace with lo up: its listener and abstract name answer from
    inside it while the host's stay ours, and a TCP connection between two of its processes
    over loopback lives on (made again in repair mode inside the new namespace)."""
    import socket

    host_lst = socket.socket()
    host_lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    host_lst.bind(("127.0.0.1", 0))
    host_lst.listen(8)
    port = host_lst.getsockname()[1]
    abstract = f"ckpt-netns-{os.getpid()}-{port}"
    host_abs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host_abs.bind(b"\0" + abstract.encode())
    host_abs.listen(8)
    try:
        w = pidns(["unshare", "-n", sys.executable, "-c", NETNS_WORKLOAD, str(tmp_path), str(port), abstract],
                  ready_file=str(tmp_path / "ready"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
        assert os.readlink(f"/proc/{w.init}/ns/net") != os.readlink("/proc/self/ns/net")
        time.sleep(0.2)
        img = str(tmp_path / "net.img")
        d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", img)
        assert d.returncode == 0, d.stderr.decode()
        assert b"network namespace" not in d.stderr, d.stderr  # only lo: nothing to note
        log = tmp_path / "conn.log"
        before = log.read_bytes()
        r = ckptrace("restore", "--json", img)
        assert r.returncode == 0, r.stderr.decode()
        res = json.loads(r.stdout)
        restored.append(res["init_pid"])
        assert r.stderr == b"", r.stderr
        init = res["init_pid"]
        net = os.readlink(f"/proc/{init}/ns/net")
        assert net != os.readlink("/proc/self/ns/net")
        assert all(os.readlink(f"/proc/{h}/ns/net") == net for h in ns_pids(res["pidns"]))
        assert _lo_flags(init) & 1, "lo is down in the restored network namespace"
        ask = subprocess.run(["nsenter", "-t", str(init), "-n", sys.executable, "-c", ASK_INSIDE, str(port), abstract],
                             capture_output=True, text=True, timeout=10)
        assert ask.returncode == 0 and ask.stdout.split() == ["inner", "abs-inner"], ask.stderr
        # the host's own listener and abstract name are untouched, and still ours
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            c, _ = host_lst.accept()
            c.close()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u:
            u.connect(b"\0" + abstract.encode())
            host_abs.accept()[0].close()
        # the connection between the two restored processes goes on where it was
        deadline = time.monotonic() + 5
        while log.read_bytes().count(b"\n") < before.count(b"\n") + 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        nums = [int(x) for x in log.read_bytes().split()]
        assert len(nums) >= before.count(b"\n") + 20, "the restored connection carries nothing"
        assert nums == list(range(1, len(nums) + 1)), "the restored connection lost or repeated bytes"
    finally:
        host_lst.close()
        host_abs.close()


VETH_WORKLOAD = r"""
import os, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
open(os.path.join(sys.argv[1], "ready"), "w").close()
while True:
    time.sleep(1)
"""


def _in_veth_netns(pidns, tmp_path, code: str, more: str):
    """Python `code` (argv[1]: tmp_path; it makes tmp_path/ready) as pid 1 of a namespace with a
    network namespace of its own holding a veth pair, 10.231.0.1/24 on its end ckv0, and what
    the shell command `more` adds."""
    if not shutil.which("ip"):
        pytest.skip("needs ip (iproute2)")
    setup = ("ip link add ckv0 type veth peer name ckv1 && ip addr add 10.231.0.1/24 dev ckv0 && "
             f"ip link set ckv0 up && {more} && exec \"$@\"")
    return pidns(["unshare", "-n", "sh", "-c", setup, "sh", sys.executable, "-c", code, str(tmp_path)],
                 ready_file=str(tmp_path / "ready"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)


def test_what_a_network_namespace_held_besides_lo_is_noted(pidns, tmp_path, restored):
    """A network namespace with more than lo (a veth pair, an address, a route): the dump says
    what the restore will not make, and the restore, which makes a new namespace with lo as it
    was (down here), says it again."""
    w = _in_veth_netns(pidns, tmp_path, VETH_WORKLOAD, "ip route add 10.232.0.0/16 via 10.231.0.2")
    img = str(tmp_path / "veth.img")
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", img)
    assert d.returncode == 0, d.stderr.decode()
    err = d.stderr.decode()
    for what in ("interface ckv0 (veth)", "interface ckv1 (veth)", "10.231.0.1/24 on ckv0",
                 "10.232.0.0/16 via 10.231.0.2 dev ckv0", "only lo (down)"):
        assert what in err, err
    r = ckptrace("restore", "--json", img)
    assert r.returncode == 0, r.stderr.decode()
    res = json.loads(r.stdout)
    restored.append(res["init_pid"])
    err = r.stderr.decode()
    assert err.startswith("ckptrace restore: ") and "interface ckv0 (veth)" in err and "not made again" in err, err
    assert len(err.splitlines()) == 1, err
    init = res["init_pid"]
    assert os.readlink(f"/proc/{init}/ns/net") != os.readlink("/proc/self/ns/net")
    assert not _lo_flags(init) & 1, "lo was down, and is up once restored"
    links = subprocess.run(["nsenter", "-t", str(init), "-n", "ip", "-o", "link"], capture_output=True, text=True,
                           timeout=10).stdout
    assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"], links


VETH_SERVICE = r"""
import os, socket, sys, time
srv = socket.socket()
srv.bind(("10.231.0.1", 0))
srv.listen()
cli = socket.socket()
cli.bind(("10.231.0.1", 0))
cli.connect(srv.getsockname())
conn, _ = srv.accept()
open(os.path.join(sys.argv[1], "ready"), "w").close()
while True:
    time.sleep(1)
"""


def test_sockets_on_an_address_the_new_network_namespace_lacks_are_refused_before_the_kill(pidns, tmp_path):
    """A listener and a connection on a veth's address, in a network namespace of the
    container's own: restore makes a new one with lo only, where that address does not exist.
    `dump --kill` killed the namespace anyway (its check skipped every socket address, since the
    original holds its ports), and restore then refused the listener, or failed half-way on the
    connection (its local address was never checked). The address is now asked in a throw-away
    new namespace at --kill too, and for a connection's local address as well."""
    w = _in_veth_netns(pidns, tmp_path, VETH_SERVICE, "ip link set lo up")
    img = tmp_path / "veth.img"
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", str(img))
    err = d.stderr.decode()
    assert d.returncode != 0 and "not in the new network namespace" in err, err
    assert "listening" in err and "established" in err, err
    assert all(os.path.exists(f"/proc/{h}") for h in w.pids()), "killed"
    for h in w.pids():
        with open(f"/proc/{h}/status") as f:
            assert "TracerPid:\t0" in f.read()
    d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", str(img))
    assert d.returncode == 0, d.stderr.decode()
    r = ckptrace("restore", str(img))
    err = r.stderr.decode()
    assert r.returncode != 0 and err.startswith("ckptrace restore: cannot restore this image: "), err
    assert err.count("not in the new network namespace") == 3, err  # listener, both ends

CAPS_WORKLOAD = r"""
import ctypes, os, struct, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
def ok(ret, what):
    assert ret == 0, (what, ctypes.get_errno())
for cap in (13, 16):  # CAP_NET_RAW, CAP_SYS_MODULE out of the bounding set
    ok(libc.prctl(24, cap, 0, 0, 0), "capbset_drop")
with open("/proc/self/status") as f:
    prm = int(next(l for l in f if l.startswith("CapPrm:")).split()[1], 16)
prm &= ~((1 << 13) | (1 << 16) | (1 << 19))  # and CAP_SYS_PTRACE out of permitted too
inh = 1 << 10  # CAP_NET_BIND_SERVICE, also made ambient
hdr = ctypes.create_string_buffer(struct.pack("<Ii", 0x20080522, 0), 8)
data = ctypes.create_string_buffer(struct.pack("<6I", prm & 0xFFFFFFFF, prm & 0xFFFFFFFF, inh, prm >> 32, prm >> 32, 0), 24)
ok(libc.capset(hdr, data), "capset")
ok(libc.prctl(47, 2, 10, 0, 0), "ambient raise")
ok(libc.prctl(28, 0x4, 0, 0, 0), "securebits")  # SECBIT_NO_SETUID_FIXUP
threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()
out = open(os.path.join(sys.argv[1], "caps.log"), "a", buffering=1)
open(os.path.join(sys.argv[1], "ready"), "w").close()
while True:
    out.write(f"securebits={libc.prctl(27, 0, 0, 0, 0)}\n")
    time.sleep(0.05)
"""


def _caps_of(pid: int) -> dict:
    out = {}
    for tid in sorted(os.listdir(f"/proc/{pid}/task")):
        st = _status(f"/proc/{pid}/task/{tid}")
        out[nspid(int(tid))] = tuple(st[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"))
    return out


def _caps_survive_restore(w, img: str, log, restored) -> list[str]:
    """Dump `w` with --kill to `img`, restore it, check every thread's capability sets came back,
    and return the lines its log (`log`) got after the restore (once it got one)."""
    want = _caps_of(w.init)
    dump_kill(w, img)
    n = len(log.read_text().splitlines())
    res = restore_json(img, restored)
    assert _caps_of(res["init_pid"]) == want
    return wait_for(lambda: log.read_text().splitlines()[n:], bool)


def test_dropped_capabilities_stay_dropped(pidns, tmp_path, restored):
    """A root workload that dropped capabilities (as containers do) must not get them back: every
    thread's five sets and the securebits are the image's after the restore."""
    w = pidns([sys.executable, "-c", CAPS_WORKLOAD, str(tmp_path)], ready_file=str(tmp_path / "ready"),
              settle=0.2, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    want = _caps_of(w.init)
    assert len(want) == 2 and all(int(c[3], 16) >> 13 & 1 == 0 and int(c[4], 16) == 1 << 10 for c in want.values()), want
    after = _caps_survive_restore(w, str(tmp_path / "caps.img"), tmp_path / "caps.log", restored)
    assert after and set(after) == {"securebits=4"}, after


CRED_KEYS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def _thread_creds(pid: int) -> dict[int, tuple]:
    """Each thread's ids, groups and capability sets (the kernel keeps them per thread), by its
    tid inside the namespace."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        st = _status(f"/proc/{pid}/task/{tid}")
        out[nspid(int(tid))] = tuple(st[k] for k in CRED_KEYS)
    return out


def test_threads_keep_their_own_credentials(pidns, tmp_path, restored):
    """tests/workloads/threadcreds.c: besides its root main thread, one thread changed its own
    groups, gids and uids by raw system calls (losing every capability), another its own
    securebits, bounding and effective sets. Every thread comes back with its own credentials
    (they came back as the leader's: uid 0 with every capability) and securebits."""
    from ckptrace.image.reader import read_image

    exe = workload_exe(tmp_path, "threadcreds", "-pthread")
    w = pidns([exe, str(tmp_path)], ready_file=str(tmp_path / "ready"), settle=0.2, stdin=subprocess.DEVNULL,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    want = _thread_creds(w.init)
    assert len(want) == 3 and len(set(want.values())) == 3, want
    uids = sorted(c[0].split()[0] for c in want.values())
    assert uids == ["0", "0", "65534"], want
    img = tmp_path / "tc.img"
    dump_kill(w, img)
    log = tmp_path / "creds.log"
    n = len(log.read_text().splitlines())
    res = restore_json(img, restored)
    assert _thread_creds(res["init_pid"]) == want
    with open(img, "rb") as f:  # each thread that differs has its own TASK_CREDS
        image = read_image(f)
    assert [t.own_creds for t in image.tasks] == [False, True, True]
    assert sorted(t.creds["securebits"] for t in image.tasks) == [0, 0, 1]
    assert sorted(t.creds["uid"] for t in image.tasks) == [0, 0, 65534]
    # (each of the three threads logs a line in its own time: all of them, then what they said)
    after = wait_for(lambda: set(log.read_text().splitlines()[n:]), lambda a: len(a) >= 3)
    assert after == {"main securebits=0", "dropped securebits=0", "secbits securebits=1"}, after

SIGQUEUE_WORKLOAD = r"""
import ctypes, os, signal, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
RT = signal.SIGRTMIN + 1
signal.pthread_sigmask(signal.SIG_BLOCK, {RT, signal.SIGUSR1})
for value in (11, 22, 33):  # three instances of one RT signal, each with its own value
    assert libc.sigqueue(os.getpid(), RT, ctypes.c_void_p(value)) == 0
os.kill(os.getpid(), signal.SIGUSR1)  # kill(): SI_USER, queued again by number
d = sys.argv[1]
open(os.path.join(d, "ready"), "w").close()
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.02)
info = ctypes.create_string_buffer(128)
ts = ctypes.create_string_buffer(struct.pack("<qq", 0, 0), 16)
mask = ctypes.create_string_buffer(struct.pack("<Q", (1 << (RT - 1)) | (1 << (signal.SIGUSR1 - 1))), 128)
got = []
while True:
    sig = libc.sigtimedwait(mask, info, ts)
    if sig < 0:
        break
    signo, _, code, pid, uid, value = struct.unpack_from("<iii4xiIq", info.raw)
    got.append(f"{signo}:{code}:{value if signo == RT else '-'}")
with open(os.path.join(d, "got"), "w") as f:
    f.write(" ".join(got))
time.sleep(1000)
"""


def test_queued_signals_come_back_with_their_siginfo(pidns, tmp_path, restored):
    """Three sigqueue()d instances of one RT signal keep their order and si_value; a kill()ed
    SIGUSR1 comes back as one."""
    import signal as sg

    w = py_workload(pidns, SIGQUEUE_WORKLOAD, tmp_path)
    img = str(tmp_path / "sq.img")
    dump_kill(w, img)
    restore_json(img, restored)
    (tmp_path / "go").touch()
    deadline = time.monotonic() + 15
    while not (tmp_path / "got").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    rt = int(sg.SIGRTMIN) + 1
    assert (tmp_path / "got").read_text().split() == [f"{int(sg.SIGUSR1)}:0:-", f"{rt}:-1:11", f"{rt}:-1:22", f"{rt}:-1:33"]


SENDERS = r"""
import ctypes, os, signal, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
RT = signal.SIGRTMIN + 1
WAITED = (RT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD)
signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
d = sys.argv[1]
if os.fork() == 0:  # pid 2 sends init three signals, each its own way, and stays
    assert libc.sigqueue(1, RT, ctypes.c_void_p(4242)) == 0        # SI_QUEUE, process-wide
    os.kill(1, signal.SIGUSR1)                                      # SI_USER, process-wide
    assert libc.syscall(234, 1, 1, signal.SIGUSR2) == 0             # tgkill: SI_TKILL, init's thread
    open(d + "/sent", "w").close()
    while True:
        time.sleep(1)
while not os.path.exists(d + "/sent"):
    time.sleep(0.01)
if os.fork() == 0:  # pid 3 exits: the kernel's SIGCHLD (CLD_EXITED), left pending and unreaped
    os._exit(5)
while True:
    with open("/proc/3/stat") as f:
        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
            break
    time.sleep(0.01)
open(d + "/ready", "w").close()
while not os.path.exists(d + "/go"):
    time.sleep(0.02)
info = ctypes.create_string_buffer(128)
ts = ctypes.create_string_buffer(struct.pack("<qq", 0, 0), 16)
mask = ctypes.create_string_buffer(struct.pack("<Q", sum(1 << (s - 1) for s in WAITED)), 8)
got = []
while True:
    # the system call: glibc's sigtimedwait() reports SI_TKILL as SI_USER
    sig = libc.syscall(ctypes.c_long(128), mask, info, ts, ctypes.c_long(8))  # rt_sigtimedwait
    if sig < 0:
        break
    # siginfo_t: signo, errno, code, then pid, uid and (RT) si_value or (SIGCHLD) si_status
    signo, _, code, pid, uid, extra = struct.unpack_from("<iii4xiIq", info.raw)
    got.append(f"{signo}:{code}:{pid}:{extra & 0xFFFFFFFF if signo == signal.SIGCHLD else extra}")
with open(d + "/got.part", "w") as f:
    f.write(" ".join(got))
os.rename(d + "/got.part", d + "/got")
while True:
    time.sleep(1)
"""


def test_pending_signals_come_back_from_their_senders(pidns, tmp_path, restored):
    """Signals another process of the namespace sent to a blocking init (sigqueue, kill, tgkill)
    and the kernel's SIGCHLD of a child's exit come back with their whole siginfo: sender's pid,
    si_code, si_value, exit status. Re-raised from the controller, outside the namespace, the
    kernel gave them si_pid 0 (and kill/SIGCHLD lost the rest)."""
    w = py_workload(pidns, SENDERS, tmp_path)
    img = str(tmp_path / "snd.img")
    dump_kill(w, img)
    restore_json(img, restored)
    (tmp_path / "go").touch()
    deadline = time.monotonic() + 5
    while not (tmp_path / "got").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    rt = int(signal.SIGRTMIN) + 1
    SI_USER, SI_QUEUE, SI_TKILL, CLD_EXITED = 0, -1, -6, 1
    got = (tmp_path / "got").read_text().split()
    assert got == [f"{int(signal.SIGUSR2)}:{SI_TKILL}:2:0",  # the thread's own first
                   f"{int(signal.SIGUSR1)}:{SI_USER}:2:0",
                   f"{int(signal.SIGCHLD)}:{CLD_EXITED}:3:5",
                   f"{rt}:{SI_QUEUE}:2:4242"], got


@pytest.mark.kernel
def test_pending_signals_the_mask_lets_through_are_queued_whole(root):
    """A pending signal the thread does not block (a stopped process's, say): queued from inside
    the task by injected calls, it would be taken at the next call's return, its siginfo
    lost. It stays queued, siginfo and all, with the image's mask set again, until the detach,
    when the handler runs."""
    from ckptrace.kernel.ptrace import Injector, Tracee
    from ckptrace.restorer import creds

    rt = int(signal.SIGRTMIN) + 2
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        for sig in (signal.SIGUSR1, rt):
            signal.signal(sig, lambda s, _f: os.write(w, b"%d\n" % s))
        os.write(w, b"0\n")
        while True:
            time.sleep(0.01)
    os.close(w)
    try:
        assert os.read(r, 2) == b"0\n"  # its handlers are in place
        t = Tracee(pid)
        t.seize()
        t.interrupt()
        t.wait_stop()
        creds.set_mask(t, 0)

        def info(sig: int, value: int) -> bytes:  # SI_QUEUE from pid 4242, uid 7
            return struct.pack("<iii4xiIq", sig, 0, -1, 4242, 7, value).ljust(128, b"\0")

        queue = [info(signal.SIGUSR1, 1), info(rt, 2), info(rt, 3)]
        pending = 1 << (signal.SIGUSR1 - 1) | 1 << (rt - 1)
        creds.raise_pending(Injector(t), pid, pid, 0, 0, pending, (), queue)
        assert t.owed == []
        assert t.get_sigmask() == 0
        assert t.peek_siginfo(shared=True) == queue
        t.detach()
        got = set()
        deadline = time.monotonic() + 5
        while got != {int(signal.SIGUSR1), rt} and time.monotonic() < deadline:
            if select.select([r], [], [], 0.1)[0]:
                got |= {int(x) for x in os.read(r, 64).split()}
        assert got == {int(signal.SIGUSR1), rt}
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)


SHM_COMMON = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
P = 4096
def mmap(n, prot, flags, fd=-1):
    a = libc.mmap(None, n * P, prot, flags, fd, 0)
    assert a not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    return a
def put(addr, data):
    ctypes.memmove(addr, data, len(data))
def ready(*values):  # tell the test the addresses and fds (sys.argv[1]/addrs), wait to be dumped
    with open(os.path.join(sys.argv[1], "addrs"), "w") as f:
        f.write(" ".join(map(str, values)))
    open(os.path.join(sys.argv[1], "ready"), "w").close()
    while True:
        time.sleep(0.05)
"""

SHARED_SPLIT_WORKLOAD = SHM_COMMON + r"""
# 16 pages MAP_SHARED|MAP_ANONYMOUS, pages 4-11 unmapped: two VMAs of one segment.
a = mmap(16, 3, 0x21)
put(a, b"FIRST-PART")
put(a + 13 * P, b"TAIL-PART-OF-SEGMENT")
assert libc.munmap(a + 4 * P, 8 * P) == 0
# another, split in three by mprotect
b = mmap(16, 3, 0x21)
put(b, b"B-HEAD")
put(b + 6 * P, b"B-MIDDLE")
put(b + 15 * P, b"B-END")
assert libc.mprotect(b + 4 * P, 8 * P, 1) == 0
child = os.fork()
if child == 0:
    while True:
        time.sleep(0.05)
ready(a, b, child)
"""


def _peek(pid: int, addr: int, n: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
        return os.pread(f.fileno(), n, addr)


def _poke(pid: int, addr: int, data: bytes) -> None:
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as f:
        assert os.pwrite(f.fileno(), data, addr) == len(data)


def _maps(pid: int) -> dict[int, tuple[int, str, int, str]]:
    """start -> (end, perms, inode, path) of the process's VMAs."""
    out = {}
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            s, e = (int(x, 16) for x in parts[0].split("-"))
            out[s] = (e, parts[1], int(parts[4]), parts[5].strip() if len(parts) > 5 else "")
    return out


def test_shared_anonymous_segment_split_in_several_vmas_keeps_all_its_pages(pidns, tmp_path, restored):
    """A MAP_SHARED|MAP_ANONYMOUS segment with a hole munmapped in its middle (two VMAs) and one
    split in three by mprotect: every VMA's pages are in the image (not only the first VMA's),
    come back, and all the VMAs, in the parent and in its forked child, are still one segment."""
    w = py_workload(pidns, SHARED_SPLIT_WORKLOAD, tmp_path)
    a, b, _ = (int(x) for x in (tmp_path / "addrs").read_text().split())
    P = 4096
    img = str(tmp_path / "split.img")
    dump_kill(w, img)
    from ckptrace.image.reader import Mm, read_image, read_pages
    from ckptrace.image.records import VmaType

    with open(img, "rb") as f:
        image = read_image(f)
        stored, seen = b"", set()
        for mm in (o for o in image.objects.values() if isinstance(o, Mm)):
            for v in mm.vmas:
                if v.fields["vma_type"] != VmaType.SHARED_ANON:
                    continue
                for r in v.runs:
                    stored += read_pages(f, r)
                    for i in range(r.npages):  # each page of a segment stored once, parent and child alike
                        page = (v.fields["vma_objref"], v.fields["vm_pgoff"] + (r.vaddr - v.start) // P + i)
                        assert page not in seen, page
                        seen.add(page)
    for s in (b"FIRST-PART", b"TAIL-PART-OF-SEGMENT", b"B-HEAD", b"B-MIDDLE", b"B-END"):
        assert s in stored, s
    res = restore_json(img, restored)
    init = res["init_pid"]
    (child,) = [int(x) for x in open(f"/proc/{init}/task/{init}/children").read().split()]
    want = {a: b"FIRST-PART", a + 13 * P: b"TAIL-PART-OF-SEGMENT",
            b: b"B-HEAD", b + 6 * P: b"B-MIDDLE", b + 15 * P: b"B-END"}
    for pid in (init, child):
        for addr, s in want.items():
            assert _peek(pid, addr, len(s)) == s, (pid, hex(addr), s)
        maps = _maps(pid)
        assert maps[a][:2] == (a + 4 * P, "rw-s") and maps[a + 12 * P][:2] == (a + 16 * P, "rw-s")
        assert [maps[x][1] for x in (b, b + 4 * P, b + 12 * P)] == ["rw-s", "r--s", "rw-s"]
        # one object per segment: the same inode in every VMA of it, in both processes
        assert maps[a][2] == maps[a + 12 * P][2] == _maps(init)[a][2]
        assert maps[b][2] == maps[b + 4 * P][2] == maps[b + 12 * P][2] == _maps(init)[b][2]
        assert maps[a][2] != maps[b][2]
    # Writes go to the one segment: through the parent's first VMA, seen by the child; through
    # the segment file behind the parent's second VMA (at offset 0), seen in its first VMA.
    _poke(init, a + 13 * P, b"NEW-TAIL")
    assert _peek(child, a + 13 * P, 8) == b"NEW-TAIL"
    fd = os.open(f"/proc/{init}/map_files/{a + 12 * P:x}-{a + 16 * P:x}", os.O_RDWR)
    try:
        assert os.pread(fd, 10, 0) == b"FIRST-PART"
        os.pwrite(fd, b"VIA-SECOND", 0)
    finally:
        os.close(fd)
    assert _peek(init, a, 10) == _peek(child, a, 10) == b"VIA-SECOND"
    _poke(child, b + 15 * P, b"CHILD-END")
    assert _peek(init, b + 15 * P, 9) == b"CHILD-END"


MEMFD_WORKLOAD = SHM_COMMON + r"""
d = sys.argv[1]
fd = os.memfd_create("x")
os.ftruncate(fd, 4 * P)
os.pwrite(fd, b"FD-WROTE", 0)
m = mmap(4, 3, 0x01, fd)            # MAP_SHARED of the memfd whose fd stays open
put(m + P, b"MAP-WROTE")
p = mmap(4, 3, 0x02, fd)            # MAP_PRIVATE of it: its own pages once written
put(p + 2 * P, b"PRIVATE-COPY")
g = os.memfd_create("y")            # a memfd mapped, its fd then closed
os.ftruncate(g, 2 * P)
n = mmap(2, 3, 0x01, g)
os.close(g)
put(n + P, b"ONLY-MAPPED")
dl = os.path.join(d, "gone")        # a deleted file, open and mapped shared
h = os.open(dl, os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(h, 2 * P)
os.pwrite(h, b"DEL-FD", 0)
q = mmap(2, 3, 0x01, h)
put(q + P, b"DEL-MAP")
os.unlink(dl)
ready(fd, m, p, n, h, q)
"""


def test_memfd_and_deleted_file_open_and_mapped_shared_stay_one_file(pidns, tmp_path, restored):
    """A memfd (and an unlinked file) both open as an fd and mapped MAP_SHARED is one inode: after
    restore the mapping maps the restored fd's file, so pwrite through the fd shows in the
    mapping. A memfd mapped with its fd closed still comes back shared; a MAP_PRIVATE mapping of
    the memfd keeps its private pages."""
    w = py_workload(pidns, MEMFD_WORKLOAD, tmp_path)
    fd, m, p, n, h, q = (int(x) for x in (tmp_path / "addrs").read_text().split())
    P = 4096
    img = str(tmp_path / "memfd.img")
    dump_kill(w, img)
    res = restore_json(img, restored)
    init = res["init_pid"]
    maps = _maps(init)
    for num, addr, size in ((fd, m, 4), (h, q, 2)):
        st = os.stat(f"/proc/{init}/fd/{num}")
        assert maps[addr][:2] == (addr + size * P, "rw-s"), maps[addr]
        assert maps[addr][2] == st.st_ino, (os.readlink(f"/proc/{init}/fd/{num}"), maps[addr])
        assert os.stat(f"/proc/{init}/map_files/{addr:x}-{addr + size * P:x}").st_ino == st.st_ino
    assert maps[p][2] == os.stat(f"/proc/{init}/fd/{fd}").st_ino and maps[p][1] == "rw-p"
    assert _peek(init, m, 8) == b"FD-WROTE" and _peek(init, m + P, 9) == b"MAP-WROTE"
    assert _peek(init, q, 6) == b"DEL-FD" and _peek(init, q + P, 7) == b"DEL-MAP"
    for num, addr in ((fd, m), (h, q)):
        with grab(init, num) as dup:
            assert os.pread(dup, 9, P) == _peek(init, addr + P, 9)  # the mapping's writes, in the file
            os.pwrite(dup, b"AFTER-RESTORE", 3 * P if addr == m else 0)
    assert _peek(init, m + 3 * P, 13) == b"AFTER-RESTORE"
    assert _peek(init, q, 13) == b"AFTER-RESTORE"
    # the private mapping: its written page is its own, the file does not have it
    assert _peek(init, p + 2 * P, 12) == b"PRIVATE-COPY"
    with open(f"/proc/{init}/fd/{fd}", "rb") as f:
        assert f.read()[2 * P:2 * P + 12] == bytes(12)
    # the memfd whose fd was closed: mapped shared still, its page back
    assert maps[n][:2] == (n + 2 * P, "rw-s") and _peek(init, n + P, 11) == b"ONLY-MAPPED"


MAPPED_FILE_MODES_WORKLOAD = SHM_COMMON + r"""
d = sys.argv[1]
f, g = os.path.join(d, "both.bin"), os.path.join(d, "closed.bin")
for path in (f, g):
    with open(path, "wb") as out:
        out.write(b"0" * (2 * P))
def tell(name, *values):
    with open(os.path.join(d, name + ".tmp"), "w") as out:
        out.write(" ".join(map(str, values)))
    os.rename(os.path.join(d, name + ".tmp"), os.path.join(d, name))
if os.fork() == 0:                  # pid 2, dumped after pid 1: the writer
    w = os.open(f, os.O_RDWR)
    w1 = mmap(2, 3, 0x01, w)        # MAP_SHARED rw of the fd it keeps
    w2 = mmap(2, 1, 0x01, w)        # MAP_SHARED read-only of it: mprotect may make it writable
    w3 = mmap(2, 1, 0x02, w)        # MAP_PRIVATE of it
    put(w1, b"CHILD-WROTE")
    c = os.open(g, os.O_RDWR)
    c1 = mmap(2, 3, 0x01, c)        # MAP_SHARED rw, then the fd closed
    c2 = mmap(2, 1, 0x01, c)        # MAP_SHARED read-only, VM_MAYWRITE, then the fd closed
    os.close(c)
    put(c1, b"NO-FD-WROTE")
    tell("child", w, w1, w2, w3, c1, c2)
    while True:
        time.sleep(0.05)
r = os.open(f, os.O_RDONLY)         # pid 1, met first: the same files, read-only
r1 = mmap(2, 1, 0x01, r)
s = os.open(g, os.O_RDONLY)
s1 = mmap(2, 1, 0x01, s)
while not os.path.exists(os.path.join(d, "child")):
    time.sleep(0.01)
ready(r, r1, s, s1)
"""


def test_a_mapped_file_names_an_object_it_could_be_mapped_from(pidns, tmp_path, restored):
    """The FILE object a file VMA names is one its mapping could have been made from: a
    MAP_SHARED mapping that may write (VM_SHARED with VM_WRITE or VM_MAYWRITE) names a file open
    for writing, and a process holding the mapped file as an fd that allows the mapping names that
    fd's object. Mapped files were keyed by path, their f_flags taken from the first VMA met:
    pid 1's read-only mappings made pid 2's writable ones name an O_RDONLY file (a reader mapping
    it so gets EACCES), and no VMA named the fd it was mapped through. Restore still maps them."""
    from ckptrace.image.reader import read_image
    from ckptrace.image.records import FMODE_READ, FMODE_WRITE, VM_FLAG_BITS, VM_SHARED, VM_WRITE, VmaType

    VM_MAYWRITE = VM_FLAG_BITS["mw"]

    w = py_workload(pidns, MAPPED_FILE_MODES_WORKLOAD, tmp_path)
    r, r1, s, s1 = (int(x) for x in (tmp_path / "addrs").read_text().split())
    wfd, w1, w2, w3, c1, c2 = (int(x) for x in (tmp_path / "child").read_text().split())
    img_path = tmp_path / "modes.img"
    dump_kill(w, img_path)
    with open(img_path, "rb") as fimg:
        img = read_image(fimg)
    vmas, fd_refs = {}, {}
    for t in img.processes():
        fd_refs[t.tid] = {d["fd_descriptor"]: d["fd_objref"] for d in img.obj(t.files_objref).fds}
        vmas[t.tid] = {v.start: v for v in img.obj(t.mm_objref).vmas}
    for tid in (1, 2):
        for v in vmas[tid].values():
            vf = v.fields
            if vf["vma_type"] != VmaType.SHARED_FILE or not vf["vm_flags"] & VM_SHARED \
                    or not vf["vm_flags"] & (VM_WRITE | VM_MAYWRITE):
                continue
            obj = img.obj(vf["vma_objref"]).fields
            assert obj["f_mode"] & FMODE_WRITE and obj["f_flags"] & os.O_ACCMODE in (os.O_RDWR, os.O_WRONLY), \
                (tid, hex(v.start), obj)
    # a process's mappings of a file it holds name that fd's object
    assert vmas[1][r1].fields["vma_objref"] == fd_refs[1][r]
    assert vmas[1][s1].fields["vma_objref"] == fd_refs[1][s]
    for a in (w1, w2, w3):
        assert vmas[2][a].fields["vma_objref"] == fd_refs[2][wfd], hex(a)
    assert img.obj(fd_refs[1][r]).fields["f_mode"] == FMODE_READ
    assert vmas[2][w2].fields["vm_flags"] & VM_MAYWRITE  # (what made it need a writable file)
    # with the fd closed: one file object, open read-write, at offset 0, not pid 1's fd's
    closed = {vmas[2][a].fields["vma_objref"] for a in (c1, c2)}
    assert len(closed) == 1 and not closed & (set(fd_refs[2].values()) | set(fd_refs[1].values()))
    obj = img.obj(closed.pop())
    assert obj.name == str(tmp_path / "closed.bin")
    assert (obj.fields["f_mode"], obj.fields["f_flags"] & os.O_ACCMODE, obj.fields["f_pos"]) == \
        (FMODE_READ | FMODE_WRITE, os.O_RDWR, 0)
    # restored: the same files, mapped as they were, still shared with them
    res = restore_json(str(img_path), restored)
    (child,) = [p for p in ns_pids(res["pidns"]) if nspid(p) == 2]
    maps = _maps(child)
    assert [maps[a][1] for a in (w1, w2, w3, c1, c2)] == ["rw-s", "r--s", "r--p", "rw-s", "r--s"]
    assert _maps(res["init_pid"])[r1][1] == "r--s"
    _poke(child, w1 + 11, b"+AFTER")
    _poke(child, c1 + 11, b"+AFTER")
    assert (tmp_path / "both.bin").read_bytes()[:17] == b"CHILD-WROTE+AFTER"
    assert (tmp_path / "closed.bin").read_bytes()[:17] == b"NO-FD-WROTE+AFTER"
    assert _peek(res["init_pid"], r1, 17) == b"CHILD-WROTE+AFTER"


SPARSE_WORKLOAD = SHM_COMMON + r"""
d = sys.argv[1]
G = 1 << 30
fd = os.memfd_create("pool")        # 1 GiB, a few pages written: the rest are holes
os.ftruncate(fd, G)
os.pwrite(fd, b"A" * P, 100 << 20)
os.pwrite(fd, b"LAST", G - 4)
m = mmap(G // P, 3, 0x01, fd)       # all of it MAP_SHARED
put(m + (512 << 20), b"VIA-MAP")
dl = os.path.join(d, "sparse")      # a deleted file of 256 MiB with one written page
h = os.open(dl, os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(h, 256 << 20)
os.pwrite(h, b"DELETED-DATA", 200 << 20)
os.unlink(dl)
e = os.memfd_create("empty")        # size only, no data at all
os.ftruncate(e, 3 * P)
ready(fd, m, h, e)
"""


def test_sparse_memfd_and_deleted_file_keep_their_holes(pidns, tmp_path, restored):
    """A 1 GiB memfd (mapped shared) and a 256 MiB deleted file with a few pages of data dump with
    the default --max-file-data, which counts stored data, not size: the image holds their data
    extents only, and restore sizes the files and writes those extents, so the holes stay
    unallocated. A file with no data keeps its size."""
    from ckptrace.image.reader import File, read_image
    from ckptrace.image.records import FileType, RecType

    w = py_workload(pidns, SPARSE_WORKLOAD, tmp_path)
    fd, m, h, e = (int(x) for x in (tmp_path / "addrs").read_text().split())
    G, P = 1 << 30, 4096
    img = str(tmp_path / "sparse.img")
    dump_kill(w, img)
    assert os.path.getsize(img) < 64 << 20
    with open(img, "rb") as f:
        image = read_image(f)
    data = {}
    for o in image.objects.values():
        if isinstance(o, File) and o.ftype in (FileType.MEMFD, FileType.DELETED):
            recs = [r for r in o.extra if r.type == RecType.FILE_DATA]
            data[o.name] = [(r.fields["size"], r.fields["offset"], r.payload_len) for r in recs]
            # the index keeps where the contents are, not the contents (show, diff, inspect)
            assert all(r.payload is None for r in recs if r.payload_len)
    pool = data["memfd:pool"]
    assert {s for s, _, _ in pool} == {G}
    assert [o for _, o, _ in pool] == sorted(o for _, o, _ in pool)
    assert sum(n for *_, n in pool) <= 3 * (2 << 20)  # three written pages (huge ones at worst)
    assert data["memfd:empty"] == [(3 * P, 0, 0)]
    (gone,) = [v for k, v in data.items() if k.endswith("/sparse")]
    assert {s for s, _, _ in gone} == {256 << 20} and sum(n for *_, n in gone) <= 1 << 20

    res = restore_json(img, restored)
    init = res["init_pid"]
    for num, size, stored in ((fd, G, 3 * (2 << 20)), (h, 256 << 20, 1 << 20), (e, 3 * P, 0)):
        st = os.stat(f"/proc/{init}/fd/{num}")
        assert st.st_size == size
        assert st.st_blocks * 512 <= stored, (num, st.st_blocks)
    with open(f"/proc/{init}/fd/{fd}", "rb", buffering=0) as f:
        assert os.pread(f.fileno(), P, 100 << 20) == b"A" * P
        assert os.pread(f.fileno(), 4, G - 4) == b"LAST"
        assert os.pread(f.fileno(), 7, 512 << 20) == b"VIA-MAP"
    with open(f"/proc/{init}/fd/{h}", "rb", buffering=0) as f:
        assert os.pread(f.fileno(), 12, 200 << 20) == b"DELETED-DATA"
    assert _peek(init, m + (100 << 20), 4) == b"AAAA" and _peek(init, m + (512 << 20), 7) == b"VIA-MAP"
    assert os.stat(f"/proc/{init}/fd/{fd}").st_blocks * 512 <= 3 * (2 << 20)


# POSIX shared memory: a file in /dev/shm (tmpfs) mapped MAP_SHARED, as shm_open and
# multiprocessing.shared_memory make it, with a counter kept both there and in private memory
SHM_SEGMENT_WORKLOAD = r"""
import mmap, os, struct, sys, time
d = sys.argv[1]
path = "/dev/shm/" + open(d + "/name").read()
size = 3 * 4096 + 100
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
os.fchmod(fd, 0o640)
os.fchown(fd, 4321, 4322)
os.ftruncate(fd, size)
m = mmap.mmap(fd, size, mmap.MAP_SHARED)
m[0:7] = b"SEGMENT"                     # page 0 and the counter's page 1 hold data, page 2 a hole
private = 0
open(d + "/ready", "w").close()
while True:
    private += 1
    struct.pack_into("<Q", m, 4096, struct.unpack_from("<Q", m, 4096)[0] + 1)
    with open(d + "/log.tmp", "w") as f:
        f.write(f"{struct.unpack_from('<Q', m, 4096)[0]} {private}\n")
    os.rename(d + "/log.tmp", d + "/log")
    time.sleep(0.01)
"""


@pytest.fixture
def shm_segment(tmp_path):
    """The name of the workload's segment in /dev/shm (removed at teardown), written where the
    workload reads it."""
    name = f"ckpt-test-{os.getpid()}-{tmp_path.name}"
    (tmp_path / "name").write_text(name)
    yield "/dev/shm/" + name
    with contextlib.suppress(FileNotFoundError):
        os.unlink("/dev/shm/" + name)


def _counters(tmp_path, after: tuple[int, int] | None = None, timeout: float = 15.0) -> tuple[int, int]:
    """The workload's last logged (shared, private) counters; with `after`, once they differ from
    it (a restored workload that never logs fails here: the old values would agree too)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError):
            shm, private = (int(x) for x in (tmp_path / "log").read_text().split())
            if after is None or (shm, private) != after:
                return shm, private
        assert time.monotonic() < deadline, f"the workload logs nothing new (after {after})"
        time.sleep(0.02)


def test_tmpfs_shared_memory_comes_back_as_dumped_at_every_restore(pidns, tmp_path, restored, shm_segment):
    """A file in /dev/shm mapped MAP_SHARED was dumped as a SHARED_FILE with no contents, and
    restore mapped whatever the file held then: restoring the image a second time (after the
    first restore ran on, then was killed) mixed the image's private memory with the first
    restore's later shared memory (`shm=1800 expect=990`). The image carries the segment's
    contents; each restore puts them back, and the two counters agree every time."""
    from ckptrace.image.reader import File, read_image
    from ckptrace.image.records import FileType, RecType

    w = py_workload(pidns, SHM_SEGMENT_WORKLOAD, tmp_path)
    before = _counters(tmp_path)
    img = str(tmp_path / "shm.img")
    dump_kill(w, img)
    for _ in range(2):
        res = restore_json(img, restored)
        seen = _counters(tmp_path)
        shm, private = _counters(tmp_path, after=seen)
        assert shm == private and private > before[1], (shm, private)
        os.kill(res["init_pid"], signal.SIGKILL)
        _wait_gone(res["init_pid"])
    with open(img, "rb") as f:
        image = read_image(f)
    carriers = [o for o in image.objects.values() if isinstance(o, File) and o.name == shm_segment
                and any(r.type == RecType.FILE_DATA for r in o.extra)]
    assert len(carriers) == 1 and carriers[0].ftype == FileType.REGULAR  # (once per file)


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_removed_tmpfs_segment_is_made_again_with_its_mode_owner_and_holes(pidns, tmp_path, restored,
                                                                             shm_segment):
    """After a reboot /dev/shm is empty: the segment was refused as a missing file. It is made
    again, with the dumped mode, owner, size and contents; its hole stays one (st_blocks)."""
    w = py_workload(pidns, SHM_SEGMENT_WORKLOAD, tmp_path)
    img = str(tmp_path / "shm.img")
    dump_kill(w, img)
    dumped = _counters(tmp_path)
    os.unlink(shm_segment)
    res = restore_json(img, restored)
    st = os.stat(shm_segment)
    assert (stat_mode(st), st.st_uid, st.st_gid, st.st_size) == (0o640, 4321, 4322, 3 * 4096 + 100)
    assert st.st_blocks * 512 <= 2 * 4096, st.st_blocks
    with open(shm_segment, "rb") as f:
        assert f.read(7) == b"SEGMENT"
    shm, private = _counters(tmp_path, after=dumped)
    assert shm == private, (shm, private)
    assert res["init_pid"]


def test_a_tmpfs_segment_a_failed_restore_made_is_removed_and_a_symlink_is_not_followed(pidns, tmp_path,
                                                                                         shm_segment):
    """Put back before the point of no return: a segment the restore made holds the image's
    process memory, and stayed in /dev/shm after a failed restore (which says nothing was
    restored). It is removed with the rest. And /dev/shm is anyone's to write in: a symlink
    put at the segment's path had root truncate and overwrite the file it led to."""
    from ckptrace.errors import CkptError
    from ckptrace.image.reader import read_image
    from ckptrace.restorer.files import FileSet, check_files, fd_base

    w = py_workload(pidns, SHM_SEGMENT_WORKLOAD, tmp_path)
    img_path = str(tmp_path / "shm.img")
    dump_kill(w, img_path)
    os.unlink(shm_segment)
    with open(img_path, "rb") as f:
        img = read_image(f)
        files = FileSet(img, base=fd_base(img), image=f)
        files.put_back_contents()
        assert os.path.exists(shm_segment)
        files.remove_made()  # (as restore's abort does)
        assert not os.path.exists(shm_segment)
        victim = tmp_path / "victim"
        victim.write_bytes(b"precious")
        os.symlink(victim, shm_segment)
        try:
            # validation says so in words, before anything is made; the put-back still refuses it
            assert any("is now a symlink" in p for p in check_files(img)), check_files(img)
            with pytest.raises(CkptError, match="ELOOP"):
                FileSet(img, base=fd_base(img), image=f).put_back_contents()
        finally:
            os.unlink(shm_segment)
        assert victim.read_bytes() == b"precious"


def stat_mode(st) -> int:
    import stat

    return stat.S_IMODE(st.st_mode)


def test_a_tmpfs_segment_written_since_the_dump_gets_its_holes_back(pidns, tmp_path, restored, shm_segment):
    """What the file holds at restore time is not kept: data where the dump had a hole is gone."""
    w = py_workload(pidns, SHM_SEGMENT_WORKLOAD, tmp_path)
    img = str(tmp_path / "shm.img")
    dump_kill(w, img)
    with open(shm_segment, "r+b") as f:
        f.write(b"X" * (3 * 4096 + 100))
    res = restore_json(img, restored)
    with open(shm_segment, "rb") as f:
        data = f.read()
    assert data[:7] == b"SEGMENT" and data[2 * 4096:] == bytes(4096 + 100)
    assert os.stat(shm_segment).st_blocks * 512 <= 2 * 4096
    assert res["init_pid"]


def test_a_tmpfs_segment_held_outside_is_noted_at_the_dump_and_refused_at_restore(pidns, tmp_path, restored,
                                                                                    shm_segment):
    """Shared memory that a process outside the namespace also holds is its memory too: the dump
    says so, `--kill` (whose image restore would refuse) kills nothing, and a restore while an
    outside process holds the file refuses, naming it, before anything is made. The original
    itself, still running after a plain dump, is such a process for a restore beside it."""
    w = py_workload(pidns, SHM_SEGMENT_WORKLOAD, tmp_path)
    img = str(tmp_path / "shm.img")
    me = f"host pid {os.getpid()} ("
    outside = os.open(shm_segment, os.O_RDONLY)
    try:
        d = ckptrace("dump", "--pidns", str(w.ns), "-o", img)
        assert d.returncode == 0, d.stderr
        err = d.stderr.decode()
        assert f"{shm_segment}, shared memory that pid 1 (host pid {w.init}) maps, is also held by {me}" in err, err
        assert "restore will refuse this image as things stand" in err and me in err, err
        d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", str(tmp_path / "k.img"))
        assert d.returncode != 0 and me.encode() in d.stderr, d.stderr
        assert os.path.exists(f"/proc/{w.init}")
        os.close(outside)
        outside = -1
        # beside the running original, which holds the segment
        r = ckptrace("restore", img)
        assert r.returncode != 0, r.stderr
        assert f"is held by host pid {w.init} (python" in r.stderr.decode(), r.stderr
        dump_kill(w, img)
        outside = os.open(shm_segment, os.O_RDONLY)
        r = ckptrace("restore", img)
        assert r.returncode != 0, r.stderr
        err = r.stderr.decode()
        assert f"file '{shm_segment}'" in err and f"is held by {me}" in err, err
        assert not pidns_inodes(tmp_path)
    finally:
        if outside >= 0:
            os.close(outside)
    restore_json(img, restored)  # (once it lets go)


SEAL_WORKLOAD = SHM_COMMON + r"""
import fcntl
d = sys.argv[1]
F_ADD_SEALS = 1033
s = os.memfd_create("sealed", os.MFD_ALLOW_SEALING)
os.ftruncate(s, 2 * P)
os.pwrite(s, b"SEALED-DATA", P)
fcntl.fcntl(s, F_ADD_SEALS, 0x2 | 0x4 | 0x8)   # SHRINK | GROW | WRITE
r = mmap(2, 1, 0x01, s)                         # read-only MAP_SHARED: allowed once write-sealed
fw = os.memfd_create("future", os.MFD_ALLOW_SEALING)
os.ftruncate(fw, P)
wm = mmap(1, 3, 0x01, fw)                       # writable MAP_SHARED, made before the seal
fcntl.fcntl(fw, F_ADD_SEALS, 0x10 | 0x1)        # FUTURE_WRITE | SEAL: the mapping still writes
put(wm, b"STILL-WRITABLE")
u = os.memfd_create("plain")                    # no MFD_ALLOW_SEALING: F_SEAL_SEAL
os.pwrite(u, b"plain", 0)
a = os.memfd_create("sealable", os.MFD_ALLOW_SEALING)  # sealable, no seals yet
nx = os.memfd_create("noexec", 0x8)             # MFD_NOEXEC_SEAL: F_SEAL_EXEC
ready(s, r, fw, wm, u, a, nx)
"""


def _seal_restore(pidns, tmp_path, restored):
    w = py_workload(pidns, SEAL_WORKLOAD, tmp_path)
    fds = [int(x) for x in (tmp_path / "addrs").read_text().split()]
    img = str(tmp_path / "seals.img")
    dump_kill(w, img)
    return restore_json(img, restored)["init_pid"], fds


def test_sealed_memfds_come_back_sealed(pidns, tmp_path, restored):
    """Seals are kept: a write-sealed memfd still refuses writes and resizing (its read-only
    shared mapping is back); a F_SEAL_FUTURE_WRITE one refuses write(2) while the writable
    shared mapping made before the seal still writes; F_SEAL_EXEC (MFD_NOEXEC_SEAL) too."""
    import errno
    import fcntl

    F_GET_SEALS = 1034
    init, (s, r, fw, wm, _u, _a, nx) = _seal_restore(pidns, tmp_path, restored)
    P = 4096
    with grab(init, s) as dup:
        assert fcntl.fcntl(dup, F_GET_SEALS) == 0x2 | 0x4 | 0x8
        assert os.pread(dup, 11, P) == b"SEALED-DATA" and os.fstat(dup).st_size == 2 * P
        for attempt in (lambda: os.pwrite(dup, b"x", 0), lambda: os.ftruncate(dup, P),
                        lambda: os.ftruncate(dup, 4 * P)):
            with pytest.raises(OSError) as exc:
                attempt()
            assert exc.value.errno == errno.EPERM
    maps = _maps(init)
    assert maps[r][:2] == (r + 2 * P, "r--s") and _peek(init, r + P, 11) == b"SEALED-DATA"
    with grab(init, fw) as dup:
        assert fcntl.fcntl(dup, F_GET_SEALS) == 0x10 | 0x1
        with pytest.raises(OSError) as exc:
            os.pwrite(dup, b"x", 0)
        assert exc.value.errno == errno.EPERM
        assert maps[wm][1] == "rw-s" and _peek(init, wm, 14) == b"STILL-WRITABLE"
        _poke(init, wm, b"MAPPED-WRITE")
        assert os.pread(dup, 12, 0) == b"MAPPED-WRITE"
    with grab(init, nx) as dup:
        assert fcntl.fcntl(dup, F_GET_SEALS) == 0x20


EXEC_SEALED_WORKLOAD = r"""
import fcntl, os, sys, time
fd = os.memfd_create("runc-like", os.MFD_CLOEXEC | 0x2)  # MFD_ALLOW_SEALING
with open("/bin/sleep", "rb") as f:
    os.write(fd, f.read())
fcntl.fcntl(fd, 1033, 0x2 | 0x4 | 0x8 | 0x20 | 0x1)  # F_ADD_SEALS: SHRINK GROW WRITE EXEC SEAL
child = os.fork()
if child == 0:
    os.execv(f"/proc/self/fd/{fd}", ["sleep", "1000"])
while "memfd:" not in os.readlink(f"/proc/{child}/exe"):
    time.sleep(0.01)
open(sys.argv[1], "w").close()
os.waitpid(child, 0)
"""


def test_a_process_running_an_exec_sealed_memfd_comes_back(pidns, tmp_path, restored):
    """runc's way: a binary copied into a memfd, sealed F_SEAL_EXEC (its mode stays 0777) and
    run. Restore used to make every F_SEAL_EXEC memfd with MFD_NOEXEC_SEAL (mode 0666), and
    PR_SET_MM_MAP refused it as the process's exe (EACCES)."""
    import fcntl

    ready = tmp_path / "ready"
    w = pidns([sys.executable, "-c", EXEC_SEALED_WORKLOAD, str(ready)], ready_file=str(ready),
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    img = str(tmp_path / "exec-sealed.img")
    dump_kill(w, img)
    res = restore_json(img, restored)
    (child,) = [h for h in ns_pids(res["pidns"]) if nspid(h) == 2]
    assert "memfd:runc-like" in os.readlink(f"/proc/{child}/exe")
    fd = os.open(f"/proc/{child}/exe", os.O_RDONLY)
    try:
        # as before the dump: F_SEAL_EXEC on an executable memfd implies the write seals
        # (F_SEAL_FUTURE_WRITE included)
        assert fcntl.fcntl(fd, 1034) == 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x1
        assert os.fstat(fd).st_mode & 0o111 == 0o111
    finally:
        os.close(fd)


def test_unsealable_memfd_stays_unsealable_and_a_sealable_one_sealable(pidns, tmp_path, restored):
    """A memfd made without MFD_ALLOW_SEALING reports F_SEAL_SEAL after restore and takes no
    seal; one made with it and not sealed yet reports 0 and can still be sealed."""
    import errno
    import fcntl

    F_ADD_SEALS, F_GET_SEALS = 1033, 1034
    init, (_s, _r, _fw, _wm, u, a, _nx) = _seal_restore(pidns, tmp_path, restored)
    with grab(init, u) as dup:
        assert fcntl.fcntl(dup, F_GET_SEALS) == 0x1
        assert os.pread(dup, 5, 0) == b"plain"
        with pytest.raises(OSError) as exc:
            fcntl.fcntl(dup, F_ADD_SEALS, 0x8)
        assert exc.value.errno == errno.EPERM
    with grab(init, a) as dup:
        assert fcntl.fcntl(dup, F_GET_SEALS) == 0
        fcntl.fcntl(dup, F_ADD_SEALS, 0x8)
        assert fcntl.fcntl(dup, F_GET_SEALS) == 0x8


TIMERFD_WORKLOAD = r"""
import ctypes, os, socket, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
CLOCK_MONOTONIC, TFD_NONBLOCK, NS = 1, 0o4000, 1_000_000_000

def timerfd(value_ns, interval_ns):
    fd = libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK)
    spec = (ctypes.c_long * 4)(interval_ns // NS, interval_ns % NS, value_ns // NS, value_ns % NS)
    assert fd >= 0 and libc.timerfd_settime(fd, 0, spec, None) == 0
    return fd

def expirations(fd):
    try:
        return struct.unpack("<Q", os.read(fd, 8))[0]
    except BlockingIOError:
        return 0

d, first, every = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
if "pty" in sys.argv[4:]:  # output its pty's master never reads: `dump --kill` refuses to kill
    master, slave = os.openpty()
    os.write(slave, b"unread")
t0 = time.monotonic()
periodic = timerfd(200_000_000, 200_000_000)  # every 0.2 s, read only every few seconds
oneshot = timerfd(50_000_000, 0)               # expires once at 0.05 s, unread until `first`
disarmed = timerfd(0, 0)
out = open(os.path.join(d, "tfd.log"), "a", buffering=1)
out.write(f"start {t0:.6f} {periodic} {oneshot} {disarmed}\n")
open(os.path.join(d, "ready"), "w").close()
k = 0
while True:
    deadline = t0 + first + k * every
    while (now := time.monotonic()) < deadline:
        time.sleep(deadline - now)
    out.write(f"read {k} {time.monotonic():.6f} {expirations(periodic)} {expirations(oneshot)} {expirations(disarmed)}\n")
    k += 1
"""
TFD_INTERVAL = 0.2


def _tfd_log(path) -> tuple[float, tuple[int, int, int], list[tuple[int, float, int, int, int]]]:
    lines = path.read_text().splitlines()
    start = lines[0].split()
    reads = [(int(k), float(t), int(a), int(b), int(c))
             for _, k, t, a, b, c in (x.split() for x in lines[1:] if x.startswith("read "))]
    return float(start[1]), (int(start[2]), int(start[3]), int(start[4])), reads


def _wait_reads(path, n: int, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reads = _tfd_log(path)[2]
        if len(reads) >= n:
            return reads
        time.sleep(0.05)
    raise AssertionError(f"{path}: fewer than {n} reads after {timeout} s: {path.read_text()}")


def _timerfds(img: str) -> dict[int, dict]:
    """fd number -> FILE_TIMERFD fields of the namespace init's timerfds in the image."""
    from ckptrace.image.reader import read_image
    from ckptrace.image.records import FileType, RecType

    with open(img, "rb") as f:
        image = read_image(f)
    table = image.obj(image.task(1).files_objref)
    out = {}
    for dsc in table.fds:
        o = image.obj(dsc["fd_objref"])
        if o.ftype == FileType.TIMERFD:
            out[dsc["fd_descriptor"]] = next(x.fields for x in o.extra if x.type == RecType.FILE_TIMERFD)
    return out


def test_periodic_timerfd_keeps_the_expirations_nobody_read(pidns, tmp_path, restored):
    """A periodic timerfd (0.2 s) read only after 4 s, dumped (--kill) 1.6 s in: the kernel counts
    the missed periods only when the timer is read or timerfd_gettime'd, so the image must hold
    them all (not the 1 of fdinfo's stale `ticks`). The first read after restore returns those
    plus the ones since restore; the timer keeps its interval; an expired one-shot timer still
    reads 1 and a disarmed one nothing."""
    w = pidns([sys.executable, "-c", TIMERFD_WORKLOAD, str(tmp_path), "4", "2"],
              ready_file=str(tmp_path / "ready"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)
    log = tmp_path / "tfd.log"
    t0, (periodic, oneshot, disarmed), _ = _tfd_log(log)
    time.sleep(max(0.0, t0 + 1.6 - time.monotonic()))
    img = str(tmp_path / "tfd.img")
    dump_start = time.monotonic()
    dump_kill(w, img)
    dump_end = time.monotonic()
    assert not _tfd_log(log)[2], "the workload read its timers before the dump; too slow a host?"
    tfds = _timerfds(img)
    per = tfds[periodic]
    interval = per["interval_sec"] * 1e9 + per["interval_nsec"]
    value = per["value_sec"] * 1e9 + per["value_nsec"]
    assert interval == TFD_INTERVAL * 1e9
    assert int((dump_start - t0) / TFD_INTERVAL) - 1 <= per["ticks"] <= (dump_end - t0) / TFD_INTERVAL + 1, per
    assert 0 < value <= interval, per  # forwarded: the next expiration, not a stale 0
    assert (tfds[oneshot]["ticks"], tfds[oneshot]["interval_sec"], tfds[oneshot]["interval_nsec"]) == (1, 0, 0)
    assert tfds[disarmed]["ticks"] == 0 and tfds[disarmed]["value_sec"] == tfds[disarmed]["value_nsec"] == 0
    restore_start = time.monotonic()
    res = restore_json(img, restored)
    restore_end = time.monotonic()
    reads = _wait_reads(log, 2, timeout=8)
    (k0, at0, n0, one0, dis0), (k1, at1, n1, one1, dis1) = reads[:2]
    assert k0 == 0 and at0 > restore_end, reads
    # every period of the process's life but the time it spent dumped: before the dump, after restore
    low = int((dump_start - t0) / TFD_INTERVAL) + int((at0 - restore_end) / TFD_INTERVAL) - 1
    high = (dump_end - t0) / TFD_INTERVAL + (at0 - restore_start) / TFD_INTERVAL + 1
    assert low <= n0 <= high, (low, n0, high, per)
    assert (one0, dis0) == (1, 0)
    # the next read, 2 s on: ten periods, the interval (and the phase) kept
    assert abs(n1 - (at1 - at0) / TFD_INTERVAL) <= 1.01, reads
    assert (one1, dis1) == (0, 0)
    with open(f"/proc/{res['init_pid']}/fdinfo/{periodic}") as f:
        assert "it_interval: (0, 200000000)" in f.read()


def test_dump_reads_timerfds_without_consuming_them(pidns, tmp_path):
    """What the dumper does to read a timerfd exactly must not change what the process sees: after
    a dump that leaves it running, and after a `dump --kill` that refuses to kill (a pty
    holding bytes nobody has read), its next read still counts every period since it started."""
    w = pidns([sys.executable, "-c", TIMERFD_WORKLOAD, str(tmp_path), "3", "2", "pty"],
              ready_file=str(tmp_path / "ready"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)
    log = tmp_path / "tfd.log"
    t0, (periodic, oneshot, _), _ = _tfd_log(log)
    time.sleep(max(0.0, t0 + 1.0 - time.monotonic()))
    img = str(tmp_path / "tfd.img")
    d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", img)
    assert d.returncode == 0, d.stderr.decode()
    assert b"6 bytes of output its master's readers had not read" in d.stderr, d.stderr  # (a note)
    assert _timerfds(img)[periodic]["ticks"] >= 3
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", img)
    assert d.returncode != 0 and b"not killing" in d.stderr and b"pty" in d.stderr, d.stderr.decode()
    (k0, at0, n0, one0, _), = _wait_reads(log, 1, timeout=5)[:1]
    assert abs(n0 - (at0 - t0) / TFD_INTERVAL) <= 1.01 and one0 == 1, (t0, at0, n0)


ABS_TIMERFD_WORKLOAD = r"""
import ctypes, os, select, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
CLOCK_REALTIME, TFD_NONBLOCK, ABSTIME, CANCEL_ON_SET, NS = 0, 0o4000, 1, 2, 1_000_000_000

def timerfd(flags, at_ns, interval_ns=0):
    fd = libc.timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK)
    spec = (ctypes.c_long * 4)(interval_ns // NS, interval_ns % NS, at_ns // NS, at_ns % NS)
    assert fd >= 0 and libc.timerfd_settime(fd, flags, spec, None) == 0, ctypes.get_errno()
    return fd

def expirations(fd):
    try:
        return struct.unpack("<Q", os.read(fd, 8))[0]
    except BlockingIOError:
        return 0

d, t0 = sys.argv[1], time.time_ns()
at = {"A": t0 + 7 * NS, "B": t0 + 7 * NS, "C": t0 + NS // 5, "D": t0 + 5 * NS // 2}
fds = {"A": timerfd(ABSTIME, at["A"]),                        # one-shot, due after the restore
       "B": timerfd(ABSTIME | CANCEL_ON_SET, at["B"]),        # the same, cancelled if the clock is set
       "C": timerfd(ABSTIME, at["C"], NS // 2),               # every 0.5 s from 0.2 s: 1 unread when dumped
       "D": timerfd(ABSTIME, at["D"])}                        # one-shot, due while the namespace is away
out = open(os.path.join(d, "abs.log"), "a", buffering=1)
out.write("start " + " ".join(f"{k}={fds[k]}:{at[k]}" for k in fds) + "\n")
open(os.path.join(d, "ready"), "w").close()
fired = set()
while True:
    for k in ("A", "B", "D"):
        if k not in fired and select.select([fds[k]], [], [], 0)[0]:
            fired.add(k)
            out.write(f"fired {k} {time.time_ns()}\n")
    if "A" in fired and "B" in fired:
        now = time.time_ns()
        out.write(f"read {now} " + " ".join(f"{k}={expirations(fds[k])}" for k in fds) + "\n")
        break
    time.sleep(0.003)
while True:
    time.sleep(1)
"""


def test_absolute_realtime_timerfd_keeps_its_date(pidns, tmp_path, restored):
    """A CLOCK_REALTIME timerfd armed with TFD_TIMER_ABSTIME fires at its date whatever time the
    namespace spent dumped (it fired 1.27 s late after a 1.2 s dump -> restore when re-armed with
    the time left): dumped 0.5 s in, restored 1.5 s later, the timers due at 7 s fire at 7 s (with
    TFD_TIMER_CANCEL_ON_SET kept where it was set); one due at 2.5 s, while the namespace was
    away, fires as soon as it is back; a periodic one (0.5 s from 0.2 s, one expiration unread
    when dumped) counts every period of the wall clock, the dumped ones included."""
    w = pidns([sys.executable, "-c", ABS_TIMERFD_WORKLOAD, str(tmp_path)],
              ready_file=str(tmp_path / "ready"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)
    log = tmp_path / "abs.log"
    start = {k: tuple(map(int, v.split(":"))) for k, v in (x.split("=") for x in log.read_text().split()[1:5])}
    fd, at = {k: v[0] for k, v in start.items()}, {k: v[1] / 1e9 for k, v in start.items()}
    t0 = at["A"] - 7
    time.sleep(max(0.0, t0 + 0.5 - time.time()))
    img = str(tmp_path / "abs.img")
    dump_kill(w, img)
    dumped_at = time.time()
    tfds = _timerfds(img)
    assert tfds[fd["C"]]["ticks"] >= 1 and tfds[fd["D"]]["ticks"] == 0, (dumped_at - t0, tfds)
    assert "fired" not in log.read_text(), "the workload saw a timer fire before the dump; too slow a host?"
    # Away 1.5 s, and until D is past due. (The dates leave seconds for the dump and the restore:
    # on a loaded host each took over a second, and with A due at 4 s the restore ended at 4.1 s.)
    time.sleep(max(0.0, dumped_at + 1.5 - time.time(), at["D"] + 0.3 - time.time()))
    res = restore_json(img, restored)
    restored_at = time.time()
    print(f"dumped at {dumped_at - t0:.3f} s, restored at {restored_at - t0:.3f} s")
    assert restored_at < at["A"] - 0.2, "restore took too long for this test to tell"
    deadline = time.monotonic() + 15
    while "read " not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = log.read_text().splitlines()
    fired = {x.split()[1]: int(x.split()[2]) / 1e9 for x in lines if x.startswith("fired ")}
    reads = [x.split() for x in lines if x.startswith("read ")]
    assert reads, lines
    for k in ("A", "B"):  # on time: not early, and not late by the 1.5 s the namespace was away
        assert at[k] - 0.005 <= fired[k] <= at[k] + 0.25, (k, fired[k] - at[k], lines)
    assert fired["D"] <= restored_at + 0.25, (fired["D"] - restored_at, lines)  # past due: at once
    read_at = int(reads[0][1]) / 1e9
    counts = dict(x.split("=") for x in reads[0][2:])
    assert (counts["A"], counts["B"], counts["D"]) == ("1", "1", "1"), lines
    want_c = 1 + int((read_at - at["C"]) / 0.5)  # 0.2 s, 0.7 s, ... up to the read, at about 7 s
    assert abs(int(counts["C"]) - want_c) <= 1, (counts, want_c, lines)
    with open(f"/proc/{res['init_pid']}/fdinfo/{fd['A']}") as f:
        assert "settime flags: 01" in f.read()
    with open(f"/proc/{res['init_pid']}/fdinfo/{fd['B']}") as f:
        assert "settime flags: 03" in f.read()


NOCAPS_WORKLOAD = r"""
import ctypes, os, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(8, 1, 0, 0, 0) == 0  # PR_SET_KEEPCAPS: securebits 0x10
os.setgroups([])
os.setresgid(1000, 1000, 1000)
os.setresuid(1000, 1000, 1000)
hdr = ctypes.create_string_buffer(struct.pack("<Ii", 0x20080522, 0), 8)
assert libc.capset(hdr, ctypes.create_string_buffer(24)) == 0  # every set empty
out = open(os.path.join(sys.argv[1], "nocaps.log"), "a", buffering=1)
open(os.path.join(sys.argv[1], "ready"), "w").close()
while True:
    out.write(f"securebits={libc.prctl(27, 0, 0, 0, 0)} uid={os.getuid()}\n")
    time.sleep(0.05)
"""


def test_a_process_without_capabilities_that_keeps_caps_on_comes_back(pidns, tmp_path, restored, request):
    """Non-root, no capability at all, SECBIT_KEEP_CAPS set (PR_SET_KEEPCAPS before setuid; and
    what every restored non-root process has, see docs/restore.md): setting its securebits after
    its capabilities were gone needed CAP_SETPCAP, so restore failed with EPERM after `--kill` had
    killed the original. Its securebits are set while the restorer still may."""
    import pathlib
    import tempfile

    shared = pathlib.Path(tempfile.mkdtemp(prefix="ckpt-nocaps-"))  # where uid 1000 may write (not under 0700 pytest dirs)
    shared.chmod(0o777)
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    w = pidns([sys.executable, "-c", NOCAPS_WORKLOAD, str(shared)], ready_file=str(shared / "ready"),
              settle=0.2, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = _caps_survive_restore(w, str(tmp_path / "nocaps.img"), shared / "nocaps.log", restored)
    assert after and set(after) == {"securebits=16 uid=1000"}, after


# securebits, every 0.05 s, from a process setpriv started as uid 1000 (no CAP_SETPCAP) with an
# inheritable CAP_CHOWN outside its permitted set, an ambient CAP_NET_BIND_SERVICE and a bounding
# set of three
SECUREBITS_LOGGER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
out = open(os.path.join(sys.argv[1], "caps.log"), "a", buffering=1)
open(os.path.join(sys.argv[1], "ready"), "w").close()
while True:
    out.write(f"securebits={libc.prctl(27, 0, 0, 0, 0)}\n")
    time.sleep(0.05)
"""
SETPRIV_CAPS = ["setpriv", "--reuid=1000", "--regid=1000", "--groups=10,20,30",
                "--inh-caps=+net_bind_service,+chown", "--ambient-caps=+net_bind_service",
                "--bounding-set=-all,+net_bind_service,+chown,+setuid", "--no-new-privs"]


def _shared_dir(request):
    """A directory where uid 1000 may write (not under pytest's 0700 ones), removed after the test."""
    import pathlib

    shared = pathlib.Path(tempfile.mkdtemp(prefix="ckpt-caps-"))
    shared.chmod(0o777)
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    return shared


def test_an_inheritable_capability_outside_the_permitted_set_comes_back(pidns, tmp_path, restored, request):
    """setpriv --inh-caps=+chown for a uid 1000 process whose permitted set is net_bind_service
    alone: CapInh 0x401 came back 0x400. capset without CAP_SETPCAP takes no inheritable
    capability outside the old permitted set, and the restorer set it after dropping to the
    image's; it sets it now while it still has CAP_SETPCAP. Every set comes back exactly."""
    shared = _shared_dir(request)
    w = pidns([*SETPRIV_CAPS, sys.executable, "-c", SECUREBITS_LOGGER, str(shared)],
              ready_file=str(shared / "ready"), settle=0.2, stdin=subprocess.DEVNULL,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    want = _caps_of(w.init)
    assert list(want.values()) == [("0000000000000401", "0000000000000400", "0000000000000400",
                                    "0000000000000481", "0000000000000400")], want
    after = _caps_survive_restore(w, str(tmp_path / "inh.img"), shared / "caps.log", restored)
    assert after, "the restored process logs nothing"


def _lines_after_restore(w, img, log, restored, distinct: int) -> tuple[set[str], dict]:
    """`dump --kill` `w` to `img`, restore it: the lines its log `log` got after, once they are
    `distinct` different ones (each of its threads logs its own), and restore's answer."""
    dump_kill(w, img)
    n = len(log.read_text().splitlines())
    res = restore_json(img, restored)
    return wait_for(lambda: set(log.read_text().splitlines()[n:]), lambda got: len(got) >= distinct), res


@pytest.mark.parametrize("mdwe", [1, 3])  # PR_MDWE_REFUSE_EXEC_GAIN, and with PR_MDWE_NO_INHERIT
def test_memory_deny_write_execute_comes_back(pidns, tmp_path, restored, mdwe):
    """tests/workloads/prctlwork.c: a process that set PR_SET_MDWE after mapping a writable and
    executable page of its own came back without it (PR_GET_MDWE 0, and a new writable and
    executable mapping allowed: a protection lifted). Every thread has it back, and the page
    made before it is there again (it is set once the memory is)."""
    import ctypes

    if ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) < 0:  # PR_GET_MDWE
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3)")
    exe = workload_exe(tmp_path, "prctlwork", "-pthread")
    w = pidns([exe, str(tmp_path), str(mdwe), "none"], ready_file=str(tmp_path / "ready"), settle=0.2,
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    want = {f"main mdwe={mdwe} wx=0 tsc=1", f"worker mdwe={mdwe} wx=0 tsc=1"}
    assert set((tmp_path / "prctl.log").read_text().splitlines()) == want
    after, res = _lines_after_restore(w, str(tmp_path / "mdwe.img"), tmp_path / "prctl.log", restored, len(want))
    assert after == want
    with open(f"/proc/{res['init_pid']}/maps") as f:
        assert any(line.split()[1] == "rwxp" for line in f)


@pytest.mark.parametrize("who", ["worker", "main"])
def test_a_threads_tsc_mode_comes_back(pidns, tmp_path, restored, who):
    """tests/workloads/prctlwork.c: one thread made its rdtsc fault (PR_SET_TSC(PR_TSC_SIGSEGV):
    PR_GET_TSC 2), and came back with it allowed (1). The kernel keeps it per thread (TIF_NOTSC)
    and a clone inherits it: the main thread's is not its worker's, nor the worker's the main
    thread's."""
    exe = workload_exe(tmp_path, "prctlwork", "-pthread")
    w = pidns([exe, str(tmp_path), "0", who], ready_file=str(tmp_path / "ready"), settle=0.2,
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    want = {f"{name} mdwe=0 wx=1 tsc={2 if name == who else 1}" for name in ("main", "worker")}
    assert set((tmp_path / "prctl.log").read_text().splitlines()) == want
    after, _ = _lines_after_restore(w, str(tmp_path / "tsc.img"), tmp_path / "prctl.log", restored, len(want))
    assert after == want


# uid 1000 without CAP_SETPCAP, its securebits NO_SETUID_FIXUP | NO_CAP_AMBIENT_RAISE set after it
# raised an ambient capability
NO_AMBIENT_RAISE_WORKLOAD = r"""
import ctypes, os, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
def capset(prm, inh):
    hdr = ctypes.create_string_buffer(struct.pack("<Ii", 0x20080522, 0), 8)
    data = struct.pack("<6I", prm & 0xFFFFFFFF, prm & 0xFFFFFFFF, inh, prm >> 32, prm >> 32, 0)
    assert libc.capset(hdr, ctypes.create_string_buffer(data, 24)) == 0, ctypes.get_errno()
with open("/proc/self/status") as f:
    prm = int(next(l for l in f if l.startswith("CapPrm:")).split()[1], 16)
capset(prm, (1 << 10) | 1)  # CAP_NET_BIND_SERVICE, CAP_CHOWN
assert libc.prctl(47, 2, 10, 0, 0) == 0  # PR_CAP_AMBIENT_RAISE
assert libc.prctl(28, 0x44, 0, 0, 0) == 0  # SECBIT_NO_SETUID_FIXUP | SECBIT_NO_CAP_AMBIENT_RAISE
os.setgroups([])
os.setresgid(1000, 1000, 1000)
os.setresuid(1000, 1000, 1000)
capset(1 << 10, (1 << 10) | 1)
""" + SECUREBITS_LOGGER


@pytest.mark.parametrize("how", ["setpriv", "no_ambient_raise"])
def test_securebits_come_back_exactly(pidns, tmp_path, restored, request, how):
    """A non-root process keeping some capability but not CAP_SETPCAP: its securebits were set in
    two steps, the second one after its capabilities were dropped to the image's, without
    CAP_SETPCAP. setpriv's (securebits 0) came back with KEEP_CAPS (0x10) on; one with
    NO_SETUID_FIXUP and NO_CAP_AMBIENT_RAISE was not restored at all (that PR_SET_SECUREBITS:
    EPERM; with CAP_SETPCAP, the ambient raise made after it: EPERM). Every set and the
    securebits come back exactly."""
    shared = _shared_dir(request)
    if how == "setpriv":
        argv, want_bits = [*SETPRIV_CAPS, sys.executable, "-c", SECUREBITS_LOGGER, str(shared)], 0
    else:
        argv, want_bits = [sys.executable, "-c", NO_AMBIENT_RAISE_WORKLOAD, str(shared)], 0x44
    w = pidns(argv, ready_file=str(shared / "ready"), settle=0.2, stdin=subprocess.DEVNULL,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    caps = _caps_of(w.init)
    assert [(c[0], c[1], c[4]) for c in caps.values()] == \
        [("0000000000000401", "0000000000000400", "0000000000000400")], caps
    after = _caps_survive_restore(w, str(tmp_path / "bits.img"), shared / "caps.log", restored)
    assert after and set(after) == {f"securebits={want_bits}"}, after


# init asks to be SIGUSR1'd when its parent (unshare, outside) dies; its child, SIGUSR2 when init does.
PDEATH_WORKLOAD = r"""
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(1, signal.SIGUSR1, 0, 0, 0) == 0
if os.fork() == 0:
    # another user: a credential change clears the pdeath signal (commit_creds), restore's too
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    assert libc.prctl(1, signal.SIGUSR2, 0, 0, 0) == 0
    while True:
        time.sleep(1000)
open(sys.argv[1], "w").close()
while True:
    time.sleep(1000)
"""

# `ckptrace restore` with one step replaced by a marker file and a long sleep, so that a test can
# kill the controller at a known point: "clone" (the controller has just made init, which sleeps
# a moment before tying itself to the controller: the race), "seize" (every process came up and
# reported; none is traced yet) or "groups" (all are seized, with PTRACE_O_EXITKILL).
HOOKED_RESTORE = r"""
import os, sys, time
from ckptrace import restore
from ckptrace.restorer import tree
img, mark, where = sys.argv[1:]
def hang(*args, **kw):
    open(mark, "w").close()
    time.sleep(120)
if where == "clone":
    real_clone3 = tree.clone3
    def clone3(flags, tid, exit_signal):
        pid = real_clone3(flags, tid, exit_signal)
        if flags & tree.CLONE_NEWPID:
            if pid == 0:
                time.sleep(1.0)  # the new init: the controller dies meanwhile
            else:
                hang()
        return pid
    tree.clone3 = clone3
elif where == "seize":
    restore._Restore._seize_all = hang
else:
    restore._Restore._set_groups = hang
restore.restore(img)
"""


def _pdeath_image(pidns, tmp_path) -> str:
    ready = tmp_path / "ready"
    w = pidns([sys.executable, "-c", PDEATH_WORKLOAD, str(ready)], ready_file=str(ready), settle=0.1,
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    img = str(tmp_path / "pdeath.img")
    dump_kill(w, img)
    return img


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _tracer(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("TracerPid:")))


@pytest.mark.parametrize("where,sig", [("clone", signal.SIGKILL), ("seize", signal.SIGKILL),
                                       ("seize", signal.SIGTERM), ("groups", signal.SIGKILL)])
def test_controller_death_before_the_end_takes_the_new_namespace_with_it(pidns, tmp_path, restored, where, sig):
    """The controller killed (or SIGTERM'd: restore installs no handler, the default action kills
    it) after it made the new init, whether or not it has seized the tasks yet: the new namespace
    must not stay behind, idle, holding what the controller opened. Before the seize only init's
    pdeath signal ties it to the controller; "clone" kills the controller before init has even
    set it, which init must notice (its parent is no longer the controller) and exit."""
    from nsutil import children, ns_of

    img = _pdeath_image(pidns, tmp_path)
    mark = tmp_path / "hooked"
    ctl = subprocess.Popen([sys.executable, "-c", HOOKED_RESTORE, img, str(mark), where], cwd=REPO,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not mark.exists():
            assert ctl.poll() is None, ctl.stderr.read().decode()
            assert time.monotonic() < deadline, "the restore never reached the hook"
            time.sleep(0.01)
        kids = children(ctl.pid)
        assert len(kids) == 1, kids
        init = kids[0]
        restored.append(init)  # killed at teardown should it survive
        ns = ns_of(init)
        assert ns != ns_of(os.getpid())
        if where != "groups":
            assert _tracer(init) == 0  # nothing but its pdeath signal ties it to the controller
        else:
            assert _tracer(init) == ctl.pid
        os.kill(ctl.pid, sig)
        assert ctl.wait(timeout=10) == -sig
    finally:
        ctl.kill()
        ctl.wait()
    # (a dead init waits, a zombie, for the host's init to reap it, which here may take a while)
    deadline = time.monotonic() + 5
    while left := [p for p in ns_pids(ns) if _state(p) not in ("Z", None)]:
        assert time.monotonic() < deadline, f"the half-made namespace outlived its controller: {left}"
        time.sleep(0.05)


def test_restored_init_outlives_the_controller_and_pdeath_signals_are_the_images(pidns, tmp_path, restored):
    """After a successful restore the controller exits: the restored init (whose pdeath signal tied
    it to the controller until then) runs on, with no pdeath signal (the image's, for a parent
    outside the namespace, is not restored), while another process keeps the image's."""
    from ckptrace.image.reader import read_image

    img = _pdeath_image(pidns, tmp_path)
    with open(img, "rb") as f:
        assert {t.tid: t.proc["pdeath_signal"] for t in read_image(f).processes()} == \
            {1: signal.SIGUSR1, 2: signal.SIGUSR2}
    res = restore_json(img, restored)
    time.sleep(0.3)
    assert sorted(nspid(h) for h in ns_pids(res["pidns"])) == [1, 2], "the restored namespace died"
    assert _tracer(res["init_pid"]) == 0
    img2 = str(tmp_path / "again.img")
    d = ckptrace("dump", "--pidns", str(res["pidns"]), "-q", "-o", img2)
    assert d.returncode == 0, d.stderr.decode()
    with open(img2, "rb") as f:
        assert {t.tid: t.proc["pdeath_signal"] for t in read_image(f).processes()} == {1: 0, 2: signal.SIGUSR2}
    assert sorted(nspid(h) for h in ns_pids(res["pidns"])) == [1, 2]


VMA_FLAGS_WORKLOAD = SHM_COMMON + r"""
import json, signal
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.syscall.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
d, big_pages = sys.argv[1], int(sys.argv[2])
# more than RAM and swap: only MAP_NORESERVE lets it be mapped under overcommit mode 0
big = mmap(big_pages, 3, 0x4022)  # MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE
put(big, b"BIG-HEAD")
put(big + (big_pages - 1) * P, b"BIG-TAIL")
area = {}
for name, advice in (("wf", 18), ("dc", 10), ("dd", 16), ("hg", 14), ("nh", 15), ("sr", 2), ("rr", 1),
                     ("mg", 12)):
    n = 1024 if name in ("hg", "nh") else 8  # 4 MiB: a whole huge page fits, and is touched
    area[name] = a = mmap(n, 3, 0x22)
    assert libc.madvise(a, n * P, advice) == 0, (name, ctypes.get_errno())
    put(a, b"SECRET-" + name.encode())
    if n == 1024:
        put(-(-a // (512 * P)) * 512 * P + P, b"HUGE?")
area["lo"] = mmap(4, 3, 0x22)
put(area["lo"], b"SECRET-lo")
assert libc.mlock(area["lo"], 4 * P) == 0
area["lf"] = mmap(8, 3, 0x22)
assert libc.syscall(325, area["lf"], 8 * P, 1) == 0  # mlock2(MLOCK_ONFAULT)
put(area["lf"] + 2 * P, b"SECRET-lf")
# a PROT_NONE guard locked: VM_LOCKED is set, then faulting it in fails
area["none"] = mmap(4, 0, 0x22)
assert libc.mlock(area["none"], 4 * P) == -1 and ctypes.get_errno() == 12
# a private file mapping with one page copied (restore maps it writable to put that page back),
# then read-only and locked: its other pages stay the file's
with open(os.path.join(d, "data"), "wb") as f:
    f.write(b"FILE-PAGE" * 4000)
fd = os.open(os.path.join(d, "data"), os.O_RDONLY)
area["file"] = mmap(8, 3, 0x2, fd)
put(area["file"], b"COPIED")
assert libc.mprotect(area["file"], 8 * P, 1) == 0
assert libc.madvise(area["file"], 8 * P, 2) == 0 and libc.mlock(area["file"], 8 * P) == 0
os.close(fd)
# writable once, read-only now, never touched (no page to store): still charged (VM_ACCOUNT),
# since the mapping it was split from has anonymous memory (an anon_vma: the kernel drops the
# charge of a read-only mapping without one)
ac = mmap(3, 3, 0x22)
put(ac, b"first page")
area["ac"] = ac + P
assert libc.mprotect(area["ac"], P, 1) == 0
# shared memory not inherited by a fork, not dumped, not reserved
area["shared"] = mmap(4, 3, 0x4021)
put(area["shared"], b"SECRET-shared")
assert libc.madvise(area["shared"], 4 * P, 10) == 0 and libc.madvise(area["shared"], 4 * P, 16) == 0

def on_usr1(sig, frame):  # fork a child that says what it inherited
    pid = os.fork()
    if pid == 0:
        starts = {int(line.split("-")[0], 16) for line in open("/proc/self/maps")}
        seen = {n: ctypes.string_at(a, 16).hex() if a in starts else None for n, a in area.items()
                if n not in ("none", "file", "ac")}
        with open(os.path.join(d, "forked.tmp"), "w") as f:
            json.dump(seen, f)
        os.rename(os.path.join(d, "forked.tmp"), os.path.join(d, "forked"))
        os._exit(0)
    os.waitpid(pid, 0)
signal.signal(signal.SIGUSR1, on_usr1)
ready(json.dumps(area))
"""


def _vm_flags(pid: int) -> dict[int, tuple[int, frozenset[str]]]:
    from ckptrace.kernel import procfs

    return {m.start: (m.end, frozenset(m.vmflags)) for m in procfs.smaps(pid)}


def _smaps_field(pid: int, start: int, name: str) -> int:
    """A kB field of one VMA's smaps entry."""
    with open(f"/proc/{pid}/smaps") as f:
        text = f.read()
    entry = text[text.index(f"{start:x}-"):].split("VmFlags", 1)[0]
    return int(re.search(rf"^{name}:\s+(\d+) kB", entry, re.M).group(1))


def _vmlck(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmLck:")))


def _fork_sees(pid: int, d) -> dict:
    (d / "forked").unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not (d / "forked").exists():
        assert time.monotonic() < deadline, "the workload's fork never reported"
        time.sleep(0.02)
    return json.loads((d / "forked").read_text())


def test_vma_flags_come_back(pidns, tmp_path, restored):
    """The VM_* bits of VmFlags that come from mmap flags, madvise or mlock are the original's
    after a restore, VMA by VMA, and act: a MAP_NORESERVE mapping larger than RAM and swap is
    mapped again (without the flag, overcommit refuses it with ENOMEM); a child forked after the
    restore sees zeros in a MADV_WIPEONFORK area and no MADV_DONTFORK area at all (private or
    shared); locked memory is as much as before (VmLck), a locked PROT_NONE guard is still
    locked, and locking a read-only private file mapping copies none of its file's pages (as it
    would while the mapping is still writable for the restore's writes)."""
    with open("/proc/sys/vm/overcommit_memory") as f:
        if f.read().strip() == "2":
            pytest.skip("overcommit mode 2 ignores MAP_NORESERVE")
    with open("/proc/meminfo") as f:
        mem = {k: int(v.split()[0]) for k, v in (line.split(":") for line in f)}
    P = 4096
    big_pages = max(64 << 18, 2 * (mem["MemTotal"] + mem["SwapTotal"]) // 4)  # 64 GiB, or twice RAM + swap
    w = pidns([sys.executable, "-c", VMA_FLAGS_WORKLOAD, str(tmp_path), str(big_pages)],
              ready_file=str(tmp_path / "ready"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)
    area = json.loads((tmp_path / "addrs").read_text())
    before = _vm_flags(w.init)
    locked = _vmlck(w.init)
    copied = _smaps_field(w.init, area["file"], "Anonymous")
    huge = {n: _smaps_field(w.init, area[n], "AnonHugePages") for n in ("hg", "nh")}
    want = {n: frozenset(f.split()) for n, f in (("wf", "wf"), ("dc", "dc"), ("dd", "dd"), ("hg", "hg"), ("nh", "nh"),
                                                 ("sr", "sr"), ("rr", "rr"), ("mg", "mg"), ("lo", "lo"),
                                                 ("lf", "lo lf"), ("none", "lo"), ("file", "lo sr"),
                                                 ("shared", "dc dd nr"), ("big", "nr"), ("ac", "ac"))}
    area["big"] = big = next(s for s, (e, _) in before.items() if e - s == big_pages * P)
    for n, a in area.items():  # the workload did make what the test is about
        assert want[n] <= before[a][1], (n, before[a])
    secret = {n: b"SECRET-" + n.encode() for n in ("wf", "dc", "dd", "hg", "nh", "sr", "rr", "mg", "lo", "shared")}
    forked = _fork_sees(w.init, tmp_path)
    assert forked["wf"] == bytes(16).hex() and forked["dc"] is None and forked["shared"] is None, forked
    img = str(tmp_path / "vmaflags.img")
    dump_kill(w, img)
    res = restore_json(img, restored)
    host = res["init_pid"]
    after = _vm_flags(host)
    for n, a in area.items():
        assert after[a] == before[a], (n, sorted(before[a][1]), sorted(after[a][1]))
    assert _peek(host, big, 8) == b"BIG-HEAD" and _peek(host, big + (big_pages - 1) * P, 8) == b"BIG-TAIL"
    for n, s in secret.items():
        assert _peek(host, area[n], len(s)) == s, n
    assert _peek(host, area["lf"] + 2 * P, 9) == b"SECRET-lf"
    assert _vmlck(host) == locked
    # the pages were written under the VMA's huge page policy (as they were first touched)
    assert {n: _smaps_field(host, area[n], "AnonHugePages") for n in ("hg", "nh")} == huge
    assert copied == P // 1024 and _smaps_field(host, area["file"], "Anonymous") == copied
    assert _peek(host, area["file"], 8 * P) == b"COPIED" + (tmp_path / "data").read_bytes()[6:8 * P]
    assert _smaps_field(host, area["file"], "Locked") == 8 * P // 1024
    forked = _fork_sees(host, tmp_path)
    assert forked["wf"] == bytes(16).hex(), "the fork after restore saw the WIPEONFORK area's contents"
    assert forked["dc"] is None and forked["shared"] is None, "the fork after restore inherited DONTFORK areas"
    assert bytes.fromhex(forked["dd"]).startswith(b"SECRET-dd")


MLOCKALL_WORKLOAD = SHM_COMMON + r"""
import signal
libc.mlockall.argtypes = [ctypes.c_int]
d = sys.argv[1]

def on_usr1(sig, frame):  # map a new area and say which VmFlags it got
    a = mmap(4, 3, 0x22)
    text = open("/proc/self/smaps").read()
    flags = text[text.index("%x-" % a):].split("VmFlags:", 1)[1].split("\n", 1)[0].split()
    with open(os.path.join(d, "new-%d.tmp" % os.getpid()), "w") as f:
        f.write(" ".join(flags))
    os.rename(os.path.join(d, "new-%d.tmp" % os.getpid()), os.path.join(d, "new-%d" % os.getpid()))
signal.signal(signal.SIGUSR1, on_usr1)
for how in (2, 2 | 4):  # pid 2: MCL_FUTURE; pid 3: MCL_FUTURE | MCL_ONFAULT (not inherited by a fork)
    if os.fork() == 0:
        assert libc.mlockall(how) == 0, ctypes.get_errno()
        open(os.path.join(d, "set-%d" % os.getpid()), "w").close()
        while True:
            time.sleep(0.05)
while len([n for n in os.listdir(d) if n.startswith("set-")]) < 2:
    time.sleep(0.01)
ready()
"""


def _new_mapping_flags(host: int, pid: int, d) -> set[str]:
    """The VmFlags of a mapping the process (host pid, pid inside) makes when asked."""
    (d / f"new-{pid}").unlink(missing_ok=True)
    os.kill(host, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not (d / f"new-{pid}").exists():
        assert time.monotonic() < deadline, f"process {pid} never said"
        time.sleep(0.02)
    return set((d / f"new-{pid}").read_text().split())


def test_mlockall_future_comes_back(pidns, tmp_path, restored):
    """mlockall(MCL_FUTURE), and with MCL_ONFAULT, locks the mappings a process makes after the
    restore as it did before (it is in no /proc file: the dump maps a probe page to see it, which
    leaves the mappings as they were), and a process without it stays without."""
    from ckptrace.image.reader import read_image

    w = pidns([sys.executable, "-c", MLOCKALL_WORKLOAD, str(tmp_path)], ready_file=str(tmp_path / "ready"),
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hosts = {nspid(h): h for h in ns_pids(w.ns)}
    want = {1: set(), 2: {"lo"}, 3: {"lo", "lf"}}
    assert {p: _new_mapping_flags(h, p, tmp_path) & {"lo", "lf"} for p, h in hosts.items()} == want
    maps = {p: open(f"/proc/{h}/maps").read() for p, h in hosts.items()}
    img = str(tmp_path / "left.img")
    d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", img)
    assert d.returncode == 0, d.stderr.decode()
    assert {p: open(f"/proc/{h}/maps").read() for p, h in hosts.items()} == maps, "the probe page stayed"
    with open(img, "rb") as f:
        ri = read_image(f)
        assert {t.tid: ri.obj(t.mm_objref).fields["def_flags"] for t in ri.processes()} == \
            {1: 0, 2: 0x2000, 3: 0x82000}
    img = str(tmp_path / "mlockall.img")
    dump_kill(w, img)
    res = restore_json(img, restored)
    hosts = {nspid(h): h for h in ns_pids(res["pidns"])}
    assert {p: _new_mapping_flags(h, p, tmp_path) & {"lo", "lf"} for p, h in hosts.items()} == want


@pytest.fixture(scope="module")
def bigmem(tmp_path_factory) -> str:
    return workload_exe(tmp_path_factory.mktemp("bigmem"), "bigmem", "-O2")


def _rss_anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next((line.split()[1] for line in f if line.startswith("RssAnon:")), 0))
    except OSError:
        return 0


@pytest.mark.parametrize("sig, said, status", [
    (signal.SIGINT, "ckptrace restore: interrupted; nothing was restored\n", 130),
    (signal.SIGTERM, "ckptrace restore: terminated by signal 15; nothing was restored\n", 143)])
def test_ctrl_c_while_pages_are_written_is_an_interruption_and_leaves_nothing(pidns, bigmem, tmp_path, restored,
                                                                                sig, said, status):
    """SIGINT while the restored process sits in a long injected pread of its pages: the
    interruption is what is reported (status 130, as for any interrupted command), not the
    failure to put back the registers of a task that was not stopped; and the half-made
    namespace is gone. SIGTERM likewise (it used to end the restorer on the spot)."""
    from nsutil import children, ns_of

    w = pidns([bigmem, str(tmp_path), "512"], ready_file=str(tmp_path / "ready"), timeout=60,
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    img = str(tmp_path / "big.img")
    dump_kill(w, img)
    nss = pidns_inodes(tmp_path)
    ctl = subprocess.Popen([sys.executable, "-m", "ckptrace", "restore", "--quiet", img], cwd=REPO,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # The memory phase: the new init's anonymous memory grows as the injected preads fill it
        # (16 MiB each, half a GiB in all), far past what the controller it was forked from had.
        deadline = time.monotonic() + 30
        own, init = ns_of(os.getpid()), 0
        while not init or _rss_anon_kib(init) < 96 << 10:
            assert ctl.poll() is None, ctl.stderr.read().decode()
            assert time.monotonic() < deadline, "the restore never reached its memory phase"
            if not init:  # (not the child that measures this CPU's XSAVE size)
                with contextlib.suppress(OSError):
                    init = next((k for k in children(ctl.pid) if ns_of(k) != own), 0)
                if init:
                    restored.append(init)  # killed at teardown should it survive
            time.sleep(0.001)
        ctl.send_signal(sig)
        out, err = ctl.communicate(timeout=30)
    finally:
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait()
    assert err.decode() == said and ctl.returncode == status, (ctl.returncode, err)
    assert out == b""
    assert not os.path.exists(f"/proc/{init}"), "the half-restored init survived"
    assert pidns_inodes(tmp_path) - nss == set(), "the half-restored namespace survived"


SOCKET_QUEUES = r"""
import json, os, signal, socket, sys, time
d = sys.argv[1]
a, b = socket.socketpair()                       # stream, both ways; then b stops writing
b.send(b"to-a-1"); b.send(b"to-a-2"); a.send(b"to-b")
b.shutdown(socket.SHUT_WR)
c, gone = socket.socketpair()                    # its peer closed with bytes unread
gone.send(b"last words"); gone.close()
e, f = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
e.send(b"m1"); e.send(b""); e.send(b"m3" * 1000)
g, h = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
h.send(b"sp1"); h.send(b"sp22")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); srv.bind(d + "/srv.sock")
cli = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); cli.bind(d + "/cli.sock")
anon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
cli.sendto(b"from-cli", d + "/srv.sock"); anon.sendto(b"from-anon", d + "/srv.sock"); anon.close()
full, filler = socket.socketpair()               # as much as the writer's buffer takes
filler.setblocking(False)
try:
    while True:
        filler.send(b"x" * 4096)
except BlockingIOError:
    pass
reset, closer = socket.socketpair()              # its peer closed with data unread: ECONNRESET
closer.send(b"before the reset"); reset.send(b"never read"); closer.close()
sp, sp_gone = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
sp_gone.send(b"last"); sp_gone.send(b""); sp_gone.close()   # a seqpacket's end after its messages
big, big_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
big_peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
big_peer.send(b"L" * 300000)                     # more than a default buffer takes in one datagram
lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); lst.bind(d + "/lst.sock"); lst.listen(4)
waiting = []
for i in range(2):                               # connections not accepted yet, in their order
    w = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); w.bind(d + f"/w{i}.sock")
    w.connect(d + "/lst.sock"); waiting.append(w)
fresh = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)   # never used yet: bound and sent to later
evs = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); evs.bind(d + "/evs.sock")
evc = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); evc.bind(d + "/evc.sock"); evc.connect(d + "/evs.sock")
for i in range(30):                              # a server's events to its connected client: more
    evs.sendto(b"evt%d" % i, d + "/evc.sock")     # than max_dgram_qlen, which a peer is not held to
late = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); late.bind(d + "/late.sock")
cli.sendto(b"before connect", d + "/late.sock")  # queued on it, then it connects elsewhere
late.connect(d + "/srv.sock")

def drain(s):
    s.setblocking(False)
    out = []
    while len(out) < 8:  # (a seqpacket socket whose peer is gone reads 0 bytes for ever)
        try:
            x, addr = s.recvfrom(1 << 20)
        except BlockingIOError:
            return out + ["EAGAIN"]
        out.append([x.decode(), addr or None])
        if not x and s.type == socket.SOCK_STREAM:
            return out + ["EOF"]
    return out

def send_error(s):
    try:
        s.send(b"?")
        return 0
    except OSError as exc:
        return exc.errno

def report(sig, frame):
    got = {"peek_off": a.getsockopt(socket.SOL_SOCKET, 42), "b_send": send_error(b), "c_send": send_error(c)}
    for name, s in (("a", a), ("b", b), ("c", c), ("f", f), ("g", g), ("srv", srv), ("sp", sp), ("late", late)):
        got[name] = drain(s)
    evc.setblocking(False)
    got["events"] = []
    try:
        while True:
            got["events"].append(evc.recv(100).decode())
    except BlockingIOError:
        pass
    try:
        got["reset"] = drain(reset)
    except OSError as exc:
        got["reset"] = exc.errno
    got["reset_then"] = drain(reset)
    big.setblocking(False)
    got["big"] = len(big.recv(1 << 20))
    lst.setblocking(False)
    got["accepted"] = [lst.accept()[1] for _ in range(2)]
    name = b"\0ck-fresh-" + os.urandom(6).hex().encode()
    fresh.bind(name)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
        other.sendto(b"to fresh", name)
    got["fresh"] = fresh.recv(100).decode()
    full.setblocking(False)
    n = 0
    try:
        while True:
            x = full.recv(1 << 20)
            if not x:
                break
            n += len(x)
    except BlockingIOError:
        pass
    got["full"] = n
    with open(d + "/result", "a") as out:
        out.write(json.dumps(got) + "\n")

signal.signal(signal.SIGUSR1, report)
signal.signal(signal.SIGPIPE, signal.SIG_IGN)
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""


def _report(host: int, path) -> dict:
    have = len(path.read_text().splitlines()) if path.exists() else 0
    os.kill(host, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while (not path.exists() or len(path.read_text().splitlines()) == have) and time.monotonic() < deadline:
        time.sleep(0.05)
    return json.loads(path.read_text().splitlines()[have])


def test_unix_socket_queues_and_shutdowns_come_back(pidns, tmp_path, restored):
    """Data queued on unix sockets (stream bytes, datagrams and seqpackets with their boundaries,
    a datagram's sender name), a peer's shutdown and a peer gone: all used to be lost, the gone
    peer's socket coming back unconnected (EINVAL instead of its last bytes and EOF). The original,
    dumped without --kill, reads exactly what the restored copy then reads."""
    w = py_workload(pidns, SOCKET_QUEUES, tmp_path)
    img = tmp_path / "q.img"
    d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", str(img))
    assert d.returncode == 0, d.stderr.decode()
    # the kernel hides an empty message from peeks once peeked: a later dump would not see it
    assert b"1 zero-length message(s) queued" in d.stderr, d.stderr
    result = tmp_path / "result"
    original = _report(w.init, result)  # the dump took nothing away
    cli = str(tmp_path / "cli.sock")
    assert original["a"] == [["to-a-1to-a-2", None], ["", None], "EOF"]
    assert original["b"] == [["to-b", None], "EAGAIN"]
    assert original["c"] == [["last words", None], ["", None], "EOF"]
    assert original["f"] == [["m1", None], ["", None], ["m3" * 1000, None], "EAGAIN"]
    assert original["g"] == [["sp1", None], ["sp22", None], "EAGAIN"]
    assert original["srv"] == [["from-cli", cli], ["from-anon", None], "EAGAIN"]
    assert original["peek_off"] == -1 and original["full"] > 100_000
    assert original["b_send"] == errno.EPIPE and original["c_send"] == errno.EPIPE
    assert original["reset"] == errno.ECONNRESET and original["reset_then"] == [["", None], "EOF"]
    assert original["sp"] == [["last", None]] + [["", None]] * 7  # its "" message, then 0 for ever: its end
    assert original["big"] == 300000 and original["late"] == [["before connect", cli], "EAGAIN"]
    assert original["accepted"] == [str(tmp_path / "w0.sock"), str(tmp_path / "w1.sock")]
    assert original["fresh"] == "to fresh"
    assert original["events"] == [f"evt{i}" for i in range(30)]
    w.kill()
    shown = ckptrace("show", str(img)).stdout.decode()
    assert "12 bytes queued" in shown and "3 messages (2002 bytes) queued" in shown, shown
    fds = json.loads(ckptrace("show", "--json", str(img)).stdout)["procs"][0]["fds"]
    assert {"messages": 3, "bytes": 2002} in [d["queued"] for d in fds]
    assert all(d["queued"] is None for d in fds if d["kind"] != "UNIX_SOCKET")
    res = restore_json(img, restored)
    (host,) = ns_pids(res["pidns"])
    assert _report(host, result) == original


PASSCRED_QUEUED = r"""
import json, os, signal, socket, struct, sys, time
d = sys.argv[1]
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
a.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
b.send(b"with creds")
c, gone = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)   # and one whose peer is gone
c.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
gone.send(b"last words"); gone.close()

def read(s):
    data, anc, _, _ = s.recvmsg(100, socket.CMSG_SPACE(12), socket.MSG_DONTWAIT)
    return [data.decode()] + [list(struct.unpack("3i", c[:12])) for lvl, t, c in anc
                              if lvl == socket.SOL_SOCKET and t == socket.SCM_CREDENTIALS]

def report(sig, frame):
    with open(d + "/result", "a") as out:
        out.write(json.dumps({"a": read(a), "c": read(c)}) + "\n")

signal.signal(signal.SIGUSR1, report)
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""


def test_queued_messages_carry_the_restorers_credentials_to_a_passcred_reader(pidns, tmp_path, restored):
    """A socketpair's queue (and that of a socket whose peer is gone) was filled before
    SO_PASSCRED was set on its reader, so the messages went without credentials and read back
    with the overflow ids (uid and gid 65534), not the restorer's that docs/restore.md promises."""
    w = py_workload(pidns, PASSCRED_QUEUED, tmp_path)
    host = migrate(w, tmp_path / "cred.img", restored)
    # (pid, uid, gid): the restorer runs as root, outside the namespace (its pid reads 0 there)
    assert _report(host, tmp_path / "result") == {"a": ["with creds", [0, 0, 0]], "c": ["last words", [0, 0, 0]]}


UNLINKED_PATHS = r"""
import json, os, signal, socket, sys, time
d = sys.argv[1]
lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); lst.bind(d + "/gone.sock"); lst.listen(4)
os.unlink(d + "/gone.sock")
again = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); again.bind(d + "/gone.sock"); again.listen(4)
os.mkdir(d + "/sub")                              # a datagram server whose directory is gone too
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); srv.bind(d + "/sub/srv.sock")
cli = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); cli.connect(d + "/sub/srv.sock")
cli.send(b"queued")
os.unlink(d + "/sub/srv.sock"); os.rmdir(d + "/sub")

def report(sig, frame):
    srv.setblocking(False)
    got = {"names": [lst.getsockname(), again.getsockname(), srv.getsockname()],
           "queued": srv.recv(100).decode(), "files": sorted(os.listdir(d))}
    cli.send(b"after")
    got["after"] = srv.recv(100).decode()
    with open(d + "/result", "a") as out:
        out.write(json.dumps(got) + "\n")

signal.signal(signal.SIGUSR1, report)
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""


def test_sockets_bound_to_unlinked_paths_come_back_bound_to_nothing(pidns, tmp_path, restored):
    """A unix socket whose path was unlinked before the dump came back with a socket file at that
    path (which the original did not have); with its directory removed too, restore failed with
    ENOENT, after dump --kill had ended the original; and a path another socket took since was
    EADDRINUSE. Now each is bound where its path names nothing, and getsockname still says it."""
    w = py_workload(pidns, UNLINKED_PATHS, tmp_path)
    img = tmp_path / "u.img"
    host = migrate(w, img, restored)
    shown = ckptrace("show", str(img)).stdout.decode()
    assert shown.count("(its path unlinked)") == 2, shown  # (not `again`, which the path names)
    got = _report(host, tmp_path / "result")
    assert got["names"] == [str(tmp_path / "gone.sock")] * 2 + [str(tmp_path / "sub" / "srv.sock")]
    assert got["queued"] == "queued" and got["after"] == "after"  # (the client still reaches it)
    assert got["files"] == ["gone.sock", "ready", "u.img"]  # (`again`'s: nothing made, nothing removed)
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("ckptrace-unlinked-")]
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(str(tmp_path / "gone.sock"))  # `again`, listening where it was


RENAMED_PATHS = r"""
import os, select, socket, sys
d = sys.argv[1]
# published as bind-then-rename does it (a JVM's attach listener: .java_pidN.tmp -> .java_pidN)
lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); lst.bind(d + "/x.sock.tmp")
os.rename(d + "/x.sock.tmp", d + "/x.sock"); lst.listen(4)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); srv.bind(d + "/dg.sock.tmp")
os.rename(d + "/dg.sock.tmp", d + "/dg.sock")
cli = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); cli.connect(d + "/dg.sock")
cli.send(b"queued")                               # (sent to it again at restore: through its file)
open(d + "/ready", "w").close()
while True:
    for s in select.select([lst, srv], [], [])[0]:
        if s is lst:
            c, _ = lst.accept()
            cli.send(b"after")                    # (connected again at restore: through its file)
            c.sendall(b"accepted by " + lst.getsockname().encode()); c.close()
        else:
            data, sender = srv.recvfrom(100)
            if sender:
                srv.sendto(data + b" to " + srv.getsockname().encode(), sender)
            else:
                with open(d + "/got", "a") as out:
                    out.write(data.decode() + "\n")
"""


def test_sockets_bound_then_renamed_come_back_under_their_new_names(pidns, tmp_path, restored):
    """A unix socket bound and then renamed (bind-then-rename, as a JVM publishes its attach
    listener) was taken for one whose path was unlinked: it came back bound to an invisible file,
    clients met ECONNREFUSED at the new name, where the dead original's file stayed. Now its file
    is found under its new name in the same directory: it comes back there, getsockname still
    saying the name it was bound to."""
    import socket

    w = py_workload(pidns, RENAMED_PATHS, tmp_path)
    img = tmp_path / "r.img"
    dump_kill(w, img)
    restore_json(img, restored)
    assert sorted(set(os.listdir(tmp_path)) - {"got"}) == ["dg.sock", "r.img", "ready", "x.sock"]  # (no .tmp)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(5)
        c.connect(str(tmp_path / "x.sock"))
        assert c.recv(200) == f"accepted by {tmp_path}/x.sock.tmp".encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as c:
        c.settimeout(5)
        c.bind(str(tmp_path / "c.sock"))
        c.sendto(b"ping", str(tmp_path / "dg.sock"))
        assert c.recv(200) == f"ping to {tmp_path}/dg.sock.tmp".encode()
    deadline = time.monotonic() + 5
    while (tmp_path / "got").read_text() != "queued\nafter\n" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "got").read_text() == "queued\nafter\n"
    shown = ckptrace("show", str(img)).stdout.decode()
    assert f"(file renamed to {tmp_path}/x.sock)" in shown and f"(file renamed to {tmp_path}/dg.sock)" in shown, shown
    assert "(its path unlinked)" not in shown, shown


def test_a_renamed_socket_file_a_live_socket_holds_is_not_taken(pidns, tmp_path, restored):
    """The renamed file of a socket is replaced at restore only when its socket is dead: the
    original still running (dumped without --kill), the restore is refused before anything is
    made, and the original keeps its file and answers there."""
    import socket

    w = py_workload(pidns, RENAMED_PATHS, tmp_path)
    ino = (tmp_path / "x.sock").stat().st_ino
    img = str(tmp_path / "r.img")
    d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", img)
    assert d.returncode == 0, d.stderr.decode()
    nss = pidns_inodes(tmp_path)
    r = ckptrace("restore", "--json", img)
    if r.returncode == 0:  # (killed at teardown rather than left running)
        restored.append(json.loads(r.stdout)["init_pid"])
    assert r.returncode != 0 and f"unix socket path {tmp_path}/x.sock is in use by a live socket".encode() \
        in r.stderr, r.stderr
    assert pidns_inodes(tmp_path) - nss == set()
    assert (tmp_path / "x.sock").stat().st_ino == ino and not (tmp_path / "x.sock.tmp").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".ckptrace-bind-")]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(3)
        c.connect(str(tmp_path / "x.sock"))
        assert c.recv(200) == f"accepted by {tmp_path}/x.sock.tmp".encode()  # the original still answers


SCM_RIGHTS_QUEUED = r"""
import array, os, socket, sys, time
d = sys.argv[1]
a, b = socket.socketpair()
b.sendmsg([b"with an fd"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [1]))])
open(d + "/ready", "w").close()
time.sleep(3600)
"""


def test_descriptors_in_flight_are_refused_by_name(pidns, tmp_path):
    w = py_workload(pidns, SCM_RIGHTS_QUEUED, tmp_path)
    fds = len(os.listdir("/proc/self/fd"))
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", str(tmp_path / "x.img"))
    assert d.returncode != 0 and b"file descriptors in flight" in d.stderr, d.stderr
    assert f"pid 1 (host pid {w.init}) fd 3".encode() in d.stderr, d.stderr
    assert len(os.listdir("/proc/self/fd")) == fds
    assert os.path.exists(f"/proc/{w.init}")  # not killed: the dump failed


DGRAM_SERVER = r"""
import socket, sys, time
d = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
srv.bind(d + "/srv.sock")
open(d + "/ready", "w").close()
time.sleep(3600)
"""


def test_a_datagram_from_outside_the_namespace_is_refused_before_the_kill(pidns, tmp_path):
    """A queued datagram's sender name is where replies go: one of a socket outside the image
    cannot be made again, so restore, and dump --kill, refuse it rather than forge it."""
    import socket

    w = py_workload(pidns, DGRAM_SERVER, tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
        out.bind(str(tmp_path / "outside.sock"))
        out.sendto(b"ping", str(tmp_path / "srv.sock"))
        d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", str(tmp_path / "x.img"))
    assert d.returncode != 0 and b"outside.sock" in d.stderr and b"not in the image" in d.stderr, d.stderr
    assert os.path.exists(f"/proc/{w.init}")


ODD_FILE_NAMES = r"""
import mmap, os, sys, time
d = sys.argv[1]
maps = []
for name in ("y (deleted)", "nl\nname"):
    with open(os.path.join(d, name), "w+b") as f:   # closed at once: only the mapping holds it
        f.write(b"0" * 4096)
        f.flush()
        maps.append(mmap.mmap(f.fileno(), 4096, mmap.MAP_SHARED))
n = 0
while True:
    n += 1
    for m in maps:
        m[0:8] = b"%08d" % n
    if n == 3:
        open(d + "/ready", "w").close()
    time.sleep(0.05)
"""


def test_shared_mappings_of_files_with_odd_names_stay_the_files(pidns, tmp_path, restored):
    """maps shows a live file named "y (deleted)" like a deleted "y" (it was taken for one, and
    came back a private copy: the process's writes no longer reached the file), and a newline in a
    name as \\012 (the dump named a file that does not exist, and --kill refused)."""
    w = py_workload(pidns, ODD_FILE_NAMES, tmp_path)
    migrate(w, tmp_path / "odd.img", restored)
    files = [tmp_path / "y (deleted)", tmp_path / "nl\nname"]
    before = [int(f.read_bytes()[:8]) for f in files]
    after = wait_for(lambda: [int(f.read_bytes()[:8]) for f in files],
                     lambda now: all(a > b for a, b in zip(now, before)))
    assert all(a > b for a, b in zip(after, before)), (before, after)


def test_a_deleted_working_directory_is_named_as_deleted(pidns, tmp_path):
    """dump --kill refuses a process whose cwd was removed: the reason said the path with
    " (deleted)" glued on "is not a directory here"."""
    gone = tmp_path / "gone"
    gone.mkdir()
    w = pidns(["sh", "-c", f"cd {gone} && rmdir {gone} && touch {tmp_path}/ready && exec sleep 3600"],
              ready_file=str(tmp_path / "ready"))
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", str(tmp_path / "x.img"))
    assert d.returncode != 0, d.stderr
    assert f"process 1's cwd '{gone}' was deleted before the dump".encode() in d.stderr, d.stderr
    assert os.path.exists(f"/proc/{w.init}")


REFUSED_QUEUES = {
    "oob": (r"""
a, b = socket.socketpair()
b.send(b"x"); b.send(b"!", socket.MSG_OOB)
def result():
    return [a.recv(100), a.recv(1, socket.MSG_OOB)]
""", "out-of-band data (MSG_OOB)", [b"x", b"!"]),
    "pending_with_data": (r"""
lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); lst.bind(d + "/l.sock"); lst.listen(2)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect(d + "/l.sock"); c.send(b"hi")
def result():
    return [lst.accept()[0].recv(10)]
""", "has not accepted it yet, with data sent on it", [b"hi"]),
    "dgram_error": (r"""
t = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); t.bind(d + "/t.sock")
e, f = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
f.send(b"x"); e.connect(d + "/t.sock")          # e leaves f, whose message it dropped: f's ECONNRESET
def result():
    try:
        return [f.recv(10)]
    except OSError as exc:
        return [exc.errno]
""", "error pending for its reader", [errno.ECONNRESET]),
}


@pytest.mark.parametrize("case", sorted(REFUSED_QUEUES))
def test_socket_queues_that_cannot_be_read_untouched_are_refused_and_left_as_they_were(pidns, tmp_path, case):
    """Out-of-band data came back inline; a connection not accepted yet came back closed, its data
    lost; a datagram socket's pending error was taken by the dump's read (the program then never
    saw it) and the dump failed with a bare errno."""
    setup, why, want = REFUSED_QUEUES[case]
    code = "import os, pickle, signal, socket, sys, time\nd = sys.argv[1]\n" + setup + r"""
def report(*_):
    open(d + "/result.tmp", "wb").write(pickle.dumps(result()))
    os.rename(d + "/result.tmp", d + "/result")
signal.signal(signal.SIGUSR1, report)
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""
    w = py_workload(pidns, code, tmp_path)
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", str(tmp_path / "x.img"))
    assert d.returncode != 0 and why.encode() in d.stderr, d.stderr
    os.kill(w.init, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while not (tmp_path / "result").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    import pickle

    assert pickle.loads((tmp_path / "result").read_bytes()) == want


MANY_FDS = r"""
import os, resource, sys, time
d = sys.argv[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
pipes = [os.pipe() for _ in range(1000)]         # 2000 fds
for r, w in pipes:
    os.write(w, b"x")
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""


def test_descriptor_needs_are_estimated_closely_and_checked_before_the_kill(pidns, tmp_path, restored):
    """Restore asked for four descriptors per object: an image of a process with 5000 fds was
    refused under a hard limit of 20000 it fits in, after dump --kill had ended the original,
    which did not check the limit at all."""
    w = py_workload(pidns, MANY_FDS, tmp_path)
    img = tmp_path / "many.img"
    cli = [sys.executable, "-m", "ckptrace"]
    d = subprocess.run(["prlimit", "--nofile=3000:3000", *cli, "dump", "--pidns", str(w.ns), "--kill", "-q",
                        "-o", str(img)], capture_output=True, cwd=REPO)
    assert d.returncode != 0 and b"hard RLIMIT_NOFILE is 3000" in d.stderr, d.stderr
    assert os.path.exists(f"/proc/{w.init}")  # not killed
    dump_kill(w, img)
    r = subprocess.run(["prlimit", "--nofile=7000:7000", *cli, "restore", "--json", str(img)], capture_output=True,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr
    restored.append(json.loads(r.stdout)["init_pid"])


SEM_OPEN = r"""
import ctypes, os, sys, time
d = sys.argv[1]
pt = ctypes.CDLL("libc.so.6", use_errno=True)
pt.sem_open.restype = ctypes.c_void_p
pt.sem_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_uint]
sem = pt.sem_open(b"/ckpt-" + os.path.basename(d).encode(), os.O_CREAT, 0o600, 1)
assert sem
# and an fd on a file whose name it was opened by is gone while another link lives on
open(d + "/tmpname", "w").write("linked")
f = open(d + "/tmpname")
os.link(d + "/tmpname", d + "/realname"); os.unlink(d + "/tmpname")
open(d + "/ready", "w").close()
while True:
    pt.sem_wait(ctypes.c_void_p(sem)); pt.sem_post(ctypes.c_void_p(sem))
    time.sleep(0.05)
"""


def test_an_executable_reached_by_a_removed_name_is_run_from_its_other_name(pidns, tmp_path, restored):
    """The exe link had its own check (a link count only): a binary replaced by `ln new prog.tmp;
    mv`-style updates, still linked as another name, was named by its dead one, and dump --kill
    refused: it "does not exist"."""
    first = tmp_path / "prog.old"
    shutil.copy("/bin/sleep", first)
    w = pidns([str(first), "3600"])
    deadline = time.monotonic() + 5  # (init is forked before it execs: the name must be there till then)
    while os.readlink(f"/proc/{w.init}/exe") != str(first):
        assert time.monotonic() < deadline, "the workload did not start"
        time.sleep(0.01)
    os.link(first, tmp_path / "prog")
    os.unlink(first)
    host = migrate(w, tmp_path / "exe.img", restored)
    assert os.readlink(f"/proc/{host}/exe") == str(tmp_path / "prog")


def test_a_file_reached_by_a_removed_name_but_linked_elsewhere_is_reopened_by_that_name(pidns, tmp_path, restored):
    """sem_open makes /dev/shm/sem.XXXXXX, links it as sem.NAME and removes the first name: maps
    shows the mapping as "sem.XXXXXX (deleted)" while the file lives on. It was taken for a file
    of that name (the dump refused: it "does not exist"): any sem_open user could not be moved."""
    w = py_workload(pidns, SEM_OPEN, tmp_path)
    sem = f"/dev/shm/sem.ckpt-{tmp_path.name}"
    try:
        host = migrate(w, tmp_path / "sem.img", restored)
        maps = open(f"/proc/{host}/maps").read()
        assert sem in maps, maps  # the restored process maps the semaphore's file by its live name
        fds = {os.readlink(f"/proc/{host}/fd/{n}") for n in os.listdir(f"/proc/{host}/fd")}
        assert str(tmp_path / "realname") in fds, fds
    finally:
        if os.path.exists(sem):
            os.unlink(sem)


def test_a_mapped_file_changed_since_the_dump_is_refused_by_name(pidns, tmp_path):
    """A binary rebuilt after the dump: restore said it had restored the namespace, whose process
    was dead at once (its clean pages came from the new file)."""
    exe = tmp_path / "prog"
    shutil.copy("/bin/sleep", exe)
    w = pidns([str(exe), "3600"])
    img = tmp_path / "p.img"
    dump_kill(w, img)
    with open("/bin/sleep", "rb") as f:  # another build: the same size, new times
        new = f.read()
    with open(str(exe) + ".new", "wb") as f:
        f.write(new)
    os.replace(str(exe) + ".new", exe)  # as a build or a package upgrade does
    nss = pidns_inodes(tmp_path)
    r = ckptrace("restore", str(img))
    assert r.returncode != 0, r.stdout
    assert f"process 1's executable is '{exe}', which has changed since the dump".encode() in r.stderr, r.stderr
    # --root / moves nothing, so the files are no copies: their times count (it was a way around)
    r = ckptrace("restore", "--root", "/", str(img))
    assert r.returncode != 0 and b"has changed since the dump" in r.stderr, r.stderr
    assert pidns_inodes(tmp_path) - nss == set()


HOST_LISTENER_CLIENT = r"""
import socket, sys, time
d = sys.argv[1]
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(d + "/host.sock")                      # a host daemon's listener, which has not accepted it
open(d + "/ready", "w").close()
time.sleep(3600)
"""


def test_a_connection_waiting_on_a_listener_outside_the_image_is_refused_before_the_kill(pidns, tmp_path):
    """Recorded as connected to the listener, whose socket the image does not hold: restore
    refused it only once it ran, after dump --kill had ended the original (validate had no
    check for a unix peer outside the image)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as lst:
        lst.bind(str(tmp_path / "host.sock"))
        lst.listen(4)
        w = py_workload(pidns, HOST_LISTENER_CLIENT, tmp_path)
        d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", str(tmp_path / "x.img"))
        assert d.returncode != 0 and b"which is outside the image" in d.stderr, d.stderr
        # naming who holds the other end (the listener's, us), for the user to find it
        assert f"outside the image (held by host pid {os.getpid()} (".encode() in d.stderr, d.stderr
        assert os.path.exists(f"/proc/{w.init}")
        # a plain dump writes the image and says so at once, while the namespace can be changed
        # (it said nothing: the user learnt it from the restore)
        d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", str(tmp_path / "y.img"))
        assert d.returncode == 0 and (tmp_path / "y.img").stat().st_size, d.stderr
        err = d.stderr.decode()
        assert "restore will refuse this image as things stand: " in err and "which is outside the image" in err, err
        r = ckptrace("restore", str(tmp_path / "y.img"))
        assert r.returncode != 0 and b"which is outside the image" in r.stderr, r.stderr


UNACCEPTED = {
    # (workload lines making `lst` and what waits on it; the test's own client: None, "tcp", "unix")
    "tcp_inside": (r"""
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(4)
c = socket.socket(); c.connect(lst.getsockname()); c.send(b"hi")
""", None, "1 connection not accepted yet"),
    "tcp_outside": (r"""
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(4)
""", "tcp", "1 connection not accepted yet"),
    "unix_outside": (r"""
lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); lst.bind(d + "/l.sock"); lst.listen(4)
""", "unix", "1 connection from outside the image not accepted yet"),
}


@pytest.mark.parametrize("case", sorted(UNACCEPTED))
def test_connections_not_accepted_yet_refuse_the_kill_and_are_noted(pidns, tmp_path, case):
    """A listener's accept queue was dropped without a word: a TCP client inside the namespace
    came back "established" with no server end (ECONNRESET at its first send), an outside TCP or
    unix client (with data sent) was reset. The dump notes such a listener, and --kill refuses."""
    import socket

    setup, client, said = UNACCEPTED[case]
    code = "import json, os, socket, sys, time\nd = sys.argv[1]\n" + setup + r"""
open(d + "/addr", "w").write(json.dumps(lst.getsockname()))
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""
    w = py_workload(pidns, code, tmp_path)
    addr = json.loads((tmp_path / "addr").read_text())
    with contextlib.ExitStack() as stack:
        if client:
            c = stack.enter_context(socket.socket(socket.AF_INET if client == "tcp" else socket.AF_UNIX,
                                                  socket.SOCK_STREAM))
            c.connect(tuple(addr) if client == "tcp" else addr)
            c.send(b"waiting")
            time.sleep(0.2)
        d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", str(tmp_path / "x.img"))
        err = d.stderr.decode()
        assert d.returncode != 0 and "not killing" in err and said in err, err
        named = "tcp 127.0.0.1:%d listening" % addr[1] if "tcp" in case else "unix stream " + addr + " listening"
        assert f"pid 1 (host pid {w.init}) fd 3 ({named})" in err, err
        assert os.path.exists(f"/proc/{w.init}")  # left running
        # Into a pipe (`dump --kill -o - | restore -`): the stream had gone out whole before the
        # refusal, and restore made a second copy of the namespace, which ran on beside it. The
        # TAIL now waits for the kill: the reader has an image it refuses.
        d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-q", "-o", "-")
        assert d.returncode != 0 and "not killing" in d.stderr.decode() and len(d.stdout) > 4096, d.stderr
        (tmp_path / "piped.img").write_bytes(d.stdout)
        r = ckptrace("restore", str(tmp_path / "piped.img"))
        assert r.returncode != 0 and b"TAIL" in r.stderr, r.stderr
        assert os.path.exists(f"/proc/{w.init}")
        d = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", str(tmp_path / "y.img"))
        assert d.returncode == 0 and said in d.stderr.decode(), d.stderr  # noted
        if case == "tcp_outside":  # --retry: tried three times in all, then refused as before
            d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "--retry", "2", "-o", str(tmp_path / "z.img"))
            err = d.stderr.decode()
            assert d.returncode == 1 and err.count(said) == 3, err
            assert "try 1 of 3 refused: not killing" in err and "dumping again in 0.1 s" in err, err
            assert "try 2 of 3 refused" in err and "dumping again in 0.2 s" in err and "try 3" not in err, err
            assert os.path.exists(f"/proc/{w.init}") and not (tmp_path / "z.img").exists()
        if client:  # its connection untouched: accepted by the program later, it still works
            c.settimeout(0.5)
            with pytest.raises(TimeoutError):
                c.recv(1)


ACCEPTS_WHEN_TOLD = r"""
import json, os, socket, sys, time
d = sys.argv[1]
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(4)
open(d + "/addr", "w").write(json.dumps(lst.getsockname()))
open(d + "/ready", "w").close()
while not os.path.exists(d + "/go"):
    time.sleep(0.05)
conn, _ = lst.accept()
while data := conn.recv(100):
    conn.sendall(data.upper())
"""


def test_dump_retry_migrates_once_the_connection_is_accepted(pidns, tmp_path, restored):
    """`dump --kill --retry N`: refused while a client waits to be accepted, the dump is made
    again (into the same file, started afresh) until the program has accepted it; the
    migrated server then answers that client."""
    import socket

    w = py_workload(pidns, ACCEPTS_WHEN_TOLD, tmp_path)
    addr = tuple(json.loads((tmp_path / "addr").read_text()))
    img = tmp_path / "retry.img"
    with socket.create_connection(addr, timeout=10) as c:
        time.sleep(0.1)
        d = subprocess.Popen([sys.executable, "-m", "ckptrace", "dump", "--pidns", str(w.ns), "--kill",
                              "--retry", "8", "--json", "-o", str(img)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = d.stderr.readline()  # (refused: the program is told to accept only now)
        assert first.startswith(b"ckptrace dump: try 1 of 9 refused: not killing"), first
        assert b"1 connection not accepted yet" in first and first.endswith(b"dumping again in 0.1 s\n"), first
        (tmp_path / "go").touch()
        out, err = d.communicate(timeout=60)
        err = first + err
        assert d.returncode == 0, err.decode()
        summary = json.loads(out)
        assert summary["tries"] == err.count(b"refused: not killing") + 1 >= 2, (summary, err)
        assert not os.path.exists(f"/proc/{w.init}") and img.stat().st_mode & 0o777 == 0o600
        restore_json(img, restored)
        c.sendall(b"ping")
        assert c.recv(4) == b"PING"


def test_dump_retry_needs_a_file_it_can_write_again(pidns, tmp_path):
    """An image sent down a pipe or FIFO cannot be taken back: --retry with one is refused at
    once, before anything is frozen, and a refusal that will not pass (here a unix peer outside
    the image) is not tried again."""
    import socket

    w = py_workload(pidns, "import sys, time\nopen(sys.argv[1] + '/ready', 'w').close()\ntime.sleep(3600)\n", tmp_path)
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "--retry", "3")
    assert d.returncode == 2 and b"--retry needs -o FILE" in d.stderr and not d.stdout, d.stderr
    os.mkfifo(tmp_path / "fifo")
    d = ckptrace("dump", "--pidns", str(w.ns), "--retry", "3", "-o", str(tmp_path / "fifo"))
    assert d.returncode == 2 and b"fifo is not one)" in d.stderr, d.stderr
    d = ckptrace("dump", "--pidns", str(w.ns), "--retry", "101", "-o", str(tmp_path / "x.img"))
    assert d.returncode == 2 and b"must be 0 to 100" in d.stderr, d.stderr
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as lst:
        lst.bind(str(tmp_path / "host.sock"))
        lst.listen(4)
        (tmp_path / "ready").unlink()  # (the first workload's)
        w = py_workload(pidns, HOST_LISTENER_CLIENT, tmp_path)
        d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "--retry", "3", "-o", str(tmp_path / "x.img"))
        assert d.returncode == 1 and b"which is outside the image" in d.stderr and b"try 1" not in d.stderr, d.stderr
        assert os.path.exists(f"/proc/{w.init}")


def test_a_unix_client_inside_waiting_to_be_accepted_is_migrated(pidns, tmp_path, restored):
    """(The restorable case: connected again at restore, in its place; no note, no refusal.)"""
    code = r"""
import os, socket, sys, time
d = sys.argv[1]
lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); lst.bind(d + "/l.sock"); lst.listen(4)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect(d + "/l.sock")
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""
    w = py_workload(pidns, code, tmp_path)
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "-o", str(tmp_path / "x.img"))
    assert d.returncode == 0 and b"not accepted yet" not in d.stderr, d.stderr
    restore_json(tmp_path / "x.img", restored)


PRIVATE_DATA_MAP = r"""
import mmap, sys, time
d = sys.argv[1]
with open(d + "/data.log", "wb") as f:
    f.write(b"first line\n" * 400)
f = open(d + "/data.log", "rb")
m = mmap.mmap(f.fileno(), 4096, mmap.MAP_PRIVATE, mmap.PROT_READ)
f.close()
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""


def test_a_data_file_mapped_privately_may_have_grown_since_the_dump(pidns, tmp_path, restored):
    """Only code is checked against FILE_STAT: a log a reader maps privately keeps growing by
    appends, and what was mapped is still there."""
    w = py_workload(pidns, PRIVATE_DATA_MAP, tmp_path)
    img = tmp_path / "data.img"
    dump_kill(w, img)
    with open(tmp_path / "data.log", "ab") as f:
        f.write(b"appended\n")
    restore_json(img, restored)


def test_binding_a_socket_path_waits_for_another_restore_doing_the_same(pidns, tmp_path, restored):
    """Two restores of one image at once could both find the dead original's socket file, and the
    second unlink the socket the first had just bound: the look and the bind are done under a lock."""
    import fcntl

    from ckptrace.restorer.files import BIND_LOCK

    w = py_workload(pidns, UNIX_LISTENER, tmp_path)
    img = tmp_path / "l.img"
    dump_kill(w, img)
    os.makedirs(os.path.dirname(BIND_LOCK), exist_ok=True)
    fd = os.open(BIND_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another restore binding a socket
        r = subprocess.Popen([sys.executable, "-m", "ckptrace", "restore", "--json", str(img)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.5)
        waited = r.poll() is None
    finally:
        os.close(fd)
    out, err = r.communicate(timeout=60)
    assert r.returncode == 0, err
    restored.append(json.loads(out)["init_pid"])
    assert waited, "restore bound its socket while another held the lock"


MEMFD_MAPPED_ONLY = r"""
import ctypes, os, sys, time
d = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.memfd_create("ckpt-seg")
os.ftruncate(fd, 4096)
p = libc.mmap(None, 4096, 3, 1, fd, 0)           # MAP_SHARED (Python's mmap would keep a dup of fd)
os.close(fd)                                     # only the mapping holds it now
ctypes.memmove(p, b"hello", 5)
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""


def test_a_memfd_held_by_its_mapping_only_keeps_its_name(pidns, tmp_path, restored):
    """A memfd mapped MAP_SHARED whose fd was closed is a shared segment in the image; it came
    back as /memfd:shmem, whatever it was called."""
    w = py_workload(pidns, MEMFD_MAPPED_ONLY, tmp_path)
    host = migrate(w, tmp_path / "seg.img", restored)
    maps = open(f"/proc/{host}/maps").read()
    assert "/memfd:ckpt-seg (deleted)" in maps, maps


SEGMENT_SEALS = SHM_COMMON + r"""
import fcntl
d = sys.argv[1]
F_ADD_SEALS, F_GET_SEALS = 1033, 1034
def segment(name, seals, prot, map_first=False, flags=os.MFD_ALLOW_SEALING):
    # a memfd of 2 pages, its name in the second, mapped MAP_SHARED; its fd closed: a SHMEM segment
    fd = os.memfd_create(name, flags)
    os.ftruncate(fd, 2 * P)
    os.pwrite(fd, name.encode(), P)
    if map_first:
        a = mmap(2, prot, 0x01, fd)
    if seals:
        fcntl.fcntl(fd, F_ADD_SEALS, seals)
    if not map_first:
        a = mmap(2, prot, 0x01, fd)
    os.close(fd)
    return a
addrs = [segment("grow-shrink", 0x2 | 0x4, 3),                 # SHRINK | GROW, written through its mapping
         segment("future-ro", 0x10, 1),                          # FUTURE_WRITE, mapped read-only after it
         segment("write-sealed", 0x8 | 0x2 | 0x4 | 0x1, 1),       # WRITE | SHRINK | GROW | SEAL, read-only
         segment("future-rw", 0x10 | 0x1, 3, map_first=True),    # FUTURE_WRITE | SEAL, writable mapping made before
         segment("unsealable", 0, 3, flags=0),                   # no MFD_ALLOW_SEALING: F_SEAL_SEAL
         mmap(2, 3, 0x21)]                                       # MAP_SHARED|MAP_ANONYMOUS
libc.shmat.restype = ctypes.c_void_p
shm = libc.shmget(0, 2 * P, 0o1000 | 0o600)                     # SysV: IPC_PRIVATE, IPC_CREAT
addrs.append(libc.shmat(shm, None, 0))
assert libc.shmctl(shm, 0, None) == 0                           # IPC_RMID: gone once detached
put(addrs[0], b"GS-VIA-MAP")
put(addrs[3], b"FW-VIA-MAP")
put(addrs[5] + P, b"anonymous")
put(addrs[6] + P, b"sysv")
def seals():  # each segment's seals, as this process sees them through its mapping's file
    out = []
    for a in addrs:
        fd = os.open(f"/proc/self/map_files/{a:x}-{a + 2 * P:x}", os.O_RDONLY)
        try:
            out.append(fcntl.fcntl(fd, F_GET_SEALS))
        finally:
            os.close(fd)
    return " ".join(map(str, out))
def say(name, text):
    with open(os.path.join(d, name + ".part"), "w") as f:
        f.write(text)
    os.rename(os.path.join(d, name + ".part"), os.path.join(d, name))
say("before", seals())
say("addrs", " ".join(map(str, addrs)))
open(os.path.join(d, "ready"), "w").close()
while not os.path.exists(os.path.join(d, "check")):  # (restored: asked to look again)
    time.sleep(0.05)
say("after", seals())
while True:
    time.sleep(1)
"""
SEGMENT_NAMES = ("grow-shrink", "future-ro", "write-sealed", "future-rw", "unsealable")


def _segment_seals_after(init: int, tmp_path) -> list[int]:
    """The seals the restored SEGMENT_SEALS process reads through /proc/self/map_files."""
    (tmp_path / "check").touch()
    deadline = time.monotonic() + 20
    while not (tmp_path / "after").exists():
        assert time.monotonic() < deadline, "the restored process did not read its seals"
        assert os.path.exists(f"/proc/{init}"), "the restored process died"
        time.sleep(0.05)
    return [int(x) for x in (tmp_path / "after").read_text().split()]


def test_a_memfd_held_by_its_mapping_only_keeps_its_seals(pidns, tmp_path, restored):
    """A memfd mapped MAP_SHARED whose fd was closed is a SHMEM segment in the image; its seals
    (F_GET_SEALS through /proc/PID/map_files) are in its FILE.f_version and come back on the
    rebuilt memfd: the restored process reads the same seals through its mappings, which keep
    their contents and protections, and the seals hold (a write-sealed or future-write-sealed
    segment refuses write(2), a grow/shrink-sealed one ftruncate; a writable mapping made
    before F_SEAL_FUTURE_WRITE still writes). A MAP_SHARED|MAP_ANONYMOUS or SysV segment has
    no seals to keep (f_version 0) and comes back as before. Restore used to make every segment an
    unsealable memfd: F_SEAL_SEAL whatever it had."""
    from ckptrace.image.reader import File, read_image
    from ckptrace.image.records import FileType

    F_GET_SEALS, P = 1034, 4096
    w = py_workload(pidns, SEGMENT_SEALS, tmp_path)
    addrs = [int(x) for x in (tmp_path / "addrs").read_text().split()]
    before = [int(x) for x in (tmp_path / "before").read_text().split()]
    assert before == [0x2 | 0x4, 0x10, 0x8 | 0x2 | 0x4 | 0x1, 0x10 | 0x1, 0x1, 0x1, 0x1]
    img = str(tmp_path / "segment-seals.img")
    dump_kill(w, img)
    init = restore_json(img, restored)["init_pid"]
    assert _segment_seals_after(init, tmp_path) == before
    with open(img, "rb") as f:
        image = read_image(f, skip_pages=True)
    versions = {o.name: o.fields["f_version"] for o in image.objects.values()
                if isinstance(o, File) and o.ftype == FileType.SHMEM}
    for name, seals in zip(SEGMENT_NAMES, before):
        assert versions[f"/memfd:{name} (deleted)"] == 1 << 32 | seals, versions
    assert versions["/dev/zero (deleted)"] == 0
    assert [v for k, v in versions.items() if k.startswith("/SYSV")] == [0]
    maps = _maps(init)
    for a, name, perms in zip(addrs, SEGMENT_NAMES, ("rw-s", "r--s", "r--s", "rw-s", "rw-s")):
        assert maps[a][1:4:2] == (perms, f"/memfd:{name} (deleted)"), maps[a]
        assert _peek(init, a + P, len(name)) == name.encode()
    assert _peek(init, addrs[0], 10) == b"GS-VIA-MAP" and _peek(init, addrs[3], 10) == b"FW-VIA-MAP"
    assert _peek(init, addrs[5] + P, 9) == b"anonymous" and _peek(init, addrs[6] + P, 4) == b"sysv"

    def segment_file(a):
        return os.open(f"/proc/{init}/map_files/{a:x}-{a + 2 * P:x}", os.O_RDWR)

    def refused(attempt):
        with pytest.raises(OSError) as exc:
            attempt()
        assert exc.value.errno == errno.EPERM

    gs, fro, ws, frw = (segment_file(a) for a in addrs[:4])
    try:
        assert [fcntl.fcntl(x, F_GET_SEALS) for x in (gs, fro, ws, frw)] == before[:4]
        refused(lambda: os.ftruncate(gs, P))
        refused(lambda: os.ftruncate(gs, 4 * P))
        os.pwrite(gs, b"STILL-WRITES", 0)
        assert _peek(init, addrs[0], 12) == b"STILL-WRITES"
        for x in (fro, ws, frw):
            refused(lambda x=x: os.pwrite(x, b"x", 0))
        _poke(init, addrs[3], b"MAPPED-WRITE")  # the mapping made before F_SEAL_FUTURE_WRITE
        assert os.pread(frw, 12, 0) == b"MAPPED-WRITE"
    finally:
        for x in (gs, fro, ws, frw):
            os.close(x)


def test_a_segment_of_an_image_without_its_seals_restores_as_before(pidns, tmp_path, restored):
    """An image from before segment seals were kept (every SHMEM FILE.f_version 0): each segment
    comes back as it always did, an unsealable memfd (F_SEAL_SEAL) with its name and contents,
    its pages written by the memory rebuild."""
    from ckptrace.image.records import HDR_SIZE, FileType, RecType
    from ckptrace.image.stream import RecordReader

    P = 4096
    w = py_workload(pidns, SEGMENT_SEALS, tmp_path)
    addrs = [int(x) for x in (tmp_path / "addrs").read_text().split()]
    img = str(tmp_path / "old-segments.img")
    dump_kill(w, img)
    with open(img, "r+b") as f:
        r, cleared = RecordReader(f, skip_pages=True), 0
        where = []
        while (rec := r.next()) is not None:
            if rec.type == RecType.FILE and rec.fields["f_type"] == FileType.SHMEM and rec.fields["f_version"]:
                where.append(rec.offset + HDR_SIZE + 24)  # f_version, at 24 in FILE's fields
        for off in where:
            f.seek(off)
            f.write(bytes(8))
            cleared += 1
    assert cleared == len(SEGMENT_NAMES)
    init = restore_json(img, restored)["init_pid"]
    assert _segment_seals_after(init, tmp_path) == [0x1] * 7
    maps = _maps(init)
    for a, name in zip(addrs, SEGMENT_NAMES):
        assert maps[a][3] == f"/memfd:{name} (deleted)" and _peek(init, a + P, len(name)) == name.encode()
    assert _peek(init, addrs[0], 10) == b"GS-VIA-MAP" and _peek(init, addrs[3], 10) == b"FW-VIA-MAP"
    assert _peek(init, addrs[5] + P, 9) == b"anonymous" and _peek(init, addrs[6] + P, 4) == b"sysv"


ZOMBIES = r"""
import os, signal, sys, time
d, blocked = sys.argv[1], sys.argv[2] == "blocked"
calls = []
signal.signal(signal.SIGCHLD, lambda *a: calls.append(1))  # counts; never reaps
if blocked:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
def reap(*a):
    if blocked:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})  # the pending one runs now
    with open(d + "/reaped.part", "w") as f:
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            f.write(f"{pid} {st}\n")
        f.write(f"calls {len(calls)}\n")
    os.rename(d + "/reaped.part", d + "/reaped")
signal.signal(signal.SIGUSR1, reap)
kids = []
def state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
def fork():
    # the one before is a zombie first: pids in a known order, grandchildren included
    while kids and state(kids[-1]) != "Z":
        time.sleep(0.01)
    pid = os.fork()
    kids.append(pid)
    return pid
if fork() == 0:
    import ctypes
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})  # /proc shows a zombie's mask
    ctypes.CDLL(None).prctl(15, b"zombie-7", 0, 0, 0)  # PR_SET_NAME: and its name
    os.setgid(65534)
    os.setuid(65534)  # ps shows a zombie's owner
    os._exit(7)
if fork() == 0:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(100)
if fork() == 0:                # leads a group its child keeps when it exits
    os.setpgid(0, 0)
    if os.fork() == 0:
        time.sleep(100)
    os._exit(3)
if fork() == 0:                # leads a session its child keeps when it exits
    os.setsid()
    if os.fork() == 0:
        time.sleep(100)
    os._exit(0)
if fork() == 0:
    os.kill(os.getpid(), signal.SIGKILL)
while any(state(k) != "Z" for k in kids):
    time.sleep(0.01)
time.sleep(0.2)  # the grandchildren reparented to us
with open(d + "/calls", "w") as f:
    f.write(str(len(calls)))
open(d + "/ready", "w").close()
while True:
    time.sleep(0.05)
"""


def _zombie_view(host: int) -> tuple:
    """(zombie or live, wait status, pid, ppid, pgid, sid, uid, gid, comm, and a zombie's signal
    mask) inside the namespace, from /proc (a live process's R or S is its scheduler's business,
    and its mask is the workload's)."""
    with open(f"/proc/{host}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{host}/status") as f:
        st = {k: v.split() for k, _, v in (line.partition(":") for line in f)}
    return ("Z" if fields[0] == "Z" else "live", int(fields[49]), int(st["NSpid"][-1]), _ppid_inside(host), int(st["NSpgid"][-1]),
            int(st["NSsid"][-1]), int(st["Uid"][0]), int(st["Gid"][0]), st["Name"][0],
            st["SigBlk"][0] if fields[0] == "Z" else "")


def _ppid_inside(host: int) -> int:
    with open(f"/proc/{host}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    try:
        inside = os.readlink(f"/proc/{ppid}/ns/pid") == os.readlink(f"/proc/{host}/ns/pid")
    except OSError:  # (the host's init: not ours to look at)
        inside = False
    return nspid(ppid) if inside else 0


@pytest.mark.parametrize("sigchld", ["handled", "blocked"])
def test_zombies_come_back_with_their_status_and_no_extra_sigchld(pidns, tmp_path, restored, sigchld):
    """An init that does not reap: five zombies (exit 7, SIGTERM, SIGKILL, a group leader whose child lives
    on, a session leader likewise). The dump keeps them (after its second's wait) and says so;
    the restored init finds them zombies with the same numbers, groups, sessions and wait
    statuses, and its SIGCHLD handler runs no more than it had (handled), or once, for the
    SIGCHLD still pending in the image (blocked)."""
    w = pidns([sys.executable, "-c", ZOMBIES, str(tmp_path), sigchld], ready_file=str(tmp_path / "ready"),
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before = sorted((_zombie_view(p) for p in w.pids()), key=lambda v: v[2])
    zombies = [z for z in before if z[0] == "Z"]
    assert [(z[1], z[2]) for z in zombies] == [(7 << 8, 2), (signal.SIGTERM, 3), (3 << 8, 4), (0, 6),
                                               (signal.SIGKILL, 8)], before
    assert [v[2:6] for v in before if v[0] != "Z"] == [(1, 0, 0, 0), (5, 1, 4, 0), (7, 1, 6, 6)]  # the members
    assert zombies[0][6:9] == (65534, 65534, "zombie-7")
    assert int(zombies[0][9], 16) & (1 << signal.SIGUSR2 - 1) and int(zombies[1][9], 16) & (1 << signal.SIGHUP - 1)
    calls = int((tmp_path / "calls").read_text())
    img = str(tmp_path / "z.img")
    d = ckptrace("dump", "--pidns", str(w.ns), "--kill", "--json", "-o", img)
    assert d.returncode == 0, d.stderr.decode()
    assert json.loads(d.stdout)["zombies"] == 5 and json.loads(d.stdout)["processes"] == 8
    assert "ckptrace dump: 5 zombies (pids 2, 3, 4, 6, 8) that their parents have not reaped" in d.stderr.decode()
    res = restore_json(img, restored)
    assert res["processes"] == 8
    after = sorted((_zombie_view(p) for p in ns_pids(res["pidns"])), key=lambda v: v[2])
    # a group or session led from outside (0) comes back as the restored init's (restored_groups)
    assert after == [v[:4] + tuple(x or 1 for x in v[4:6]) + v[6:] for v in before], (before, after)
    with open(f"/proc/{res['init_pid']}/status") as f:
        pending = int(next(x for x in f if x.startswith("ShdPnd:")).split()[1], 16)
    assert bool(pending >> (signal.SIGCHLD - 1) & 1) == (sigchld == "blocked")
    time.sleep(0.3)  # a stray SIGCHLD would have run the handler by now
    os.kill(res["init_pid"], signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while not (tmp_path / "reaped").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = (tmp_path / "reaped").read_text().splitlines()
    assert sorted(lines[:-1]) == ["2 1792", "3 15", "4 768", "6 0", "8 9"]
    assert lines[-1] == f"calls {calls + 1 if sigchld == 'blocked' else calls}"
    if sigchld == "blocked":
        assert calls == 0


RESTARTED_SLEEP = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
class Timespec(ctypes.Structure):
    _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]
open(sys.argv[1] + "/ready", "w").close()
t = time.monotonic()
ret = libc.nanosleep(ctypes.byref(Timespec(4, 0)), None)  # relative: the kernel restarts it by restart_block
with open(sys.argv[1] + "/slept", "w") as f:
    f.write(f"{ret} {ctypes.get_errno()}")
time.sleep(100)
"""


def test_a_sleep_stopped_twice_is_restarted_not_interrupted(pidns, tmp_path, restored):
    """A dump that leaves the namespace running resumes a relative nanosleep inside
    restart_syscall; the dump --kill after it then finds orig_rax = restart_syscall, and the
    restored task, which has no restart_block, got EINTR out of a sleep it never saw
    interrupted. It sleeps on (nanosleep re-run, its wrapper's call) and returns 0."""
    w = py_workload(pidns, RESTARTED_SLEEP, tmp_path)
    time.sleep(0.1)
    first = ckptrace("dump", "--pidns", str(w.ns), "-q", "-o", os.devnull)
    assert first.returncode == 0, first.stderr.decode()
    with open(f"/proc/{w.init}/syscall") as f:
        assert f.read().split()[0] == "219"  # restart_syscall, as the second dump will see it
    img = str(tmp_path / "s.img")
    dump_kill(w, img)
    restore_json(img, restored)
    deadline = time.monotonic() + 10
    while not (tmp_path / "slept").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "slept").read_text() == "0 0"


def _shd_pnd(host: int) -> int:
    with open(f"/proc/{host}/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("ShdPnd:"))


def _log_lines(path, want: int, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= want or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_a_sleep_interrupted_for_a_handler_returns_eintr_and_the_stop_comes_first(pidns, tmp_path, restored):
    """A child in nanosleep (-ERESTART_RESTARTBLOCK when the dump reads it) is stopped, then sent
    SIGUSR1, whose handler has no SA_RESTART: at SIGCONT the kernel delivers the handler and
    turns the restart into EINTR. Restore used to make the call -ERESTARTNOINTR (there is no
    restart_block to restore), so the handler ran and the sleep began again for 20 s. And the
    SIGSTOP restore queues for a stopped process, sent process-wide, was taken after the
    process-wide SIGUSR1: the restored child sat stopped with the handler's frame made and
    nothing pending, where the original had SIGUSR1 pending (ShdPnd)."""
    exe = workload_exe(tmp_path, "stopsleep")
    w = pidns([exe, str(tmp_path)], ready_file=str(tmp_path / "ready"), stdin=subprocess.DEVNULL,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    usr1 = 1 << (signal.SIGUSR1 - 1)
    (child,) = [h for h in w.pids() if nspid(h) == 2]
    assert _shd_pnd(child) & usr1, "the workload's child should have SIGUSR1 pending while stopped"
    img = str(tmp_path / "s.img")
    dump_kill(w, img)
    res = restore_json(img, restored)
    (child,) = [h for h in ns_pids(res["pidns"]) if nspid(h) == 2]
    deadline = time.monotonic() + 5
    while "T" not in _states(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _states(child) == {"T"}
    assert _shd_pnd(child) & usr1, "SIGUSR1 was taken before the stop"
    os.kill(child, signal.SIGCONT)
    lines = _log_lines(tmp_path / "log", 2, 5)
    assert len(lines) >= 2 and lines[0] == "handler" and lines[1].startswith("nanosleep r=-1 errno=4 "), lines


def test_failure_after_threads_exist_kills_what_was_made(pidns, refwork, tmp_path, monkeypatch):
    """A restore that fails once a multi-threaded process has its threads (here: in the last
    steps, scheduling) kills and reaps all it made, threads before their leaders: waiting for a
    leader whose traced thread was not reaped yet waited for ever."""
    import errno
    import threading

    from ckptrace import restore
    from ckptrace.errors import KernelError
    from ckptrace.restorer import sched

    w = start_workload(pidns, refwork, str(tmp_path))
    img = str(tmp_path / "ref.img")
    dump_kill(w, img)
    from ckptrace.image.reader import read_image

    with open(img, "rb") as f:
        assert any(not t.is_leader for t in read_image(f).tasks), "the workload has no thread"
    hosts: list[int] = []

    def failing_apply(host_tid, task):
        hosts.append(host_tid)
        raise KernelError("injected failure", errno.EIO)

    monkeypatch.setattr(sched, "apply", failing_apply)
    nss = pidns_inodes(tmp_path)
    outcome: list[BaseException] = []

    def run():
        try:
            restore.restore(img)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.append(exc)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(30)
    assert not th.is_alive(), "the abort hung waiting for a leader before its threads"
    assert outcome and isinstance(outcome[0], KernelError) and "injected failure" in str(outcome[0])
    assert hosts and not os.path.exists(f"/proc/{hosts[0]}"), "a partly restored task survived"
    assert pidns_inodes(tmp_path) - nss == set(), "the partly restored namespace survived"


def test_a_connection_reset_while_the_namespace_was_down_does_not_fail_the_restore(pidns, tmp_path, restored):
    """No network lock: an outside peer that sends while the namespace is down meets no socket
    and gets a reset, and the restored end's window probe is reset in turn. That connection is
    gone, but the rest of the namespace is not lost with it: restore succeeds, and says so on
    stderr when the reset meets the restore itself (an exploratory run's restore failed there
    with ECONNRESET: whether it lands then or once the program runs depends on timing)."""
    import socket
    import threading

    ls = socket.create_server(("127.0.0.1", 0))
    conns: list = []
    threading.Thread(target=lambda: conns.append(ls.accept()[0]), daemon=True).start()
    w = _tcp_client(pidns, tmp_path, ls.getsockname()[1])
    deadline = time.monotonic() + 5
    while not conns and time.monotonic() < deadline:
        time.sleep(0.02)
    (conn,) = conns
    img = str(tmp_path / "tcp.img")
    dump_kill(w, img)
    with conn, ls:
        with contextlib.suppress(ConnectionResetError):
            conn.send(b"anyone there?\n")  # answered by a reset: no socket has that 4-tuple now
        time.sleep(0.3)
        r = ckptrace("restore", "--json", img)
        assert r.returncode == 0, r.stderr.decode()
        restored.append(json.loads(r.stdout)["init_pid"])
    # (whether the reset meets the restore itself, which then says so, or the program first,
    # depends on when it lands)
    err = r.stderr.decode()
    assert err == "" or "the peer reset the connection while the namespace was down" in err, err
    # (the program meets the reset in its send, which it does not catch: it ends)


CHANGED_WORLD = r"""
import ctypes, os, sys, time
d = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
os.mkdir(d + "/wd")
os.chdir(d + "/wd")
log = os.open("app.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(log, b"started\n")
with open("map.dat", "wb") as f:
    f.write(b"m" * 8192)
fd = os.open("map.dat", os.O_RDONLY)
p = libc.mmap(None, 8192, 3, 2, fd, 0)           # MAP_PRIVATE, read-write
os.close(fd)                                     # only the mapping holds it
ctypes.memmove(p + 4096, b"written", 7)          # page 1 copied on write: in the image
open(d + "/ready", "w").close()
while True:
    time.sleep(1)
"""


def _refused_fast(img, mark, *args) -> str:
    """`restore img` refused at validation: at once (no watchdog waited out), in one line, with
    no namespace made. Its message."""
    nss = pidns_inodes(mark)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "ckptrace", "restore", *args, str(img)], cwd=REPO,
                       capture_output=True, timeout=120)
    took = time.monotonic() - t0
    err = r.stderr.decode()
    assert r.returncode != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert took < 15, f"the refusal took {took:.0f} s: {err}"
    assert pidns_inodes(mark) - nss == set(), "a refused restore created a namespace"
    return err


def test_a_regular_file_now_of_another_kind_is_refused_at_validation(pidns, tmp_path, restored):
    """The path of a file an fd had open names something else now: a FIFO (the open blocked until
    the 60 s watchdog), a directory (EISDIR, late), a dangling symlink (passed, then "no such
    process or file"), a symlink to /dev/zero (restored, the log written into /dev/zero,
    silently). FILE_STAT now records the fd's file type, and validation names the path at once."""
    import socket

    w = py_workload(pidns, CHANGED_WORLD, tmp_path)
    img = tmp_path / "w.img"
    dump_kill(w, img)
    log = tmp_path / "wd" / "app.log"
    log.rename(tmp_path / "app.log.keep")

    def bind():
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(log))  # (the socket file stays)

    was = "was a regular file at the dump and "
    cases = [(lambda: os.mkfifo(log), was + "is now a FIFO"),
             (log.mkdir, was + "is now a directory"),
             (bind, was + "is now a socket"),
             (lambda: log.symlink_to(tmp_path / "nowhere"),
              f"is now a symlink to '{tmp_path}/nowhere', which leads nowhere"),
             (lambda: log.symlink_to("/dev/zero"), was + "is now a symlink to '/dev/zero', a character device")]
    for make, said in cases:
        make()
        try:
            err = _refused_fast(img, tmp_path)
        finally:
            log.rmdir() if log.is_dir() and not log.is_symlink() else log.unlink()
        assert f"file '{log}' (pid 1 fd 3) {said}" in err, (said, err)
    # the file back: it restores, and the log carries on where it was
    (tmp_path / "app.log.keep").rename(log)
    res = restore_json(img, restored)
    (host,) = ns_pids(res["pidns"])
    assert os.readlink(f"/proc/{host}/fd/3") == str(log)


def test_a_privately_mapped_file_shrunk_under_its_written_pages_is_refused(pidns, tmp_path, restored, monkeypatch):
    """A data file mapped MAP_PRIVATE, of which the image holds a written page, truncated since:
    the kernel maps no page past a file's end, and the injected pread into it failed late with
    "pread of pages ADDR in HOSTPID: EFAULT". Validation names the file, its size and the offset,
    with every other problem (a FIFO at the log's path here); the late error, should the file
    shrink after the validation, names the file and the pid inside the namespace."""
    from ckptrace import restore
    from ckptrace.errors import KernelError
    from ckptrace.restorer import memory

    w = py_workload(pidns, CHANGED_WORLD, tmp_path)
    img = tmp_path / "w.img"
    dump_kill(w, img)
    data = tmp_path / "wd" / "map.dat"
    os.truncate(data, 4096)  # page 0 still there, page 1 (written) past the end
    err = _refused_fast(img, tmp_path)
    assert f"file '{data}' is now 4096 bytes; process 1's private mapping of it at " in err, err
    assert "holds a written page at file offset 4096" in err, err
    log = tmp_path / "wd" / "app.log"
    log.unlink()
    os.mkfifo(log)
    err = _refused_fast(img, tmp_path)
    assert f"file '{log}' (pid 1 fd 3) was a regular file at the dump and is now a FIFO" in err, err
    assert f"file '{data}' is now 4096 bytes" in err, err
    log.unlink()
    log.write_bytes(b"started\n")
    # past the validation (as if the file shrank right after it): named, and nothing left
    monkeypatch.setattr(memory, "check_mapped_files", lambda img: [])
    nss = pidns_inodes(tmp_path)
    with pytest.raises(KernelError) as exc:
        restore.restore(str(img))
    assert "pid 1 (host pid " in str(exc.value) and f"pages of '{data}'" in str(exc.value), exc.value
    assert "the file is now 4096 bytes" in str(exc.value), exc.value
    assert pidns_inodes(tmp_path) - nss == set(), "the partly restored namespace survived"
    # grown back (the original's page was within the file): restored
    os.truncate(data, 8192)
    restore_json(img, restored)


def test_a_missing_cwd_or_root_is_named_so(pidns, tmp_path):
    """A cwd that is gone "does not exist" (it said "is not a directory here"); a --root that does
    not exist, or is a file, is the one problem named: not followed by every file under it."""
    w = py_workload(pidns, CHANGED_WORLD, tmp_path)
    img = tmp_path / "w.img"
    dump_kill(w, img)
    wd = tmp_path / "wd"
    wd.rename(tmp_path / "wd.gone")
    err = _refused_fast(img, tmp_path)
    assert f"process 1's cwd '{wd}' does not exist here" in err, err
    (tmp_path / "wd.gone").rename(wd)
    (tmp_path / "afile").write_bytes(b"")
    for root, said in ((tmp_path / "noroot", "does not exist"), (tmp_path / "afile", "is not a directory")):
        err = _refused_fast(img, tmp_path, "--root", str(root))
        assert err.strip() == f"ckptrace restore: cannot restore this image: --root '{root}' {said}", err


def test_an_older_image_infers_what_a_regular_file_may_be():
    """An image without FILE_STAT's mode (older, or an fd's file before it had one) still refuses
    a FIFO or socket at a REGULAR path (the dumper tells those apart), and what the open flags
    rule out: a directory opened for writing, a file where O_DIRECTORY opened a directory."""
    import stat as st

    from ckptrace.image.reader import File
    from ckptrace.restorer.files import _was_kinds

    def kinds(flags, mode):
        return set(_was_kinds(File(1, dict(f_type=1, f_flags=flags, f_mode=mode, f_pos=0, f_version=0), "/x")))

    assert kinds(os.O_RDONLY, 1) == {st.S_IFREG, st.S_IFDIR, st.S_IFCHR, st.S_IFBLK}
    assert kinds(os.O_WRONLY | os.O_APPEND, 2) == {st.S_IFREG, st.S_IFCHR, st.S_IFBLK}
    assert kinds(os.O_RDONLY | os.O_DIRECTORY, 1) == {st.S_IFDIR}


RESERVATION = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
G = 1 << 30
# a runtime's reservations: 64 GiB read-write and 1 TiB PROT_NONE, MAP_NORESERVE, a few pages used
big = libc.mmap(None, 64 * G, 3, 0x22 | 0x4000, -1, 0)
none = libc.mmap(None, 1 << 40, 0, 0x22 | 0x4000, -1, 0)
assert big not in (None, 2 ** 64 - 1) and none not in (None, 2 ** 64 - 1)
spots = [big, big + 20 * G + 4096 * 7, big + 64 * G - 4096]
for i, a in enumerate(spots):
    ctypes.memset(a, 0x41 + i, 4096)
d = sys.argv[1]
open(os.path.join(d, "addr"), "w").write(" ".join(map(str, [big, none, *spots])))
open(os.path.join(d, "ready"), "w").close()
while True:
    with open(os.path.join(d, "seen.tmp"), "w") as f:
        f.write(" ".join(str(ctypes.string_at(a, 4096).count(bytes([0x41 + i]))) for i, a in enumerate(spots)))
    os.replace(os.path.join(d, "seen.tmp"), os.path.join(d, "seen"))
    time.sleep(0.05)
"""


def test_a_huge_reservation_is_scanned_not_read_page_by_page(pidns, tmp_path, restored, monkeypatch):
    """A 64 GiB read-write and a 1 TiB PROT_NONE MAP_NORESERVE mapping with three pages written:
    the dump read 8 bytes of /proc/PID/pagemap per virtual page (2 GiB of reads for the 1 TiB
    alone; 16 TiB kept a namespace frozen a minute). It now asks PAGEMAP_SCAN where pages are and
    reads pagemap there only. The three pages are stored, and come back."""
    from ckptrace import dump as dumpmod
    from ckptrace.image.reader import Mm, read_image

    w = py_workload(pidns, RESERVATION, tmp_path)
    big, none, *spots = map(int, (tmp_path / "addr").read_text().split())
    read = {"pagemap": 0}
    pread = os.pread

    def counting(fd, n, off):
        out = pread(fd, n, off)
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").endswith("/pagemap"):
                read["pagemap"] += len(out)
        return out

    monkeypatch.setattr(os, "pread", counting)
    img = tmp_path / "r.img"
    fd = os.open(img, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        dumpmod.dump(w.ns, fd, dumpmod.Options())
    finally:
        os.close(fd)
    monkeypatch.undo()
    assert read["pagemap"] < 4 << 20, read  # not the 128 MiB + 2 GiB a full read takes
    with open(img, "rb") as f:
        mm = next(o for o in read_image(f).objects.values() if isinstance(o, Mm))
    vma = next(v for v in mm.vmas if v.start == big)
    assert [(r.vaddr, r.npages) for r in vma.runs] == [(a, 1) for a in spots]
    assert next(v for v in mm.vmas if v.start == none).npages == 0
    # and it comes back, with its pages
    w.kill()
    res = restore_json(img, restored)
    (host,) = ns_pids(res["pidns"])
    with open(f"/proc/{host}/maps") as f:
        maps = f.read()
    assert f"{big:x}-{big + (64 << 30):x} rw-p" in maps and f"{none:x}-{none + (1 << 40):x} ---p" in maps, maps
    (tmp_path / "seen").unlink()
    deadline = time.monotonic() + 10
    while not (tmp_path / "seen").exists():
        assert time.monotonic() < deadline, "the restored process never wrote what it sees"
        time.sleep(0.05)
    assert (tmp_path / "seen").read_text() == "4096 4096 4096"
