"""Record-level I/O: a writer that streams to any fd and a reader that trusts nothing.

The writer never seeks and never holds a whole image: small records are gathered in a short
buffer, page data goes straight from the caller's buffer to the fd with writev.

The reader checks each record's type and length against its declaration before reading the
payload, reads payloads in bounded chunks (so a corrupt `len` on a pipe cannot make it allocate
more than the input actually holds), and can skip page data on seekable input.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..errors import ImageError, ImageReadError, KernelError, OutputClosed
from .records import HDR, HDR_SIZE, RECORDS, Payload, RecordType, RecType

_FLUSH_AT = 256 << 10
_CHUNK = 1 << 20


class ImageWriter:
    """Writes records to a file descriptor (file, pipe, socket). Counts bytes and records.

    `shadow`: a second fd (a regular file) that gets the same image with the data of large page
    records left as holes: a sparse copy that `read_image(skip_pages=True)` can index and check
    while the image itself went down a pipe (`dump --kill` asks whether restore could rebuild it)."""

    def __init__(self, fd: int, shadow: int | None = None):
        self.fd = fd
        self.shadow = shadow
        self.buf = bytearray()
        self.bytes_written = 0
        self.records = 0
        self.held = b""  # a record written to the shadow only, so far (`hold`)

    def record(self, t: RecType, values: dict[str, Any] | None = None, payload=b"") -> None:
        self.buf += RECORDS[t].encode(values, payload)
        self.records += 1
        if len(self.buf) >= _FLUSH_AT:
            self.flush()

    def raw_record(self, t: RecType, fixed: bytes, data) -> None:
        """A record whose large payload (page data) is written from the caller's buffer as is."""
        rt = RECORDS[t]
        head = rt.header(len(data)) + fixed
        self.records += 1
        if len(data) < 64 << 10:
            self.buf += head
            self.buf += data
            if len(self.buf) >= _FLUSH_AT:
                self.flush()
            return
        self.buf += head
        self._to_shadow(self.buf, hole=len(data))
        self._writev([self.buf, data])
        self.buf = bytearray()

    def hold(self, t: RecType, values: dict[str, Any] | None = None) -> None:
        """The last record (the TAIL), written to the shadow at once and to the image only by
        `write_held`. Until then a reader at the other end of a pipe has an incomplete image it
        cannot restore: `dump --kill` keeps it so until nothing can refuse the kill any more."""
        self.flush()
        self.held = RECORDS[t].encode(values, b"")
        self.records += 1
        self._to_shadow(self.held)

    def write_held(self) -> None:
        if self.held:
            self._writev([self.held])
            self.held = b""

    def flush(self) -> None:
        if self.buf:
            self._to_shadow(self.buf)
            self._writev([self.buf])
            self.buf = bytearray()

    def _to_shadow(self, data, hole: int = 0) -> None:
        if self.shadow is None:
            return
        try:
            _write_all(self.shadow, [data])
            if hole:
                os.lseek(self.shadow, hole, os.SEEK_CUR)
        except OSError as exc:
            raise KernelError("writing the image's index copy", exc.errno or 0) from None

    def _writev(self, parts) -> None:
        try:
            self.bytes_written += _write_all(self.fd, parts)
        except BrokenPipeError as exc:
            self.bytes_written += getattr(exc, "written", 0)
            # The reader went away (`| head -c 1000`): unlike a listing cut short, an image cut
            # short is a failed dump, said in one line (the dumper then releases, never kills).
            raise OutputClosed(f"the image's reader went away (broken pipe) with {self.bytes_written} bytes "
                               "written, before the image was complete") from None
        except OSError as exc:
            raise KernelError("writing the image", exc.errno or 0) from None


def _write_all(fd: int, parts) -> int:
    """writev every byte of `parts` to `fd` (pipes and sockets take partial writes); how many."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    total = 0
    while views:
        try:
            n = os.writev(fd, views)
        except OSError as exc:
            exc.written = total  # what got through before the failure
            raise
        total += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]
    return total


@dataclass
class Record:
    index: int
    offset: int
    rtype: RecordType
    length: int
    fields: dict[str, Any]
    payload: bytes | None  # None when skipped (payload_offset says where it lives)
    payload_offset: int

    @property
    def type(self) -> RecType:
        return self.rtype.type

    @property
    def payload_len(self) -> int:
        return max(0, self.length - self.rtype.size)  # (an older, shorter layout has none)


class RecordReader:
    """Iterates the records of an image; raises ImageError naming record index and offset."""

    def __init__(self, f: BinaryIO, *, skip_pages: bool = False):
        self.f = f
        self.offset = 0
        self.start = 0  # of the record being read
        self.index = 0
        self.size: int | None = None
        try:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode):
                self.size = st.st_size
        except (OSError, AttributeError, ValueError):
            pass
        self.skip_pages = skip_pages and self.size is not None

    def _read(self, n: int) -> bytes:
        try:
            return self.f.read(n)
        except OSError as exc:
            raise ImageReadError(f"cannot read: {os.strerror(exc.errno) if exc.errno else exc}",
                             index=self.index, offset=self.start) from None

    def _read_exact(self, n: int, what: str) -> bytes:
        parts = []
        got = 0
        while got < n:
            chunk = self._read(min(n - got, _CHUNK))
            if not chunk:
                raise ImageError(f"truncated {what}: wanted {n} bytes, got {got}",
                                 index=self.index, offset=self.start)
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def next(self) -> Record | None:
        """The next record, or None at a clean end of input (exactly at a record boundary).
        Errors name the record's index and its start offset, wherever in it they are found (so a
        truncation reads the same from a file as from a pipe)."""
        start = self.start = self.offset
        head = self._read(HDR_SIZE)
        if not head:
            return None
        if len(head) < HDR_SIZE:
            raise ImageError(f"truncated record header ({len(head)} of 8 bytes)", index=self.index, offset=start)
        rtype_id, length = HDR.unpack(head)
        rt = RECORDS.get(rtype_id)
        if rt is None:
            raise ImageError(f"unknown record type {rtype_id}", index=self.index, offset=start)
        why = rt.check_len(length)
        if why:
            raise ImageError(why, index=self.index, offset=start)
        if self.size is not None and start + length > self.size:
            raise ImageError(f"truncated {rt.name}: len {length} runs past the end of the image "
                             f"({self.size - start} bytes left)", index=self.index, offset=start)
        self.offset += HDR_SIZE
        fixed = self._read_exact(min(rt.st.size, length - HDR_SIZE), rt.name)
        self.offset += len(fixed)
        fields = rt.decode_fixed(fixed.ljust(rt.st.size, b"\0"))  # RecordType.older: zeros
        plen = max(0, length - rt.size)
        poff = self.offset
        # Bulk payloads (page data, and a memfd's or deleted file's contents) stay in the file:
        # the index holds where they are, and show, diff and inspect never need them.
        if plen and self.skip_pages and (rt.payload is Payload.PAGES or rt.type == RecType.FILE_DATA):
            self.f.seek(plen, os.SEEK_CUR)
            payload = None
        else:
            payload = self._read_exact(plen, f"{rt.name} payload") if plen else b""
        self.offset += plen
        r = Record(self.index, start, rt, length, fields, payload, poff)
        self.index += 1
        return r


def write_header(w: ImageWriter, *, time: int, uts: tuple[str, str, str], xstate_size: int,
                 xcr0: int, uflags: int = 0) -> None:
    """HEADER, the three uts BUFFERs (65 bytes each, NUL padded) and HEADER_ARCH."""
    from .records import (ARCH_X86_64, AT_VECTOR_SIZE, MAGIC_HEAD, REG_NAMES, TASK_COMM_LEN,
                          UTS_LEN)

    major, minor, patch = _kernel_version(uts[0])
    w.record(RecType.HEADER, dict(
        magic=MAGIC_HEAD, arch_id=ARCH_X86_64, major=major, minor=minor, patch=patch,
        task_comm_len=TASK_COMM_LEN, at_vector_size=AT_VECTOR_SIZE, uts_release_len=UTS_LEN,
        uts_version_len=UTS_LEN, uts_machine_len=UTS_LEN, time=time, uflags=uflags))
    for s in uts:
        w.record(RecType.BUFFER, payload=s.encode()[:UTS_LEN - 1].ljust(UTS_LEN, b"\0"))
    w.record(RecType.HEADER_ARCH, dict(xstate_size=xstate_size, regs_size=8 * len(REG_NAMES), xcr0=xcr0))


def write_tail(w: ImageWriter, *, hold: bool = False) -> None:
    """The TAIL record; with `hold`, kept back from the image (see ImageWriter.hold)."""
    from .records import MAGIC_TAIL

    if hold:
        w.hold(RecType.TAIL, dict(magic=MAGIC_TAIL))
        return
    w.record(RecType.TAIL, dict(magic=MAGIC_TAIL))
    w.flush()


def _kernel_version(release: str) -> tuple[int, int, int]:
    import re

    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        return (0, 0, 0)
    # As the kernel's KERNEL_VERSION (and so the seed's LINUX_VERSION_CODE & 0xff): sublevel <= 255.
    return int(m.group(1)), int(m.group(2)), min(int(m.group(3) or 0), 255)


def open_image(path: str) -> BinaryIO:
    """Open an image for reading: a file, or standard input for '-'."""
    import sys

    from ..errors import UsageError

    if path == "-":
        from ..stdfds import closed_at_start

        if sys.stdin is None or closed_at_start(0):
            raise UsageError("standard input is closed (<&-): no image to read; pipe one in or name a file")
        if sys.stdin.isatty():  # it would wait for an image typed in, for ever (dump refuses a tty too)
            raise UsageError("standard input is a terminal, not an image: pipe one in or name a file")
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise UsageError(f"no such image: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not an image") from None
    except PermissionError:
        raise UsageError(f"cannot read {path}: permission denied") from None


class ImageFile:
    """The output of `dump -o FILE`.

    A regular file (or a new one) is written as a temporary file beside it, created 0600 (images
    hold process memory, i.e. secrets), and takes FILE's name only when `commit` says the image is
    complete: a refused, failed or interrupted dump leaves whatever FILE held before. FIFOs,
    devices and sockets are written directly (there is nothing to replace), also when named
    through /dev/stdout or /proc/self/fd/N."""

    def __init__(self, path: str):
        from ..errors import UsageError

        self.path = path
        self.tmp: str | None = None
        try:
            # The path itself, not its realpath: /dev/stdout -> /proc/self/fd/1 is a link /proc
            # resolves to the open pipe or socket, whose "name" (pipe:[N]) is no path at all.
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise UsageError(f"cannot create {path}: {exc.strerror}") from None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise UsageError(f"cannot create {path}: it is a directory")
        if st is not None and not stat.S_ISREG(st.st_mode):
            self.target = path
            self.fd = _open_direct(path, st)
            return
        self.target = os.path.realpath(path)  # through a symlink: replace what it points at
        import tempfile

        folder, base = os.path.dirname(self.target), os.path.basename(self.target)
        try:
            # Nameless until complete: a dumper killed by SIGKILL (or a crash) leaves nothing
            # behind, where a named temporary file stayed, as big as the dump had gone.
            fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError:
            pass  # a filesystem without O_TMPFILE (or a folder we may not write: said below)
        else:
            try:
                os.fchmod(fd, 0o600)
            except OSError:
                os.close(fd)
                raise UsageError(f"cannot create {path}: cannot make its image file 0600") from None
            self.fd, self.tmp = fd, ""  # "": nameless (O_TMPFILE); a path: mkstemp's
            return
        try:
            self.fd, self.tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".partial", dir=folder)
        except OSError as exc:
            # What failed is the temporary file beside FILE, not FILE: say so (`-o /proc/version`
            # used to read "cannot create /proc/version: No such file or directory").
            if not os.path.isdir(folder):
                raise UsageError(f"cannot create {path}: no directory {folder}: {exc.strerror}") from None
            hint = f" ({folder} does not allow creating files)" if exc.errno == errno.ENOENT else ""
            raise UsageError(f"cannot create {path}: the image is first written as a temporary file "
                             f"{os.path.join(folder, '.' + base + '.XXXXXX.partial')}, and creating it failed: "
                             f"{exc.strerror}{hint}") from None
        os.fchmod(self.fd, 0o600)  # mkstemp's mode already; said here because it matters

    def rewind(self) -> None:
        """Empty the temporary file, to write the image again from its start (`dump --retry`;
        not for a FIFO, device or socket, which has let its bytes go)."""
        assert self.tmp is not None
        try:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
        except OSError as exc:
            raise KernelError(f"emptying the image file for {self.path} to write it again", exc.errno or 0) from None

    def commit(self) -> None:
        """The image is complete: give it its name."""
        if self.tmp is None:
            return
        if self.tmp == "":
            self._link()
        try:
            os.replace(self.tmp, self.target)
        except OSError as exc:
            raise KernelError(f"renaming the complete image {self.tmp} to {self.path}", exc.errno or 0) from None
        self.tmp = None

    def _link(self) -> None:
        """Give the nameless (O_TMPFILE) image a temporary name beside FILE, which `commit` then
        renames over FILE: linkat cannot replace a file, rename can, atomically."""
        import secrets

        folder, base = os.path.dirname(self.target), os.path.basename(self.target)
        try:
            # (a dir fd makes os.link use linkat(AT_SYMLINK_FOLLOW), which follows /proc's link to
            # the file; without one it calls link(2), which would link the /proc link itself)
            dfd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise KernelError(f"naming the complete image beside {self.path}", exc.errno or 0) from None
        try:
            for _ in range(16):
                name = f".{base}.{secrets.token_hex(4)}.partial"
                try:
                    os.link(f"/proc/self/fd/{self.fd}", name, dst_dir_fd=dfd, follow_symlinks=True)
                except FileExistsError:
                    continue
                except OSError as exc:
                    raise KernelError(f"naming the complete image beside {self.path}", exc.errno or 0) from None
                self.tmp = os.path.join(folder, name)
                return
        finally:
            os.close(dfd)
        raise KernelError(f"naming the complete image beside {self.path}", errno.EEXIST)

    def close(self, *, discard: bool) -> None:
        """Close; with `discard`, remove an uncommitted temporary file (FILE is left as it was)."""
        os.close(self.fd)
        if discard and self.tmp:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None


def _open_direct(path: str, st: os.stat_result) -> int:
    """An fd to write the image to FIFO, device or socket `path` (stat `st`) as it is."""
    from ..errors import UsageError

    try:
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        err = exc
    if stat.S_ISSOCK(st.st_mode):
        # A socket cannot be opened (ENXIO), even through /proc/self/fd/N: when it is one of our
        # own fds (`-o /dev/stdout` into a socket), write to that fd, as `-o -` does.
        for name in os.listdir("/proc/self/fd"):
            try:
                mine = os.fstat(int(name))
            except OSError:
                continue  # the listing's own fd, gone by now
            if (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino) and stat.S_ISSOCK(mine.st_mode):
                return os.dup(int(name))
        raise UsageError(f"cannot open {path} for writing: it is a socket, which cannot be opened by "
                         "name (only one this process holds can be written: -o - or /dev/stdout)") from None
    raise UsageError(f"cannot open {path} for writing: {err.strerror}") from None


def _is_regular(f: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (OSError, AttributeError, ValueError):
        return False


class _Tee:
    """A read-only stream over `src` that copies every byte read to `dst`."""

    def __init__(self, src: BinaryIO, dst: BinaryIO):
        self.src = src
        self.dst = dst

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        if data:
            try:
                self.dst.write(data)
            except OSError as exc:  # a full $TMPDIR: say so, not "cannot read" the image
                raise _spool_error(exc) from None
        return data


def _spool_error(exc: OSError) -> KernelError:
    import tempfile

    where = os.environ.get("TMPDIR") or tempfile.gettempdir()
    return KernelError(f"copying the image to a temporary file in {where} (TMPDIR)", exc.errno or 0)


def spool(src: BinaryIO) -> BinaryIO:
    """Copy the image on `src` to an unlinked 0600 temporary file, validating it as it is copied,
    and return the copy positioned at 0.

    The image index keeps only file offsets of page runs, so readers that come back for pages
    (inspect, diff, restore) need a seekable input. Images hold process memory, i.e. secrets: the
    copy is nameless (O_TMPFILE or mkstemp + unlink) and never readable by others, even briefly.
    The copy is what the image grammar reads (record by record, a bounded payload at a time), so
    a non-image fails at its first record (`/dev/zero`: 8 bytes in) and anything after TAIL at
    once: the temporary file never grows past the image a valid stream holds.
    """
    import tempfile

    from .reader import read_image

    try:
        tmp = tempfile.TemporaryFile(prefix="ckptrace-", dir=os.environ.get("TMPDIR"))
    except OSError as exc:
        raise _spool_error(exc) from None
    try:
        os.fchmod(tmp.fileno(), 0o600)
        read_image(_Tee(src, tmp))
        try:
            tmp.flush()  # (the last bytes were only buffered: a full disk says so here)
        except OSError as exc:
            raise _spool_error(exc) from None
        tmp.seek(0)
    except BaseException:
        # (closing flushes what is still buffered, which on a full $TMPDIR fails again: that
        # must not replace the error saying where the copy was going)
        try:
            tmp.close()
        except OSError:
            pass
        raise
    return tmp


def open_seekable(path: str) -> BinaryIO:
    """`open_image(path)`, spooled to a temporary file when it is not a regular file (stdin, FIFO)."""
    import sys

    f = open_image(path)
    if _is_regular(f):
        return f
    try:
        return spool(f)
    finally:
        if f is not sys.stdin.buffer:
            f.close()
