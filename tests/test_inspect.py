"""`ckptrace inspect`: the state object on synthetic edge cases, and the textual app driven by its
pilot at 80x24 over an image made by a real dump of a real workload in its own pid namespace."""

from __future__ import annotations

import asyncio
import calendar
import io
import json
import os
import stat
import subprocess
import sys
import time

import pytest

import imagegen
from ckptrace.image.reader import read_image
from ckptrace.image.records import PAGE_SIZE
from ckptrace.image import stream as source
from ckptrace.tui.state import BLOCKING_SYSCALLS, InspectState, format_row, parse_address, parse_needle

MARKER = b"CKPTRACE-MARKER-0123456789"
MARK_PAGE, MARK_OFF = 5, 0x123
PAGES = 16
CHANGED_PAGES = (2, 3, 4, 9)  # what the workload rewrites on SIGUSR1
SHARED_MARK = b"WRITTEN-BY-THE-CHILD-INTO-SHARED"
SPLIT_PAGE = 12  # made read-only on SIGUSR1

# pid 1 forks a child that maps PAGES private anonymous pages, fills page i with 0x40+i, puts
# MARKER in page MARK_PAGE, writes SHARED_MARK into page 1 of a MAP_SHARED anonymous region made
# before the fork, starts a second thread and reports "base nspid shared-base" in a file.
# On SIGUSR1 the child rewrites CHANGED_PAGES with 0xC0+i, opens OUT.log (a new fd) and changes
# its mappings (see Workload.change).
WORKLOAD = f"""
import ctypes, mmap, os, signal, sys, threading, time
out = sys.argv[1]
r, w = os.pipe()
sh = mmap.mmap(-1, 2 * 4096)
if os.fork() == 0:
    os.close(w)
    m = mmap.mmap(-1, {PAGES} * 4096, flags=mmap.MAP_PRIVATE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    for i in range({PAGES}):
        m[i * 4096:(i + 1) * 4096] = bytes([0x40 + i]) * 4096
    off = {MARK_PAGE} * 4096 + {MARK_OFF}
    m[off:off + {len(MARKER)}] = {MARKER!r}
    sh[4096:4096 + {len(SHARED_MARK)}] = {SHARED_MARK!r}
    shbase = ctypes.addressof(ctypes.c_char.from_buffer(sh))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    rx = libc.mmap(None, 2 * 4096, 5, 0x22, -1, 0)  # r-x private anonymous: merges with nothing
    def usr1(sig, frame):
        for i in {CHANGED_PAGES!r}:
            m[i * 4096:(i + 1) * 4096] = bytes([0xC0 + i]) * 4096
        fd = os.open(out + ".log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        libc.mprotect(rx, 2 * 4096, 1)  # r-x -> r--: re-protected
        libc.mprotect(base + {SPLIT_PAGE} * 4096, 4096, 1)  # splits the region: resized + 2 added
        new = libc.mmap(None, 3 * 4096, 7, 0x22, -1, 0)  # rwx: added, merges with nothing
        with open(out + ".changed.tmp", "w") as f:
            f.write("%d %x %x" % (fd, rx, new))
        os.rename(out + ".changed.tmp", out + ".changed")
    signal.signal(signal.SIGUSR1, usr1)
    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
    with open(out + ".tmp", "w") as f:
        f.write("%x %d %x" % (base, os.getpid(), shbase))
    os.rename(out + ".tmp", out)
    while True:
        time.sleep(3600)
else:
    os.close(r)
    os.wait()
"""


class Workload:
    def __init__(self, pidns, tmp_path):
        script = tmp_path / "workload.py"
        script.write_text(WORKLOAD)
        self.ready = str(tmp_path / "ready")
        self.ns = pidns(["python3", str(script), self.ready], ready_file=self.ready)
        text = open(self.ready).read().split()
        self.base = int(text[0], 16)
        self.child_nspid = int(text[1])
        self.shared = int(text[2], 16)
        self.child_host = next(p for p in self.ns.pids() if _nspid(p) == self.child_nspid)

    def dump(self, path: str) -> str:
        r = subprocess.run([sys.executable, "-m", "ckptrace", "dump", "--pidns", str(self.ns.ns), "-o", path,
                            "--quiet"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"dump failed: {r.stderr}"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        return path

    def change(self) -> tuple[int, int, int]:
        """Make the child rewrite CHANGED_PAGES, open a file, re-protect its r-x mapping, split
        the region and map 3 new pages; returns (new fd, r-x mapping, new mapping)."""
        os.kill(self.child_host, 10)  # SIGUSR1
        done = self.ready + ".changed"
        deadline = time.monotonic() + 10
        while not os.path.exists(done):
            assert time.monotonic() < deadline, "workload did not react to SIGUSR1"
            time.sleep(0.02)
        fd, rx, new = open(done).read().split()
        return int(fd), int(rx, 16), int(new, 16)


def _nspid(hostpid: int) -> int:
    from nsutil import nspid

    return nspid(hostpid)


def blocked_in(hostpid: int) -> list[int]:
    """The system call number each thread of hostpid sleeps in, once all of them sleep."""
    deadline = time.monotonic() + 5
    while True:
        calls = [open(f"/proc/{hostpid}/task/{t}/syscall").read().split()[0]
                 for t in os.listdir(f"/proc/{hostpid}/task")]
        if all(c.isdigit() and int(c) in BLOCKING_SYSCALLS for c in calls) or time.monotonic() > deadline:
            return sorted(int(c) for c in calls)
        time.sleep(0.02)


def maps_ranges(hostpid: int) -> set[tuple[int, int]]:
    out = set()
    with open(f"/proc/{hostpid}/maps") as f:
        for line in f:
            lo, hi = line.split()[0].split("-")
            out.add((int(lo, 16), int(hi, 16)))
    return out


def screen_text(app) -> str:
    """What the terminal shows now, as plain text lines."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in s) for s in strips)


# -- the state object, on synthetic images (edge cases a dump would not produce on demand) -----

def synthetic() -> InspectState:
    data = imagegen.build(pages=3)
    f = io.BytesIO(data)
    return InspectState(read_image(f), f)


def test_parsers():
    assert parse_address("0x7FFD_1000") == 0x7FFD1000
    assert parse_address(" 400000 ") == 0x400000
    with pytest.raises(ValueError):
        parse_address("zz")
    assert parse_needle("x:de ad BE ef") == b"\xde\xad\xbe\xef"
    assert parse_needle("0x0a0b") == b"\x0a\x0b"
    assert parse_needle("hello") == b"hello"
    with pytest.raises(ValueError):
        parse_needle("x:abc")
    line = format_row(0x1000, bytes(range(0x41, 0x51)))
    assert line == "000000001000  41 42 43 44 45 46 47 48 49 4a 4b 4c 4d 4e 4f 50  ABCDEFGHIJKLMNOP"
    assert len(line) <= 79
    assert "-- --" in format_row(0x1000, None)


def test_state_tree_pages_and_search():
    st = synthetic()
    assert [(d, t.tid) for d, t in st.tree_rows] == [(0, 1), (1, 3)]
    st.select(1)
    heap = st.vma_rows()[1]
    assert heap == ("600000-621000", "132K", "rw-p", "4", "[heap]")
    assert st.vma_rows()[0][4] == "sample"  # /usr/bin/sample: the file's name in the table
    st.open_vma(0)
    title = st.hex_title()
    # the count before the name, which is what a narrow screen cuts off
    assert title.index("pages in image") < title.index("/usr/bin/sample")
    st.rows = 4
    st.open_vma(1)
    assert st.hex_lines()[0].startswith("000000600000  01 01")
    # A page the image does not hold shows as missing, not as zeros.
    st.goto(0x605010)
    assert st.hex_lines()[0] == format_row(0x605010, None)
    assert "not in image" in st.message
    with pytest.raises(LookupError):
        st.goto(0x500000)
    # A match straddling two stored pages (0x601fff holds 02, 0x602000 holds 03) is found.
    st.mark = None
    st.top = 0x600000
    hit = st.search(b"\x02\x03")
    assert hit is not None and hit.addr == 0x601FFF
    assert st.marked_columns(0x601FF0) == [15] and st.marked_columns(0x602000) == [0]
    # Also when the two pages come from separate reads.
    assert [a + d.find(b"\x02\x03") for a, d in st._segments(0, 1 << 64, chunk_pages=1)
            if b"\x02\x03" in d] == [0x601FFF]
    # Next match wraps around to the same place; an absent needle reports not found.
    assert st.search_next().addr == 0x601FFF
    assert st.search(b"nothing like this") is None and st.message == 'not found: "nothing like this"'
    assert st.search(b"\xff\x00") is None and st.message == "not found: x:ff00"
    # Scrolling is clamped to the VMA.
    st.goto(0x600000)
    st.page_up()
    assert st.top == 0x600000
    st.end()
    assert st.top == 0x621000 - 4 * 16


def test_state_fds_signals_creds_threads():
    st = synthetic()
    fds = st.fd_rows()
    assert [r[0] for r in fds] == ["0", "1", "7"]
    assert fds[1][3] == "RDWR|APPEND|CLOEXEC" and fds[1][4] == "42"
    # pid 3 shares the table: the same pipe end is not mistaken for its peer.
    assert fds[2][2] == "pipe:[1234]"
    assert "SIGPIPE" in st.signals_text() and "SIG_IGN" in st.signals_text()
    assert "blocked SIGTERM" in st.signals_text()
    assert "groups 4 27" in st.creds_text() and "cwd  /root" in st.creds_text()
    assert "seccomp filter, 1 filter(s) of 2 insns  no_new_privs 1" in st.creds_text()
    assert "lock fd 0: FLOCK WRITE from 0 to EOF" in st.creds_text()
    assert "interval timers: real 0.042s every 0.1s" in st.signals_text()
    assert "POSIX timer 3: clock 1, SIGUSR1, 5s" in st.signals_text()
    assert [r[0] for r in st.thread_rows()] == ["1", "2"]
    assert "rip 0000000000011111" in st.registers(1)
    assert "SCHED_OTHER nice 1 priority 0  CPUs 0-1  timer slack 0 ns" in st.registers(1)


def test_pages_read_lazily_and_cached():
    st = synthetic()
    st.open_vma(1)
    st.rows = 8
    st.hex_lines()
    assert len(st.cache) == 1  # one page read for a screenful inside one page
    st.cache_pages = 2
    for a in (0x600000, 0x601000, 0x602000, 0x610000):
        st.page(st.vma, a)
    assert len(st.cache) == 2


def test_app_prompt_takes_letters_that_are_also_keys():
    """Typing q, g, n into the find prompt types them; it neither quits nor jumps."""
    from ckptrace.tui.app import InspectApp

    st = synthetic()

    async def drive():
        app = InspectApp(st)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("slash", *"qgn")
            await pilot.pause()
            assert app.is_running and " qgn" in screen_text(app)
            await pilot.press("enter")
            await pilot.pause()
            assert st.needle == b"qgn" and "not found" in screen_text(app)
            await pilot.press("q")
            await pilot.pause()
        assert not app.is_running

    asyncio.run(drive())


def test_app_on_an_image_without_tasks():
    from ckptrace.image.records import RecType
    from ckptrace.image.stream import ImageWriter, write_header, write_tail
    from ckptrace.tui.app import InspectApp

    buf = io.BytesIO()
    r, w = os.pipe()
    wr = ImageWriter(w)
    write_header(wr, time=1, uts=("6.18.0", "#1", "x86_64"), xstate_size=1024, xcr0=0xE7)
    wr.record(RecType.TREE, dict(nr_tasks=0), [])
    write_tail(wr)
    os.close(w)
    buf.write(os.read(r, 1 << 16))
    os.close(r)
    buf.seek(0)
    st = InspectState(read_image(buf), buf)

    async def drive():
        app = InspectApp(st)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("g", *"1000", "enter")
            await pilot.pause()
            assert "the image holds no tasks" in screen_text(app)

    asyncio.run(drive())


@pytest.mark.kernel
def test_a_full_tmpdir_is_named_when_spooling(root, tmp_path, monkeypatch):
    """`restore -` into a full $TMPDIR said only "No space left on device": the last bytes were
    buffered, and the flush that failed was not the copy's."""
    import threading

    from ckptrace.errors import KernelError

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        monkeypatch.setenv("TMPDIR", str(small))
        payload = imagegen.build(pages=40)  # > 64 KiB
        r, w = os.pipe()
        t = threading.Thread(target=lambda: (os.write(w, payload), os.close(w)))
        t.start()
        with os.fdopen(r, "rb") as src, pytest.raises(KernelError) as err:
            source.spool(src)
        t.join()
        assert f"temporary file in {small}" in str(err.value) and "ENOSPC" in str(err.value), err.value
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_spool_is_private_and_complete():
    r, w = os.pipe()
    payload = imagegen.build(pages=12)  # spool validates what it copies: an image, > 64 KiB
    import threading

    t = threading.Thread(target=lambda: (os.write(w, payload), os.close(w)))
    t.start()
    with os.fdopen(r, "rb") as src:
        tmp = source.spool(src)
    t.join()
    assert stat.S_IMODE(os.fstat(tmp.fileno()).st_mode) == 0o600
    assert os.fstat(tmp.fileno()).st_nlink == 0  # nameless: nobody else can open it
    assert tmp.read() == payload


def test_inspect_reads_stdin(tmp_path):
    img = tmp_path / "s.img"
    img.write_bytes(imagegen.build())
    code = ("import sys; from ckptrace.tui.inspect import load; st = load('-'); "
            "st.open_vma(1); print(st.hex_lines()[0])")
    with open(img, "rb") as f:
        r = subprocess.run([sys.executable, "-c", code], input=f.read(),
                           capture_output=True, text=False, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().startswith("000000600000  01 01")


def run_in_pty(argv: list[str], stdin_data: bytes | None = None) -> tuple[int, bytes]:
    """Run argv on a new 80x24 pseudo-terminal, wait for the footer, press q; (status, output).
    With stdin_data, standard input is a pipe carrying it while the terminal stays the pty."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    src = None
    if stdin_data is not None:
        src, w = os.pipe()
    pid, fd = pty.fork()
    if pid == 0:  # child: exec at once
        if src is not None:
            os.dup2(src, 0)
        os.environ.update(TERM="xterm-256color", COLUMNS="80", LINES="24")
        os.execv(argv[0], argv)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    if src is not None:
        os.close(src)
        os.write(w, stdin_data)
        os.close(w)
    out = b""
    deadline = time.monotonic() + 20
    sent = False
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not sent and b"Quit" in out:
            time.sleep(0.3)
            os.write(fd, b"q")
            sent = True
    # q must end it promptly; whatever still runs at the deadline is killed (and fails the test).
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.05)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out


@pytest.mark.parametrize("from_stdin", [False, True, "/dev/stdin", "/proc/self/fd/0"])
def test_command_runs_on_a_terminal_and_q_quits(tmp_path, from_stdin):
    """Also `cat img | inspect /dev/stdin`: the keyboard was put on fd 0 before the image was
    opened through it, so the image was read from the keyboard (a blank screen, keys taken for
    image bytes)."""
    img = tmp_path / "s.img"
    img.write_bytes(imagegen.build())
    exe = os.path.join(os.path.dirname(sys.executable), "ckptrace")
    if from_stdin:
        status, out = run_in_pty([exe, "inspect", "-" if from_stdin is True else from_stdin], img.read_bytes())
    else:
        status, out = run_in_pty([exe, "inspect", str(img)])
    assert status == 0, out[-2000:]
    assert b"sample" in out and b"6.18.0-test" in out


def test_command_without_a_terminal_is_a_one_line_error(tmp_path):
    img = tmp_path / "s.img"
    img.write_bytes(imagegen.build())
    exe = os.path.join(os.path.dirname(sys.executable), "ckptrace")
    # no controlling terminal at all (new session), stdin and stdout not terminals: FILE and -
    for argv, data in (([exe, "inspect", str(img)], b""), ([exe, "inspect", "-"], img.read_bytes())):
        r = subprocess.run(argv, input=data, capture_output=True, timeout=30, start_new_session=True)
        err = r.stderr.decode().strip()
        assert r.returncode == 2 and len(err.splitlines()) == 1 and "terminal" in err, err
        assert r.stdout == b""


def test_image_on_stdin_without_a_screen_is_refused_before_it_is_read():
    """`cat big.img | inspect - > file` used to copy the whole image before saying its output must
    be a terminal: with a writer that never finishes, it must still answer at once."""
    exe = os.path.join(os.path.dirname(sys.executable), "ckptrace")
    p = subprocess.Popen([exe, "inspect", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        p.stdin.write(b"x" * 4096)  # the start of an image, and then nothing: never EOF
        p.stdin.flush()
        rc = p.wait(timeout=15)
    finally:
        p.kill()
        p.stdin.close()
    err = p.stderr.read().decode().strip()
    assert rc == 2 and "must be a terminal" in err and len(err.splitlines()) == 1, err


def test_help_does_not_import_textual():
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "ckptrace", "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0
    assert "textual" not in r.stderr


# -- the app over a real dump -------------------------------------------------------------------

@pytest.mark.kernel
def test_app_navigates_a_real_dump(pidns, tmp_path):
    w = Workload(pidns, tmp_path)
    # What each thread is blocked in, per /proc, read before the dump: just after it the threads
    # are resuming and /proc may briefly say "running".
    host_calls = blocked_in(w.child_host)
    dumped_at = time.time()
    path = w.dump(str(tmp_path / "ns.img"))
    host_maps = maps_ranges(w.child_host)
    with open(f"/proc/{w.child_host}/maps") as maps:
        heap_line = next(line for line in maps if line.rstrip().endswith("[heap]"))
    host_threads = len(os.listdir(f"/proc/{w.child_host}/task"))
    pipe_inode = next(os.readlink(f"/proc/{w.child_host}/fd/{fd}") for fd in
                      os.listdir(f"/proc/{w.child_host}/fd")
                      if os.readlink(f"/proc/{w.child_host}/fd/{fd}").startswith("pipe:"))
    w.ns.kill()

    from ckptrace.tui.app import InspectApp
    from ckptrace.tui.inspect import load

    st = load(path)
    mark_addr = w.base + MARK_PAGE * PAGE_SIZE + MARK_OFF
    row = [i for i, (_, t) in enumerate(st.tree_rows) if t.tid == w.child_nspid]
    assert row, f"child {w.child_nspid} not in the tree {[t.tid for _, t in st.tree_rows]}"

    async def drive():
        app = InspectApp(st, name=path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            first = screen_text(app)
            assert "VMAs" in first and "q Quit" in first  # tabs and footer fit 80x24
            assert f"{os.uname().release[:20]}" in first.splitlines()[0]
            await pilot.press("i")
            await pilot.pause()
            text = screen_text(app)
            assert f"kernel     {os.uname().release}" in text and f"machine    {os.uname().machine}" in text
            taken = time.strptime(next(ln for ln in text.splitlines() if "taken" in ln).split("taken")[1].strip()[:19],
                                  "%Y-%m-%d %H:%M:%S")
            assert abs(calendar.timegm(taken) - dumped_at) < 30
            await pilot.press("v")
            # Move to the child process: its VMA list replaces pid 1's.
            await pilot.press(*["down"] * row[0])
            await pilot.pause()
            assert st.pid == w.child_nspid
            # The heap right after the executable's mappings, named as /proc names it (and not
            # swallowed as markup).
            assert "[heap]" in screen_text(app)
            heap = next(r for r in st.vma_rows() if r[4] == "[heap]")
            assert heap_line.split()[0] == heap[0]
            vmas = st.mm.vmas
            idx = next(i for i, v in enumerate(vmas) if v.start <= w.base < v.end)
            v = vmas[idx]
            assert (v.start, v.end) in host_maps  # the image's VMA is what /proc showed
            # Threads tab lists both threads.
            await pilot.press("t")
            await pilot.pause()
            text = screen_text(app)
            assert sum(1 for t in st.img.threads_of(w.child_nspid)) == host_threads == 2
            for tid, *_ in st.thread_rows():
                assert tid in text
            assert sorted(r[2] for r in st.thread_rows()) == sorted(BLOCKING_SYSCALLS[n] for n in host_calls)
            assert "clock_nanosleep" in text
            # FDs tab: the pipe to pid 1 with its inode.
            await pilot.press("f")
            await pilot.pause()
            assert pipe_inode in screen_text(app)
            # Back to VMAs, Enter on the process focuses the table, open the region's VMA.
            await pilot.press("v", "enter")
            await pilot.pause()
            await pilot.press(*["down"] * idx, "enter")
            await pilot.pause()
            text = screen_text(app)
            assert text.splitlines()[0].startswith(f"{v.start:x}-{v.end:x} rw-p · 16/16 pages in image · anon")
            first_line = text.splitlines()[1]
            assert first_line.startswith(f"{v.start:012x}")
            # Jump to the marker: the first line is its row, bytes and ASCII show it.
            await pilot.press("g")
            await pilot.pause()
            await pilot.press(*f"{mark_addr:x}", "enter")
            await pilot.pause()
            lines = screen_text(app).splitlines()
            assert lines[1].startswith(f"{mark_addr & ~15:012x}  ")
            assert "43 4b 50 54" in lines[1] and "CKPTRACE-MARK" in lines[1] + lines[2]
            assert f"at {mark_addr:#x}" in screen_text(app)
            # Page 1 of the region holds 0x41 bytes: page down from its start shows them.
            await pilot.press("g")
            await pilot.pause()
            await pilot.press(*f"{w.base + PAGE_SIZE:x}", "enter")
            await pilot.pause()
            lines = screen_text(app).splitlines()
            assert lines[1].rstrip() == format_row(w.base + PAGE_SIZE, b"\x41" * 16)
            await pilot.press("pagedown")
            await pilot.pause()
            lines = screen_text(app).splitlines()
            assert lines[1].startswith(f"{w.base + PAGE_SIZE + st.rows * 16:012x}  41 41")
            # Search for the marker string from here: wraps around to it.
            await pilot.press("slash")
            await pilot.pause()
            await pilot.press(*"CKPTRACE-MARKER", "enter")
            await pilot.pause()
            assert f"found at {mark_addr:#x}" in screen_text(app)
            # ] and [ walk to the next and back to the previous VMA.
            here = st.vma_index
            await pilot.press("right_square_bracket")
            await pilot.pause()
            nxt = st.mm.vmas[here + 1]
            assert screen_text(app).splitlines()[0].startswith(f"{nxt.start:x}-{nxt.end:x}")
            await pilot.press("left_square_bracket")
            await pilot.pause()
            assert screen_text(app).splitlines()[1].startswith(f"{st.mm.vmas[here].start:012x}")
            await pilot.press("escape")
            await pilot.pause()
            await pilot.press("q")
            await pilot.pause()
        assert app.return_code in (0, None)

    try:
        asyncio.run(drive())
    finally:
        st.f.close()


class CountingFile:
    """Delegates to a real file, counting the bytes read through it."""

    def __init__(self, f):
        self.f = f
        self.total = 0

    def read(self, n=-1):
        b = self.f.read(n)
        self.total += len(b)
        return b

    def seek(self, *a):
        return self.f.seek(*a)

    def fileno(self):
        return self.f.fileno()


@pytest.mark.kernel
def test_open_reads_only_the_index(pidns, tmp_path):
    """Opening reads record headers and fixed parts, never page data; pages come one at a time."""
    w = Workload(pidns, tmp_path)
    path = w.dump(str(tmp_path / "ns.img"))
    w.ns.kill()
    with open(path, "rb") as raw:
        f = CountingFile(raw)
        img = read_image(f)
        assert img.page_count > PAGES
        assert f.total <= os.path.getsize(path) - img.page_count * PAGE_SIZE
        st = InspectState(img, f)
        before = f.total
        st.select(w.child_nspid)
        st.goto(w.base)
        st.rows = 20
        assert st.hex_lines()[0] == format_row(w.base, b"\x40" * 16)
        assert f.total - before == PAGE_SIZE
        # The shared segment's pages are stored once, after the first VMA naming it (pid 1's);
        # the child's VMA of it shows them too, at its own address.
        for pid in (1, w.child_nspid):
            st.select(pid)
            v = st.vma_at(w.shared)
            assert v is not None and v.fields["vma_type"] == 4  # SHARED_ANON
            st.goto(w.shared + PAGE_SIZE)
            assert st.hex_lines()[0] == format_row(w.shared + PAGE_SIZE, SHARED_MARK[:16]), pid
            assert st.stored_pages(v) >= 1
    # show counts them so too, for both processes (it said 0 for the child's VMA of it)
    doc = json.loads(subprocess.run([sys.executable, "-m", "ckptrace", "show", "--json", path],
                                    capture_output=True, text=True, check=True, timeout=60).stdout)
    counts = {p["pid"]: next(v["pages"] for v in p["vmas"] if v["start"] <= w.shared < v["end"])
              for p in doc["procs"] if p["pid"] in (1, w.child_nspid)}
    assert counts[1] == counts[w.child_nspid] == st.stored_pages(v) >= 1


SOCKETS = """
import json, socket, sys, time
a, b = socket.socketpair()
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen()
c = socket.create_connection(l.getsockname())
s, _ = l.accept()
u = socket.socket(socket.AF_UNIX)
u.bind(sys.argv[1] + ".sock")
u.listen()
doc = dict(a=a.fileno(), b=b.fileno(), l=l.fileno(), c=c.fileno(), s=s.fileno(), u=u.fileno(),
           port=l.getsockname()[1], cport=c.getsockname()[1])
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump(doc, f)
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(3600)
"""


@pytest.mark.kernel
def test_fd_pane_names_socket_peers(pidns, tmp_path):
    import json

    script = tmp_path / "sockets.py"
    script.write_text(SOCKETS)
    ready = str(tmp_path / "ready")
    ns = pidns(["python3", str(script), ready], ready_file=ready)
    fds = json.load(open(ready))
    path = str(tmp_path / "s.img")
    r = subprocess.run([sys.executable, "-m", "ckptrace", "dump", "--pidns", str(ns.ns), "-o", path, "--quiet"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ns.kill()
    from ckptrace.tui.inspect import load

    st = load(path)
    rows = {int(r[0]): r for r in st.fd_rows()}
    st.f.close()
    assert rows[fds["a"]][1:3] == ("UNIX_SOCKET", f"socket ↔ 1:{fds['b']}")
    assert rows[fds["b"]][2] == f"socket ↔ 1:{fds['a']}"
    assert rows[fds["l"]][1:3] == ("INET_SOCKET", f"127.0.0.1:{fds['port']} (listening)")
    assert rows[fds["c"]][2] == f"127.0.0.1:{fds['cport']} → 127.0.0.1:{fds['port']}"
    assert rows[fds["s"]][2] == f"127.0.0.1:{fds['port']} → 127.0.0.1:{fds['cport']}"
    assert rows[fds["u"]][2] == f"{ready}.sock (listening)"


def test_a_time_no_date_fits_is_shown_as_the_number(tmp_path):
    import struct

    data = bytearray(imagegen.build())
    struct.pack_into("<Q", data, 40, 2**64 - 1)  # HEADER.time
    st = InspectState(read_image(io.BytesIO(bytes(data))), io.BytesIO(bytes(data)))
    assert "18446744073709551615 s since the epoch" in st.header_line()
    assert "18446744073709551615 s since the epoch" in st.image_text()
    img = tmp_path / "t.img"
    img.write_bytes(bytes(data))
    status, out = run_in_pty([os.path.join(os.path.dirname(sys.executable), "ckptrace"), "inspect", str(img)])
    assert status == 0 and b"Traceback" not in out, out[-2000:]


def test_a_crash_inside_the_app_is_one_line_and_a_failure(tmp_path):
    """An exception in the app (here: its header) ends inspect with status 1 and one line, not
    textual's traceback (whose local variables would show page data) and status 0."""
    img = tmp_path / "s.img"
    img.write_bytes(imagegen.build())
    code = ("import sys; from ckptrace import cli; from ckptrace.tui.state import InspectState\n"
            "def boom(self): raise RuntimeError('boom\\nsecond line')\n"
            "InspectState.header_line = boom\n"
            f"sys.exit(cli.main(['inspect', {str(img)!r}]))")
    status, out = run_in_pty([sys.executable, "-c", code])
    text = out.decode(errors="replace")
    assert status == 1, text[-2000:]
    assert "ckptrace inspect: the viewer failed: RuntimeError: boom" in text
    assert "Traceback" not in text and "second line" not in text


def feed(w: int, head: bytes, junk: int) -> list[int]:
    """Write head then `junk` zero bytes to fd w from a thread until the reader goes away; the
    returned list gets how many bytes went in once the thread is joined."""
    import threading

    sent = [0]

    def run():
        try:
            for chunk in [head] + [bytes(1 << 16)] * (junk >> 16):
                os.write(w, chunk)
                sent[0] += len(chunk)
        except (BrokenPipeError, OSError):
            pass
        finally:
            os.close(w)

    t = threading.Thread(target=run)
    t.start()
    return sent, t


JUNK = 64 << 20  # what the old spool copied whole before checking anything


@pytest.mark.parametrize("head", [b"", "image"])
def test_spool_checks_the_stream_while_it_copies(head):
    """Zeros (a /dev/zero) fail at record 0; an image followed by zeros (cat x /dev/zero) fails
    right after TAIL: neither is copied beyond the first bad record."""
    from ckptrace.errors import ImageError

    image = imagegen.build() if head == "image" else b""
    r, w = os.pipe()
    sent, t = feed(w, image, JUNK)
    with os.fdopen(r, "rb") as src:
        with pytest.raises(ImageError) as err:
            source.spool(src)
    t.join()
    if image:
        assert "data after TAIL" in str(err.value) and err.value.offset == len(image)
    else:
        assert "unknown record type 0" in str(err.value) and (err.value.index, err.value.offset) == (0, 0)
    assert sent[0] < len(image) + (4 << 20), sent[0]


def test_inspect_and_diff_stop_at_once_on_a_non_image(tmp_path):
    img = tmp_path / "s.img"
    img.write_bytes(imagegen.build())
    exe = os.path.join(os.path.dirname(sys.executable), "ckptrace")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    # cat s.img /dev/zero | ckptrace inspect -, on a terminal (without one it refuses unread)
    import fcntl
    import pty
    import termios

    def own_terminal():  # the pty becomes the controlling terminal: /dev/tty for the keys
        os.setsid()
        fcntl.ioctl(1, termios.TIOCSCTTY, 0)

    master, slave = pty.openpty()
    r, w = os.pipe()
    p = subprocess.Popen([exe, "inspect", "-"], stdin=r, stdout=slave, stderr=subprocess.PIPE, env=env,
                         preexec_fn=own_terminal)
    os.close(r)
    os.close(slave)
    sent, t = feed(w, img.read_bytes(), JUNK)
    out, err = p.communicate(timeout=60)
    t.join()
    os.close(master)
    err = err.decode().strip()
    assert p.returncode == 1 and len(err.splitlines()) == 1 and "data after TAIL" in err, err
    assert sent[0] < img.stat().st_size + (4 << 20), sent[0]
    # ckptrace diff s.img FIFO-of-zeros (as /dev/zero, but finite should the check regress)
    fifo = tmp_path / "zero"
    os.mkfifo(fifo)
    p = subprocess.Popen([exe, "diff", str(img), str(fifo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    sent, t = feed(os.open(fifo, os.O_WRONLY), b"", JUNK)
    out, err = p.communicate(timeout=60)
    t.join()
    err = err.decode().strip()
    assert p.returncode == 1 and len(err.splitlines()) == 1, err
    assert "unknown record type 0" in err and f"(in B, {fifo})" in err and "record 0, offset 0" in err, err
    assert sent[0] < 4 << 20, sent[0]


@pytest.mark.parametrize("cmd", [["show", "-"], ["decode", "-"], ["inspect", "-"], ["diff", "-", "/dev/null"]])
def test_an_image_from_a_terminal_is_refused_not_waited_for(cmd):
    """`-` with standard input on a terminal: one line and status 2 at once (it used to wait for
    an image to be typed in, for ever)."""
    exe = os.path.join(os.path.dirname(sys.executable), "ckptrace")
    t0 = time.monotonic()
    status, out = run_in_pty([exe, *cmd])
    assert time.monotonic() - t0 < 15 and status == 2, out[-500:]
    assert b"standard input is a terminal" in out and b"Traceback" not in out


@pytest.mark.parametrize("extra_task, words", [(False, "1 process, 1 task"), (True, "2 processes, 3 tasks")])
def test_the_header_counts_in_words_that_agree(extra_task, words):
    data = imagegen.build(extra_task=extra_task)
    st = InspectState(read_image(io.BytesIO(data)), io.BytesIO(data))
    assert words in st.header_line()


def test_ctrl_c_quits():
    import asyncio

    from ckptrace.tui.app import InspectApp

    data = imagegen.build()
    st = InspectState(read_image(io.BytesIO(data)), io.BytesIO(data))

    async def drive():
        app = InspectApp(st)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("ctrl+c")
            await pilot.pause()
            return app.is_running

    assert asyncio.run(drive()) is False  # gone at once, not when the pilot lets go


def test_the_terminal_gets_no_escape_sequence_from_the_image(tmp_path):
    """A comm and a file name holding escape sequences (clear screen, set title) reach the
    terminal escaped, as show prints them, not as sequences it would obey."""
    comm = b"\x1b]2;PWN\x07\x1b[2J".ljust(16, b"\0")
    img = tmp_path / "esc.img"
    img.write_bytes(imagegen.build().replace(b"sample".ljust(16, b"\0"), comm)
                    .replace(b"/tmp/log.txt", b"/\x1b[31mred.tx"))
    exe = os.path.join(os.path.dirname(sys.executable), "ckptrace")
    status, out = run_in_pty([exe, "inspect", str(img)])
    assert status == 0, out[-2000:]
    assert b"\x1b]2;PWN" not in out and b"\x1b[2J" not in out and b"\x1b[31mred" not in out
    assert b"\\x1b]2;PWN" in out


def test_a_fork_chain_deeper_than_pythons_stack_is_shown(tmp_path):
    """A chain of 1500 processes, each the child of the one before, is a valid image: show and
    inspect's tree walk it (they used to recurse, and die with a RecursionError traceback)."""
    from ckptrace.tui.state import process_tree

    data = imagegen.build(chain=1500, pages=1)
    img = read_image(io.BytesIO(data))
    rows = process_tree(img)
    assert [d for d, _ in rows] == list(range(1501)) and [t.tid for _, t in rows] == list(range(1, 1502))
    path = tmp_path / "chain.img"
    path.write_bytes(data)
    p = subprocess.run([sys.executable, "-m", "ckptrace", "show", str(path)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-500:]
    assert f"  {'  ' * 1500}1501 sample" in p.stdout


def test_a_newline_in_a_comm_does_not_split_a_row():
    """A comm holding a newline (prctl PR_SET_NAME takes any byte) made two rows of one process in
    the tree, and the thread table and register pane split it too: it is shown escaped, \\n, as
    show prints it."""
    from textual.widgets import DataTable, OptionList

    from ckptrace.tui.app import InspectApp

    data = imagegen.build().replace(b"sample".ljust(16, b"\0"), b"two\nlines\r\x07".ljust(16, b"\0"))
    f = io.BytesIO(data)
    st = InspectState(read_image(f), f)
    assert "thread 1 (two\\nlines\\r\\x07)" in st.registers(1)

    async def drive():
        app = InspectApp(st)
        async with app.run_test(size=(100, 24)) as pilot:
            await pilot.pause()
            procs = app.query_one("#procs", OptionList)
            prompts = [procs.get_option_at_index(i).prompt.plain for i in range(procs.option_count)]
            assert prompts == ["1 two\\nlines\\r\\x07", "  3 two\\nlines\\r\\x07"]
            threads = app.query_one("#thread-table", DataTable)
            assert [str(threads.get_row_at(i)[1]) for i in range(threads.row_count)] == ["two\\nlines\\r\\x07"] * 2
            text = screen_text(app)
            assert "two\\nlines" in text  # escaped on screen (the narrow tree pane cuts the rest)

    asyncio.run(drive())


def _with_pipe_ends(n: int) -> bytes:
    """The synthetic image with n more ends of pipe 1234 in pid 1's table (fds 10, 11, ...),
    each a FILE object of its own (as after a fork whose child dup'd it into a new table)."""
    from ckptrace.image.records import RECORDS, FileType, ObjType, RecType
    from ckptrace.image.stream import RecordReader

    data = imagegen.build()
    r = RecordReader(io.BytesIO(data))
    recs = []
    while (rec := r.next()) is not None:
        recs.append(rec)
    table = next(x for x in recs if x.type == RecType.FILE_TABLE)
    last = next(x for x in recs if x.type == RecType.FILE_DESC and x.fields["fd_descriptor"] == 7)
    R = RECORDS
    ends = b"".join(R[RecType.OBJREF].encode(dict(objtype=ObjType.FILE, objref=100 + i))
                    + R[RecType.FILE].encode(dict(f_type=FileType.PIPE, f_mode=2, f_flags=1))
                    + R[RecType.FILE_PIPE].encode(dict(pipe_id=1234, pipe_size=65536))
                    + R[RecType.FILE_DESC].encode(dict(fd_objref=100 + i, fd_descriptor=10 + i)) for i in range(n))
    new_table = R[RecType.FILE_TABLE].encode(dict(fdt_nfds=table.fields["fdt_nfds"] + n))
    end = last.offset + last.length
    return (data[:table.offset] + new_table + data[table.offset + table.length:end] + ends + data[end:])


@pytest.mark.parametrize("n, peers", [  # pid 3 shares pid 1's table: each end is in both
    (1, "1:10, 3:10"),
    (2, "1:10, 1:11, 3:10 … +1 more"),
    (5, "1:10, 1:11, 1:12 … +7 more"),
])
def test_fd_pane_says_how_many_pipe_ends_it_does_not_name(n, peers):
    """The FDs tab named the first three other ends of a pipe and dropped the rest without a
    word, so a pipe with five readers looked like one with three."""
    data = _with_pipe_ends(n)
    f = io.BytesIO(data)
    st = InspectState(read_image(f), f)
    rows = {r[0]: r for r in st.fd_rows()}
    assert rows["7"][2] == f"pipe:[1234] ↔ {peers}"


def test_a_zombie_is_in_the_tree_and_says_what_it_is():
    """show lists a zombie (exited, not reaped) and the header counts it; the tree left it out, so
    inspect had no way to see it or its exit status. It is there, marked, and its panes say what
    is left of it instead of failing on the memory, files and registers it does not have (its
    VMAs and FDs tabs were empty without a word: they say it is a zombie)."""
    from textual.widgets import DataTable, OptionList, Static

    from ckptrace.tui.app import InspectApp

    data = imagegen.build(extra_task=False, chain=1, zombie=dict(pid=3, tgid=3, exit_code=3 << 8))
    f = io.BytesIO(data)
    st = InspectState(read_image(f), f)
    assert [(d, t.tid) for d, t in st.tree_rows] == [(0, 1), (1, 2), (1, 3)]
    st.select(3)
    assert st.vma_rows() == [] and st.fd_rows() == []
    assert st.thread_rows() == [("3", "gone", "exited (zombie)", "-", "-")]
    assert "is a zombie: exited with status 3" in st.registers(3) and st.signals_text() == st.registers(3)
    assert st.creds_text().startswith("uid  1000 ")
    with pytest.raises(LookupError):
        st.goto(0x400000)
    assert st.search(b"x") is None

    async def drive():
        app = InspectApp(st)
        async with app.run_test(size=(100, 24)) as pilot:
            await pilot.pause()
            procs = app.query_one("#procs", OptionList)
            assert [procs.get_option_at_index(i).prompt.plain for i in range(procs.option_count)] == \
                ["1 sample", "  2 sample", "  3 gone <defunct>"]
            await pilot.press("down", "down")
            await pilot.pause()
            assert app.state.pid == 3
            assert app.query_one("#vma-table", DataTable).row_count == 0
            assert "exited with status 3" in str(app.query_one("#regs", Static).render())
            # The VMAs and FDs tabs, empty, say why in one line.
            note = "process 3 is a zombie (exited with status 3): it has no {} left to show"
            assert note.format("memory") in screen_text(app)
            await pilot.press("f")
            await pilot.pause()
            assert note.format("open files") in screen_text(app)
            await pilot.press("up", "v")  # a live process: no note
            await pilot.pause()
            assert "it has no" not in screen_text(app) and app.query_one("#vma-table", DataTable).row_count
            await pilot.press("down")
            await pilot.pause()
            await pilot.press("t", "s", "c", "v", "/", "x", "enter")
            await pilot.pause()
            assert app.is_running and app.failure is None

    asyncio.run(drive())


def test_home_and_end_in_a_table_move_its_cursor():
    """End in the VMA table scrolled sideways and left the cursor where it was, so Enter then
    opened a VMA other than the last one the user had gone to. Home, End, PgUp and PgDn move the
    cursor, and Enter opens the VMA under it."""
    from textual.widgets import DataTable

    from ckptrace.tui.app import InspectApp

    data = imagegen.build(extra_vmas=40)
    f = io.BytesIO(data)
    st = InspectState(read_image(f), f)
    vmas = st.mm.vmas
    assert len(vmas) == 42  # more than a screenful

    async def drive():
        app = InspectApp(st)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("enter")  # on the process: to its VMA table
            await pilot.pause()
            table = app.query_one("#vma-table", DataTable)
            assert app.focused is table
            await pilot.press("end")
            await pilot.pause()
            assert table.cursor_row == len(vmas) - 1
            assert f"{vmas[-1].start:x}-{vmas[-1].end:x}" in screen_text(app)
            await pilot.press("enter")
            await pilot.pause()
            assert st.vma is vmas[-1]
            assert screen_text(app).splitlines()[0].startswith(f"{vmas[-1].start:x}-{vmas[-1].end:x}")
            await pilot.press("escape", "home")
            await pilot.pause()
            assert table.cursor_row == 0
            await pilot.press("pagedown")
            await pilot.pause()
            below = table.cursor_row
            assert below > 0 and f"{vmas[below].start:x}-" in screen_text(app)
            await pilot.press("enter")
            await pilot.pause()
            assert st.vma is vmas[below]

    asyncio.run(drive())


def focus_stops(app) -> list[str]:
    """The ids (or class names) of the widgets Tab stops on, in order."""
    return [w.id or type(w).__name__ for w in app.screen.focus_chain]


@pytest.mark.parametrize("height, registers_fit", [(24, True), (14, False)])
def test_the_threads_tab_has_no_focus_stop_that_does_nothing(height, registers_fit):
    """On the Threads tab Tab stopped first on a scrolled pane around the thread table and the
    registers, where up/down chose no thread. Tab goes from the tabs to the thread table; the
    registers are a stop of their own only when they do not fit, to scroll them."""
    from ckptrace.tui.app import InspectApp

    data = imagegen.build()
    f = io.BytesIO(data)
    st = InspectState(read_image(f), f)

    async def drive():
        app = InspectApp(st)
        async with app.run_test(size=(80, height)) as pilot:
            await pilot.press("t")
            await pilot.pause()
            stops = focus_stops(app)
            assert stops == ["procs", "ContentTabs", "thread-table"] + ([] if registers_fit else ["regs-pane"])
            await pilot.press("tab", "tab")  # from the tree, past the tabs
            await pilot.pause()
            assert app.focused.id == "thread-table"
            await pilot.press("down")
            await pilot.pause()
            assert "thread 2 (sample)" in screen_text(app)
            if not registers_fit:
                pane = app.query_one("#regs-pane")
                await pilot.press("tab", "end")
                await pilot.pause()
                assert app.focused is pane and pane.scroll_y == pane.max_scroll_y > 0

    asyncio.run(drive())


def hex_status(app) -> str:
    from textual.widgets import Static

    return str(app.screen.query_one("#hex-status", Static).render()).strip()


def test_the_hex_status_line_follows_the_screen():
    """The line under the hex bytes kept saying where the last jump went after the screen had
    moved on. It says where the screen is, and the jump's or search's words only until it moves."""
    from ckptrace.tui.app import InspectApp

    data = imagegen.build()
    f = io.BytesIO(data)
    st = InspectState(read_image(f), f)

    async def drive():
        app = InspectApp(st)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("enter", "down", "enter")  # the heap, 0x600000-0x621000: 33 pages
            await pilot.pause()
            span = st.rows * 16
            assert hex_status(app) == f"0x600000-{0x600000 + span - 1:#x} · page 1/33"
            await pilot.press("g", *"601010", "enter")
            await pilot.pause()
            assert hex_status(app) == f"0x601010-{0x601010 + span - 1:#x} · page 2/33 · at 0x601010"
            await pilot.press("pagedown")
            await pilot.pause()
            top = 0x601010 + span
            assert hex_status(app) == f"{top:#x}-{top + span - 1:#x} · page 2/33"
            await pilot.press("end")
            await pilot.pause()
            assert hex_status(app) == f"{0x621000 - span:#x}-0x620fff · page 33/33"
            await pilot.press("slash", *"x:ab ab", "enter")  # page 0x610000 is all 0xab
            await pilot.pause()
            assert hex_status(app) == f"0x610000-{0x610000 + span - 1:#x} · page 17/33 · found at 0x610000"
            await pilot.press("k")
            await pilot.pause()
            assert hex_status(app) == f"0x60fff0-{0x60fff0 + span - 1:#x} · page 16/33"

    asyncio.run(drive())


def test_past_the_last_vma_the_hex_screen_says_so():
    """] on the last VMA (and [ on the first) went back to the start of the same VMA without a
    word. The screen stays where it is, rings the bell and says there is no next VMA."""
    from ckptrace.tui.app import InspectApp

    data = imagegen.build()
    f = io.BytesIO(data)
    st = InspectState(read_image(f), f)
    last = st.mm.vmas[-1]

    async def drive():
        app = InspectApp(st)
        bells = []
        app.bell = lambda: bells.append(1)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("enter", "end", "enter", "end")  # the last VMA, at its end
            await pilot.pause()
            assert st.vma is last
            top = st.top
            await pilot.press("right_square_bracket")
            await pilot.pause()
            assert st.vma is last and st.top == top and bells == [1]
            assert hex_status(app).endswith("· no next VMA: this is the last of process 1")
            await pilot.press("home", *["left_square_bracket"] * len(st.mm.vmas))
            await pilot.pause()
            assert st.vma is st.mm.vmas[0] and bells == [1, 1]
            assert hex_status(app).endswith("· no previous VMA: this is the first of process 1")

    asyncio.run(drive())


def test_keys_text_lists_bindings_one_action_a_line():
    from textual.binding import Binding

    from ckptrace.tui.app import keys_text

    text = keys_text([Binding("pagedown,space", "page(1)", "PgDn", tooltip="Next screenful"),
                      Binding("q", "quit", "Quit"), Binding("ctrl+c", "quit", "Quit", show=False)],
                     lambda b: b.key)
    assert text.splitlines() == ["pagedown space  Next screenful", "      q ctrl+c  Quit"]


def test_question_mark_shows_the_keys_of_the_screen():
    """There was no way to see the keys but the footer, which has room for four. `?` lists the
    bindings of the screen shown, as its BINDINGS have them; Esc closes the list. In the find
    prompt, ? is a character to search for."""
    from textual.binding import Binding

    from ckptrace.tui.app import HexScreen, InspectApp, KeysHelp

    data = imagegen.build()
    f = io.BytesIO(data)
    st = InspectState(read_image(f), f)

    def described(bindings):
        return [b.tooltip or b.description for b in Binding.make_bindings(bindings)]

    async def drive():
        app = InspectApp(st)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, KeysHelp)
            text = screen_text(app)
            for what in described(InspectApp.BINDINGS):
                assert what in text
            assert "i  Image tab" in text and "end  Last row (in a table)" in text
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, KeysHelp)
            await pilot.press("enter", "enter")
            await pilot.pause()
            assert isinstance(app.screen, HexScreen)
            await pilot.press("question_mark")
            await pilot.pause()
            text = screen_text(app)
            for what in described(HexScreen.BINDINGS):
                assert what in text
            assert "]  Next VMA of the process" in text
            await pilot.press("question_mark")  # ? again closes it too
            await pilot.pause()
            assert isinstance(app.screen, HexScreen)
            await pilot.press("slash", "question_mark", "enter")
            await pilot.pause()
            assert st.needle == b"?" and isinstance(app.screen, HexScreen)

    asyncio.run(drive())


@pytest.mark.parametrize("chain, comm", [(0, b"a-very-long-name"), (12, b"sample")])
def test_a_long_tree_row_is_cut_not_wrapped(chain, comm):
    """A task whose name or depth made its row wider than the tree pane was wrapped onto a second
    row, which read as another process. Each task keeps one row, cut with an ellipsis."""
    from ckptrace.tui.app import InspectApp

    data = imagegen.build(chain=chain, comm=comm)
    f = io.BytesIO(data)
    st = InspectState(read_image(f), f)
    labels = [st.tree_label(d, t) for d, t in st.tree_rows]
    room = 15  # the pane's 18 columns, less its border and padding
    assert max(map(len, labels)) > room

    async def drive():
        app = InspectApp(st)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            lines = screen_text(app).splitlines()[1:1 + min(len(labels), 20)]
            tree = [line.split("│")[0].rstrip() for line in lines]
            for label, row in zip(labels, tree):
                if len(label) > room:
                    assert row.endswith("…") and len(row) == 1 + room and label.startswith(row[1:-1]), (label, row)
                else:
                    assert row == " " + label

    asyncio.run(drive())


def test_open_flags_name_tmpfile_and_path_bits():
    """0o20000000 (__O_TMPFILE) was named O_PATH, so a file made with O_TMPFILE (Python's
    tempfile.TemporaryFile) showed `RDWR|DIRECTORY|NOFOLLOW|PATH`; O_PATH's own bit had no name."""
    import os as _os

    from ckptrace.image.render import open_flags_text

    assert open_flags_text(_os.O_TMPFILE | _os.O_RDWR | _os.O_NOFOLLOW) == "O_RDWR|O_NOFOLLOW|O_TMPFILE"
    assert open_flags_text(_os.O_PATH | _os.O_DIRECTORY) == "O_RDONLY|O_DIRECTORY|O_PATH"
    assert open_flags_text(0o20000000) == "O_RDONLY|__O_TMPFILE"


def test_the_fds_table_fits_80_columns():
    """At 80x24 the FDs tab cut the flags (`WRONLY|APPEND|LARG`) and left the offset off screen,
    behind a long path. LARGEFILE (on every 64-bit open) is left out, the path / peer column takes
    what the others leave and cuts a long path with an ellipsis, and the whole path is on the
    status line while its row is under the cursor."""
    from textual.widgets import DataTable, Static

    from ckptrace.tui.app import InspectApp

    long_path = "/var/lib/some-service/with/a/deep/tree/of/directories/and/a/long-file-name.log"
    data = imagegen.build(log_path=long_path)
    f = io.BytesIO(data)
    st = InspectState(read_image(f), f)
    st.img.obj(2).fields["f_flags"] |= 0o100000  # O_LARGEFILE, as the kernel sets it
    assert st.fd_rows()[1][3] == "RDWR|APPEND|CLOEXEC"

    async def drive():
        app = InspectApp(st)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("f")
            await pilot.pause()
            table = app.query_one("#fd-table", DataTable)
            lines = screen_text(app).splitlines()
            head = next(line for line in lines if " fd " in line)
            assert head.rstrip().endswith("offset") and len(head) <= 80
            row = next(line for line in lines if "RDWR|APPEND|CLOEXEC" in line)
            assert row.split()[-1] == "42"  # the offset, on screen
            assert "/var/lib/some-" in row and "…" in row and long_path not in row
            assert table.max_scroll_x == 0  # nothing to scroll sideways to
            await pilot.press("tab", "tab")  # the tabs, then the table
            await pilot.pause()
            assert app.focused is table
            status = app.query_one("#status", Static)
            assert str(status.render()) == long_path  # row 0: fd 0, the cut path
            await pilot.press("down", "down")  # fd 7, the pipe: not cut
            await pilot.pause()
            assert str(status.render()) == ""

    asyncio.run(drive())


def test_show_says_a_group_or_session_outside_the_namespace_in_words():
    """show's tree printed `(pgid 0, sid 0)` for a process whose group and session leaders are
    outside the namespace (one started by unshare), a 0 that read as a pid. The text says it in
    words; --json keeps the numbers (docs/inspect.md says what 0 means there)."""
    from ckptrace.image.render import show_text, summary

    s = summary(read_image(io.BytesIO(imagegen.build())))
    by_pid = {p["pid"]: p for p in s["procs"]}
    by_pid[1].update(pgid=0, sid=0)
    by_pid[3].update(pgid=0)
    text = show_text(s)
    assert "  1 sample (group and session outside the namespace) threads [1, 2]" in text
    assert "    3 sample (pgid outside, sid 1)" in text
    assert "pgid 0" not in text and "sid 0" not in text
    assert (by_pid[1]["pgid"], by_pid[1]["sid"]) == (0, 0)  # the JSON document as it was


def test_show_gives_a_pipes_buffered_bytes():
    """The README's demo has "a pipe with bytes in it", but show said nothing of them and show
    --json gave `queued: null` for pipes. Every end of the pipe gives its bytes (the image stores
    them with one end), in the text and in `queued`, as for sockets."""
    import json

    from ckptrace.image.render import show_text, summary

    s = summary(read_image(io.BytesIO(_with_pipe_ends(1))))  # pipe 1234, 5 bytes, fds 7 and 10
    fds = {f["fd"]: f for f in s["procs"][0]["fds"]}
    assert fds[7]["queued"] == fds[10]["queued"] == dict(messages=0, bytes=5)
    assert fds[0]["queued"] is None  # a regular file
    lines = show_text(s).splitlines()
    assert sum(line.endswith("pipe:[1234]  (5 bytes buffered)") for line in lines) == 4  # pids 1 and 3
    json.dumps(s)


def test_a_shared_anonymous_segment_is_named_once():
    """show and inspect called a POSIX semaphore's memory "shared anon <shared anon #49>
    /dev/shm/sem.X (deleted)": its kind said twice."""
    from types import SimpleNamespace

    from ckptrace.image.reader import File
    from ckptrace.image.records import FileType, VmaType
    from ckptrace.image.render import vma_what

    seg = File(49, {"f_type": FileType.SHMEM}, "/dev/shm/sem.X (deleted)")
    img = SimpleNamespace(obj=lambda ref: seg if ref == 49 else None)
    mm = SimpleNamespace(fields={"start_stack": 0, "start_brk": 0, "brk": 0})
    v = SimpleNamespace(start=0x1000, end=0x2000, fields={"vma_objref": 49, "vma_type": VmaType.SHARED_ANON})
    assert vma_what(img, mm, v) == "<shared anon #49> /dev/shm/sem.X (deleted)"


# -- namespaces, and file contents the image carries ---------------------------------------------

CONTAINER_NS = (0x1 | 0x2,  # LO_DOWN, OWN_PROC
                b"box\0(none)\0eth0 10.0.0.2/24\0\0monotonic +5000 s, boottime +7000 s\0"
                b"1\0" b"0::/ctr-test\n\0" b"1 5000000000000 7000000000000\n1 5000000000000 7000000000000\n\0")
CONTAINER_OWN = 0x00020000 | 0x04000000 | 0x08000000 | 0x40000000 | 0x02000000 | 0x80  # mnt uts ipc net cgroup time


def test_show_says_which_namespaces_were_a_processs_own():
    """show said nothing of what TASK_NS holds: a container's own namespaces, host name, time
    offsets and cgroup namespace root. The text gives them on one line per process that has
    any; --json has them as a `namespaces` object (null for a process without TASK_NS)."""
    import json

    from ckptrace.image.render import show_text, summary

    s = summary(read_image(io.BytesIO(imagegen.build(ns=CONTAINER_NS, ns_own=CONTAINER_OWN, zombie={}))))
    lines = show_text(s).splitlines()
    assert ("  namespaces: own mnt uts ipc net cgroup time; its own /proc; lo down; host box; "
            "time monotonic +5000 s, boottime +7000 s; cgroup ns root 0::/ctr-test; "
            "net not made again: eth0 10.0.0.2/24") in lines
    assert "  namespaces: own mnt uts; host sample-host" in lines  # pid 3: the sample's TASK_NS
    ns = {p["pid"]: p["namespaces"] for p in s["procs"]}
    assert ns[1] == dict(own=["mnt", "uts", "ipc", "net", "cgroup", "time"], flags=["LO_DOWN", "OWN_PROC"],
                         nodename="box", domainname="(none)", net_missing="eth0 10.0.0.2/24", mnt_missing="",
                         time_offsets="monotonic +5000 s, boottime +7000 s",
                         time_ns=dict(current=dict(name=1, monotonic=5 * 10**12, boottime=7 * 10**12),
                                      children=dict(name=1, monotonic=5 * 10**12, boottime=7 * 10**12)),
                         cgroup_ns=1, cgroup_ns_roots=[dict(hierarchy=0, controllers="", path="/ctr-test")])
    assert ns[3]["own"] == ["mnt", "uts"] and ns[3]["cgroup_ns"] is None and ns[3]["time_ns"] is None
    json.dumps(s)


def test_a_cgroup_namespace_is_said_with_its_roots_and_first_process():
    """A cgroup v1 host has a root per hierarchy: the one most share, then the others; a
    process in another's cgroup namespace says whose."""
    from ckptrace.image.render import cgroup_ns_text

    roots = [dict(hierarchy=h, controllers=c, path=p) for h, c, p in
             ((4, "memory", "/ctr"), (3, "cpuset", "/"), (0, "", "/"), (1, "pids", ""))]
    assert cgroup_ns_text(1, dict(cgroup_ns=1, cgroup_ns_roots=roots)) == "cgroup ns root / (4:memory:/ctr, 1:pids:?)"
    assert cgroup_ns_text(5, dict(cgroup_ns=1, cgroup_ns_roots=roots[2:3])) == "cgroup ns of pid 1, root 0::/"
    assert cgroup_ns_text(5, dict(cgroup_ns=0, cgroup_ns_roots=[])) == "cgroup ns root not recorded"


def test_the_creds_tab_gives_cgroups_and_namespaces():
    """inspect's Creds tab showed cwd and root but neither the process's cgroups nor its
    namespaces: it lists both, a namespace fact a line."""
    from textual.widgets import Static

    from ckptrace.tui.app import InspectApp

    data = imagegen.build(ns=CONTAINER_NS, ns_own=CONTAINER_OWN)
    f = io.BytesIO(data)
    st = InspectState(read_image(f), f)

    async def drive():
        app = InspectApp(st)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("c")
            await pilot.pause()
            lines = str(app.query_one("#cred-text", Static).render()).splitlines()
            at = lines.index("cgroup 0::/")
            assert lines[at + 1:at + 8] == [
                "namespaces own mnt uts ipc net cgroup time", "           its own /proc", "           lo down",
                "           host box", "           time monotonic +5000 s, boottime +7000 s",
                "           cgroup ns root 0::/ctr-test", "           net not made again: eth0 10.0.0.2/24"]

    asyncio.run(drive())


def test_show_marks_shared_memory_whose_contents_the_image_carries():
    """A tmpfs file mapped MAP_SHARED looked like any file in show: `pages 0`, and its fd a plain
    REGULAR one, though the image carries its contents and restore writes them back. Its
    mappings (also one through an object that does not carry them) and fds say how much."""
    from ckptrace.image.render import show_text, summary

    s = summary(read_image(io.BytesIO(imagegen.build(shm=True))))
    carried = dict(bytes=PAGE_SIZE + 100, size=imagegen.SHM_SIZE)
    for p in s["procs"]:
        vma = next(v for v in p["vmas"] if v["start"] == imagegen.SHM_VMA)
        assert vma["pages"] == 0 and vma["file_data"] == carried
        assert next(f for f in p["fds"] if f["fd"] == 3)["file_data"] == carried
        assert next(f for f in p["fds"] if f["fd"] == 0)["file_data"] is None  # /tmp/log.txt
        assert all(v["file_data"] is None for v in p["vmas"] if v["start"] != imagegen.SHM_VMA)
    lines = show_text(s).splitlines()
    assert "    7e0000000000   7e0000004000   16.0 KiB rw-s SHARED_FILE       0  /dev/shm/sample  " \
           "(contents in image: 4.1 KiB of 8.1 KiB)" in lines
    assert "    7e0000000000   7e0000001000    4.0 KiB rw-s SHARED_FILE       0  /dev/shm/sample  " \
           "(contents in image: 4.1 KiB of 8.1 KiB)" in lines  # pid 3's
    assert lines.count("     3 REGULAR               0 no       /dev/shm/sample  (contents in image: 4.1 KiB of 8.1 KiB)") == 2


def test_the_hex_view_shows_shared_memory_the_image_carries(tmp_path):
    """inspect's hex view showed `--` for every byte of shared memory on tmpfs, which the docs
    say means the contents live in the file, though the image carries them (FILE_DATA) and
    restore writes them back. It shows them, by the VMA's file offset, holes as zeros, and `--`
    only past the file's end; the title and status line say where the bytes come from. Read
    from a file, whose FILE_DATA payloads the index leaves on disk, as `inspect FILE` does."""
    from textual.widgets import Static

    from ckptrace.tui.app import InspectApp
    from ckptrace.tui.inspect import load

    path = tmp_path / "shm.img"
    path.write_bytes(imagegen.build(shm=True))
    st = load(str(path))

    def body(app) -> list[str]:
        return str(app.screen.query_one("#hex-body", Static).render()).splitlines()

    async def drive():
        app = InspectApp(st)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("enter", "down", "down", "enter")  # pid 1's mapping of /dev/shm/sample
            await pilot.pause()
            assert st.vma.start == imagegen.SHM_VMA
            title = str(app.screen.query_one("#hex-title", Static).render())
            assert "· 0/4 pages + file contents in image · /dev/shm/sample" in title
            assert body(app)[0] == "7e0000000000  48 45 4c 4c 4f" + " 00" * 11 + "  HELLO..........."
            assert hex_status(app).endswith("· page 1/4 · file contents in image, offset 0x0")
            await pilot.press("g", *"7e0000001000", "enter")  # a hole of the file: zeros
            await pilot.pause()
            assert body(app)[0] == "7e0000001000  " + " ".join(["00"] * 16) + "  " + "." * 16
            assert hex_status(app).endswith("· at 0x7e0000001000 · file contents in image, offset 0x1000")
            await pilot.press("g", *"7e0000002060", "enter")  # the file's last bytes, then zeros
            await pilot.pause()
            assert body(app)[0] == "7e0000002060  " + " ".join(["01"] * 4 + ["00"] * 12) + "  " + "." * 16
            await pilot.press("g", *"7e0000003000", "enter")  # past the file's end: no contents
            await pilot.pause()
            assert body(app)[0] == "7e0000003000  " + " ".join(["--"] * 16) + " " * 18
            assert hex_status(app).endswith("· page 4/4 · at 0x7e0000003000 (page not in image)")

    asyncio.run(drive())
    st.f.close()

    # pid 3 maps file page 2 through an object of its own, which carries nothing: the contents
    # are the file's first object's (here with payloads the reader kept: a stream)
    data = imagegen.build(shm=True)
    f = io.BytesIO(data)
    st = InspectState(read_image(f), f)
    st.select(3)
    st.goto(imagegen.SHM_VMA)
    assert st.hex_lines()[0] == "7e0000000000  54 41 49 4c" + " 01" * 12 + "  TAIL" + "." * 12
    assert st.hex_status().endswith("· at 0x7e0000000000 · file contents in image, offset 0x2000")
    # and a search finds what the screen shows, in each process's mapping of it
    assert st.search(b"TAIL").addr == imagegen.SHM_VMA
    st.select(1)
    assert st.search(b"HELLO").addr == imagegen.SHM_VMA
    assert st.search(b"TAIL").addr == imagegen.SHM_VMA + 2 * PAGE_SIZE
    assert st.search(b"\x01\x01\x00\x00").addr == imagegen.SHM_VMA + 2 * PAGE_SIZE + 98
