"""Open file descriptions of an image, recreated once in the controller.

Every FILE object becomes one descriptor of the controller, placed at or above `base` (a number
no restored table uses) so the tasks forked from it inherit all of them without collisions; each
task then dup2's the ones its table names into place and closes the rest. Files that VMAs map
(and the exe) are opened the same way, once per (path, access mode).

Why create in the controller: an open file description is shared by dup'd fds, by threads and
across fork; opening it once and letting fork share it reproduces that sharing (one offset, one
pipe) without any bookkeeping in the tasks.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import resource
import stat
import tempfile
import termios
from dataclasses import dataclass, field
from typing import BinaryIO

from ..errors import KernelError, Passing, Unsupported, UsageError, errno_text, from_oserror
from ..kernel import procfs
from ..kernel.procfs import DELETED_SUFFIX
from ..kernel.sys import (AT_FDCWD, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, SO_SNDBUFFORCE, TMPFS_MAGIC, fs_type,
                          ioctl_int, libc, openat2, syscall)
from ..objects.files import F_OWNER_EX, F_SETOWN_EX, F_SETSIG
from ..objects.socket import SHUTDOWN_RESET, SHUTDOWN_UNLINKED
from ..image.reader import File, FileTable, Image, Mm
from ..image.render import file_label, inet_sockaddr, listed, peer_gone, shown_path, socket_desc
from ..image.records import (F_SEAL_EXEC, F_SEAL_FUTURE_WRITE, F_SEAL_SEAL, FMODE_WRITE, MEMFD_SEALS_KNOWN, PAGE_SIZE, SEAL_NAMES, SOCKADDR_LEN, SOCKOPTS, TCP_CLOSE, TCP_ESTABLISHED,
                             TCP_LISTEN, VM_EXEC, VM_SHARED, VM_WRITE, FileType, RecType, VmaType, flag_names,
                             inotify_watches)
from ..kernel.sysno import SYS_epoll_create1, SYS_signalfd4, SYS_timerfd_create, SYS_timerfd_settime
from . import tty

# Flags not to reopen a file with: those that only matter at open time (and must not recreate
# or truncate anything now), and O_ASYNC, which open() records without registering the file for
# I/O signals (FileSet.set_owners sets it properly)
_OPEN_ONLY = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY | os.O_CLOEXEC | os.O_ASYNC
VM_MAYWRITE = 0x20
MFD_ALLOW_SEALING, MFD_NOEXEC_SEAL, MFD_EXEC = 0x2, 0x8, 0x10

SUPPORTED = {FileType.REGULAR, FileType.PIPE, FileType.FIFO, FileType.MEMFD, FileType.DELETED,
             FileType.EVENTFD, FileType.SIGNALFD, FileType.TIMERFD, FileType.EPOLL,
             FileType.UNIX_SOCKET, FileType.INET_SOCKET, FileType.TTY, FileType.INOTIFY}
AF_UNIX = 1
IPPROTO_TCP, IPPROTO_UDP = 6, 17
SOCK_DGRAM = 2
IP_BIND_ADDRESS_NO_PORT = 24  # (SOL_IP, for IPv6 sockets too)
TFD_IOC_SET_TICKS = 0x40085400  # _IOW('T', 0, u64); needs CONFIG_CHECKPOINT_RESTORE


def open_path(img: Image, path: str, flags: int, mode: int = 0o600) -> int:
    """os.open of image path `path` where this host finds it (Image.at). Under --root, a path
    of the namespace is opened by openat2(RESOLVE_IN_ROOT) from `root`: the kernel resolves it
    as a process chroot'ed there would, so that no `..` or symlink (of the image, or put in
    `root` since the validation) opens a file outside it. One the host's (/dev, /proc, /sys of
    a namespace that was not chroot'ed; Image.inside) is opened with RESOLVE_NO_MAGICLINKS:
    a link of /proc such as /proc/PID/root or /proc/PID/fd/N (which the dumper never writes:
    it records what they lead to) would lead out of `root` to any file of the host (ELOOP,
    which check_files names). `mode`: a file O_CREAT makes gets it (umask applied)."""
    mode = mode if flags & os.O_CREAT else 0  # (openat2 refuses a mode it would not use)
    inside = img.inside(path)
    if inside is None:
        if img.root:
            return openat2(AT_FDCWD, img.at(path), flags, mode, RESOLVE_NO_MAGICLINKS)
        return os.open(img.at(path), flags, mode)
    top = os.open(img.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return openat2(top, inside.lstrip("/") or ".", flags, mode, RESOLVE_IN_ROOT)
    except OSError as exc:
        exc.filename = img.at(path)  # (what the messages name: the file under root)
        raise
    finally:
        os.close(top)


def check_files(img: Image) -> list[str]:
    """Why the image's files cannot be recreated here; empty when they can (nothing is opened)."""
    problems = tty.problems(img, lambda objref: _users(img, objref))
    missing: dict[str, list[int]] = {}  # path -> the objects that name it
    pairs = tty.masters(img)
    carried = img.carried_files()
    for obj in img.objects.values():
        if not isinstance(obj, File):
            continue
        ft = FileType(obj.ftype)
        if ft not in SUPPORTED and _in_fd_table(img, obj.objref):
            problems.append(f"{_users(img, obj.objref)}: {_what(obj, ft)}, which restore does not support")
        if ft is FileType.INET_SOCKET and _in_fd_table(img, obj.objref):
            why = _inet_unrestorable(obj)
            if why:  # (a Passing one stays one: a TCP connection being opened or closed)
                problems.append(type(why)(f"{_users(img, obj.objref)}: {_what(obj, ft)}: {why}"))
        if ft is FileType.UNIX_SOCKET and _in_fd_table(img, obj.objref):
            rec = _extra(obj, RecType.FILE_SOCKET)
            idx = UnixIndex.of(img)
            for why in ((idx.peer_problem(obj, rec), idx.queue_problem(obj, rec)) if rec is not None else ()):
                if why:
                    problems.append(why)
        if ft is FileType.TTY and (tty.paired_slave(obj, pairs) is not None or tty.hung_up(obj)):
            continue  # opened from a master made again: its path need not exist yet
        if ft is FileType.TTY and _in_fd_table(img, obj.objref):
            if why := tty.outside_problem(img, obj, _users(img, obj.objref)):
                problems.append(why)
            continue
        if ft is FileType.INOTIFY:
            rec = _extra(obj, RecType.FILE_INOTIFY)
            for wd, _, path in _inotify_watches(rec):
                if not path or not os.path.lexists(img.at(path)):
                    problems.append(f"inotify object {obj.objref} watches {shown_path(path) if path else 'an inode with no path'} "
                                    f"(wd {wd}), which does not exist")
        if ft is FileType.REGULAR and obj.name in carried and not os.path.lexists(img.at(obj.name)):
            # shared memory the image carries: made again (put_back_contents), in its directory
            if not os.path.isdir(os.path.dirname(img.at(obj.name))):
                problems.append(f"file '{shown_path(img.at(obj.name))}' (object {obj.objref}) does not exist, nor "
                                "does its directory, where restore would make it again with the image's contents")
        elif ft is FileType.REGULAR and obj.name in carried and os.path.islink(img.at(obj.name)):
            # (put_back_contents opens it O_NOFOLLOW: said here, before anything is made)
            problems.append(f"file '{shown_path(img.at(obj.name))}' (object {obj.objref}), shared memory whose dumped "
                            "contents restore puts back, is now a symlink: restore writes into no file a link leads to")
        elif ft in (FileType.REGULAR, FileType.FIFO, FileType.TTY) and (not obj.name or not os.path.lexists(img.at(obj.name))):
            missing.setdefault(img.at(obj.name), []).append(obj.objref)
        elif ft in (FileType.REGULAR, FileType.FIFO) and (why := _magic_link_problem(img, obj)):
            problems.append(why)
        elif ft is FileType.REGULAR and (why := _type_problem(img, obj)):
            problems.append(why)
    # once per path: a file opened by several processes (or mapped) is an object per open
    problems += [f"file '{shown_path(path)}' ({'object' if len(refs) == 1 else 'objects'} {', '.join(map(str, refs))}) does not exist"
                 for path, refs in missing.items()]
    return problems


def _unlink_if_same(made: list[tuple[str, int, int]]) -> None:
    """Unlink each (path, dev, ino) whose path still names that inode: someone else's file put
    there since is left alone. Failures are skipped (cleanup of a failed restore)."""
    for path, dev, ino in made:
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == (dev, ino):
                os.unlink(path)


def held_file_problems(img: Image, *, original_runs: bool = False) -> list[str]:
    """Files whose contents the image carries (Image.carried_files) that a process outside the image
    holds open or maps now: restore writes the dumped contents into the file, which would change
    that process's memory under it; and a copy restored beside its running original (a plain
    dump) would share one segment with it. `original_runs` (dump's own check, before `--kill`
    kills the original): the image's processes, which hold the file until then, are not
    counted."""
    skip = {os.getpid()} | ({e["hostpid"] for e in img.tree} if original_runs else set())
    problems = []
    present = {}  # (dev, ino) -> (path, object)
    for name, obj in img.carried_files().items():
        path = img.at(name)
        try:
            st = os.stat(path)
        except OSError:
            continue  # (missing: made again; another kind: check_files)
        present[st.st_dev, st.st_ino] = (path, obj)
    holders = procfs.file_holders({key: os.path.basename(os.path.realpath(path)) for key, (path, _) in present.items()})
    for key, (path, obj) in present.items():
        held = [h for h in holders[key] if h not in skip]
        if held:
            problems.append(f"file '{shown_path(path)}' ({_users(img, obj.objref)}), shared memory whose dumped "
                            f"contents restore puts back, is held by host pid {listed(_named(held))}: writing them "
                            "would change the file under that process (its memory, where it maps it)")
    return problems


FILE_KINDS = {stat.S_IFREG: "a regular file", stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device",
              stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
              stat.S_IFLNK: "a symlink"}
_REGULAR_KINDS = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFCHR, stat.S_IFBLK)  # what the dumper calls REGULAR


def _was_kinds(obj: File) -> tuple[int, ...]:
    """The file types (S_IFMT) a REGULAR object's path may name now: the one FILE_STAT recorded;
    in an older image, which has no type (nor FILE_STAT for an fd's file), what the dumper
    classifies as REGULAR, narrowed by the open flags: O_DIRECTORY opens a directory only, and
    a directory is never open for writing (EISDIR)."""
    st = _extra(obj, RecType.FILE_STAT)
    if st is not None and st.fields.get("mode"):
        return (stat.S_IFMT(st.fields["mode"]),)
    if obj.fields["f_flags"] & os.O_DIRECTORY:
        return (stat.S_IFDIR,)
    if obj.fields["f_mode"] & FMODE_WRITE:
        return tuple(k for k in _REGULAR_KINDS if k != stat.S_IFDIR)
    return _REGULAR_KINDS


def _kinds_text(kinds) -> str:
    names = [FILE_KINDS[k] for k in kinds]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _magic_link_problem(img: Image, obj: File) -> str:
    """Why open_path will not open the host path of `obj` under --root: it leads through one of
    /proc's magic links ("" when it does not). Looked up with O_PATH, which opens no device."""
    if not img.root or img.inside(obj.name) is not None:
        return ""
    try:
        os.close(openat2(AT_FDCWD, img.at(obj.name), os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_NO_MAGICLINKS))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return (f"file '{shown_path(img.at(obj.name))}' ({_users(img, obj.objref)}) leads through one of "
                    "/proc's links to another process's files (/proc/PID/root, cwd, fd/N) or a symlink loop: "
                    "restore --root does not follow them (they would reach this host's files, not the root's)")
    return ""


def _type_problem(img: Image, obj: File) -> str:
    """Why the path of REGULAR object `obj` no longer leads to a file of the kind it was ("" when
    it does): restore reopens it by path, following symlinks as the original's open did, and
    a FIFO there would block the open (a FIFO is never REGULAR: the dumper tells them apart), a
    directory refuse it late, a device (a symlink to /dev/zero) swallow the program's writes."""
    path = img.at(obj.name)
    who = f"file '{shown_path(path)}' ({_users(img, obj.objref)})"
    try:
        now = os.stat(path)
    except OSError as exc:
        if os.path.islink(path):
            return f"{who} is now a symlink to '{shown_path(os.readlink(path))}', which leads nowhere ({os.strerror(exc.errno)})"
        return f"{who} cannot be looked at: {os.strerror(exc.errno)}"
    kind, was = stat.S_IFMT(now.st_mode), _was_kinds(obj)
    if kind in was:
        return ""
    via = f"a symlink to '{shown_path(os.readlink(path))}', " if os.path.islink(path) else ""
    return f"{who} was {_kinds_text(was)} at the dump and is now {via}{FILE_KINDS.get(kind, 'another kind of file')}"


def _fifo_lives_on(holder: int) -> str:
    """Why the pipe behind FIFO `holder` (just opened by us) is not a new one but the pipe as the
    dump left it ("" when it is new): the kernel frees a FIFO's pipe, bytes and all, once nobody
    has the FIFO open, and makes a new, empty one at the next open. So a pipe that already holds
    bytes, or a FIFO open in another process (nothing of the restore exists yet but this one),
    lived on: after `dump --kill` an outside reader or writer kept it, without --kill the
    original itself does. Only asked when the image has bytes for the pipe."""
    st = os.fstat(holder)
    name = os.path.basename(os.readlink(f"/proc/self/fd/{holder}"))
    others = procfs.holders(st.st_dev, st.st_ino, skip=os.getpid(), name=name)
    if others:
        return f"is open in host pid {listed(others)}"
    # (a thread with a file table of its own does not show in /proc/PID/fd)
    if ioctl_int(holder, termios.FIONREAD):
        return "already holds bytes"
    return ""


BIND_LOCK = "/run/ckptrace/bind.lock"


@contextlib.contextmanager
def _bind_lock():
    """Held from the look at a socket path to the bind: two restores of one image at once could
    both find the dead original's socket file, and the second unlink the first one's new socket.
    Without /run/ckptrace (not root...), no lock: the restore goes on."""
    try:
        os.makedirs(os.path.dirname(BIND_LOCK), mode=0o755, exist_ok=True)
        fd = os.open(BIND_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _socket_alive(path: str) -> bool:
    """Whether a live socket is bound to the socket file at `path`, rather than the file a dead
    one left: only the latter may be unlinked to bind again. A path socket is reachable from
    every network namespace, so a view of sockets by namespace (/proc/net/unix, sock_diag: the
    controller's only, missing a server in a namespace of its own) cannot say it is dead. The
    kernel can: a datagram socket connected to the path makes it look the file's inode up among
    every bound unix socket (unix_find_bsd), and ECONNREFUSED means none is bound to it. A socket
    of another type bound there fails the connect with EPROTOTYPE before anything reaches it (a
    listener sees no connection, nor does a socket bound without listening); a datagram one
    takes it without being told and is let go at once. By inode, not by name: a socket whose
    file was unlinked (the original's, or one _bind_unlinked made) does not hold the path. Any
    other answer (EACCES from an LSM, ...) cannot tell, and counts as alive: nothing is
    unlinked that is not shown dead. ENOENT: gone meanwhile, nothing to unlink."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True
    return True


def _named(pids: list[int]) -> list[str]:
    """Host pids as messages name a holder: '1234 (nginx)'."""
    return [f"{p} ({procfs.comm(p) or '?'})" for p in pids]


def _inet_holders(proto: int, local: tuple, peer: tuple | None = None) -> str:
    """'host pid 1234 (nginx)': who holds the address (`peer`: the connection) a socket of the
    image meets here, found by sock_diag in this network namespace and a scan of every fd table
    (for an error only); '' when nothing is found."""
    from ..kernel import sockdiag

    held = procfs.socket_holders(sockdiag.inet_inodes(proto, local[1], local[0], peer))
    return f"host pid {listed(_named(held))}" if held else ""


def _path_in_use(path: str) -> str:
    """The message for a socket path a live socket holds, naming its holder when a scan finds
    one: a socket of that name (procfs.unix_sockets_named, every network namespace) held by a
    process's fd."""
    held = procfs.socket_holders(procfs.unix_sockets_named(path))
    if held:
        who = f"a socket of that name is held by host pid {listed(_named(held))}"
    else:
        who = "its holder was not found (a socket only in flight, or in a network namespace no process is in)"
    return f"unix socket path {shown_path(path)} is in use by a live socket: {who}"


def binding_problems(img: Image, *, held: bool = False) -> list[str]:
    """What the image binds that is taken on this host now, all of it (restore.validate, before
    anything exists; not dump --kill's check, whose original holds it all until killed): every
    TCP or UDP address a socket is bound to again, tried by binding a throw-away socket made as
    _inet_socket makes it (no listen, which clients could reach) in a network namespace like the
    one the restore uses: the controller's, or for an image whose init had its own, a throw-away
    new one made as restorer.net makes it (where no port is taken, but an address other than
    lo's is missing), and every unix socket path held by a live socket (a path is reached from
    every network namespace alike). The files step binds for good and still fails on what was
    taken in between.
    In a new network namespace, the local address of every TCP connection is asked too (bound
    with port 0: it must exist there; its port is the connection's own business). `held` (dump
    --kill, whose original still holds its ports and paths): only that, whether each address
    exists, and that in a new network namespace only, where the original holds nothing."""
    from . import net
    from ..kernel.netns import maybe_entered

    if held and not net.own(img):
        return []
    ns = net.make(img)
    try:
        with maybe_entered(ns):
            problems = _inet_binding_problems(img, own_netns=ns is not None, ports=not held)
    finally:
        if ns is not None:
            ns.close()
    return problems + ([] if held else _unix_binding_problems(img))


def _bound_sockets(img: Image):
    """(File, its FILE_SOCKET record, FileType) of every socket an fd table holds."""
    for obj in img.objects.values():
        if not isinstance(obj, File) or not _in_fd_table(img, obj.objref):
            continue
        rec = _extra(obj, RecType.FILE_SOCKET)
        if rec is not None:
            yield obj, rec, FileType(obj.ftype)


def _inet_binding_problems(img: Image, own_netns: bool, ports: bool) -> list[str]:
    problems = []
    for obj, rec, ft in _bound_sockets(img):
        f = rec.fields
        if ft is not FileType.INET_SOCKET or _inet_unrestorable(obj):
            continue
        local = inet_sockaddr(f["family"], bytes(rec.payload or b"")[:SOCKADDR_LEN])
        if local is None:
            continue  # (unbound)
        connection = _extra(obj, RecType.FILE_TCP) is not None
        if connection or not local[1] or not ports:
            if not own_netns:
                continue  # (port 0 is chosen at connect; a connection's port is its own)
            local = (local[0], 0, *local[2:])  # (does the address exist in the new namespace)
            f = dict(f, options=0)
        try:
            _bound_inet(f, local).close()
        except OSError as exc:
            if own_netns and exc.errno == errno.EADDRNOTAVAIL:
                problems.append(f"{_users(img, obj.objref)} ({_what(obj, ft)}): its address is not in the new "
                                "network namespace restore makes, which has only lo (EADDRNOTAVAIL)")
                continue
            held = _inet_holders(f["protocol"], local) if exc.errno == errno.EADDRINUSE else ""
            problems.append(f"{_users(img, obj.objref)} ({_what(obj, ft)}): its address is taken here"
                            f"{', by ' + held if held else ''}: {errno_text(exc.errno or 0)}")
    return problems


def _unix_binding_problems(img: Image) -> list[str]:
    problems = []
    idx = None
    for obj, rec, ft in _bound_sockets(img):
        f = rec.fields
        if ft is FileType.UNIX_SOCKET and f["family"] == AF_UNIX:
            idx = idx or UnixIndex.of(img)
            path = _local_name(rec)
            if not path or path[0] == 0 or _half_dead(rec) or (f["peer_ino"] and idx.late_peer(rec) is None):
                continue  # (not bound at its path: see _unix_socket)
            if f["shutdown"] & SHUTDOWN_UNLINKED:
                if not obj.name:
                    continue  # (bound where nothing shows)
                path = obj.name  # (its file renamed: it comes back there, see _bind_renamed)
            else:
                path = path.decode("utf-8", "surrogateescape")
            path = img.at(path, follow=False)
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(path).st_mode) and _socket_alive(path):
                    problems.append(f"{_users(img, obj.objref)}: {_path_in_use(path)} (EADDRINUSE)")
    return problems


def _bound_inet(f: dict, local):
    """A TCP or UDP socket made and bound as the image's FILE_SOCKET fields `f` say (its boolean
    options first; see _inet_socket), closed again if the bind fails."""
    import socket

    s = socket.socket(f["family"], f["type"], f["protocol"])
    try:
        _set_options(s, f["options"])
        if f["protocol"] == IPPROTO_TCP and local is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if local is not None and not local[1]:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        if local is not None:
            s.bind(local)
    except BaseException:
        s.close()
        raise
    return s


def _fd_uses(img: Image) -> dict[int, list[str]]:
    """File objref -> "pid P fd N" of every process's fd on it, in image order: built once per
    image (restore names every file it makes by its uses; a scan per file made 5 000 fds shared
    by 91 processes take a minute)."""
    uses = img.derived.get("fd_uses")
    if uses is None:
        uses = img.derived["fd_uses"] = {}
        for t in img.processes():
            for d in getattr(img.obj(t.files_objref), "fds", []):
                uses.setdefault(d["fd_objref"], []).append(f"pid {t.tid} fd {d['fd_descriptor']}")
    return uses


def _users(img: Image, objref: int) -> str:
    """Where the image uses a file object, as a user would look for it: "pid 2 fd 3"."""
    uses = _fd_uses(img).get(objref, [])
    if not uses:
        return f"file object {objref}"
    return listed(uses, keep=3)


def _what(obj: File, ft: FileType) -> str:
    """The object in words: "an inet socket (tcp 127.0.0.1:8080 listening)"."""
    sock = _extra(obj, RecType.FILE_SOCKET)
    if sock is not None:
        kind = "an inet socket" if sock.fields["family"] in (2, 10) else "a socket"
        return f"{kind} ({shown_path(socket_desc(sock.fields, bytes(sock.payload or b''), obj.name))})"
    if ft is FileType.REGULAR:  # (a regular file, directory or device: FILE_STAT says which)
        kinds = _was_kinds(obj)
        return f"{_kinds_text(kinds) if len(kinds) == 1 else 'a file'} ({shown_path(file_label(obj))})"
    kind = {FileType.DELETED: "deleted file"}.get(ft, ft.name.lower().replace("_", " "))
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} ({shown_path(file_label(obj))})"


def _inet_unrestorable(obj: File) -> str:
    """Why this TCP/UDP socket cannot come back ("" when it can): listeners and unconnected or
    UDP sockets are made and bound again; an established TCP connection is made again through
    TCP_REPAIR from its FILE_TCP. A connection in any other state (being opened or closed) is
    not: its FIN or SYN would have to be put back in flight."""
    rec = _extra(obj, RecType.FILE_SOCKET)
    if rec is None:
        return "the image has no FILE_SOCKET record for it"
    f = rec.fields
    if f["protocol"] == IPPROTO_UDP:
        return ""
    if f["protocol"] == IPPROTO_TCP and f["state"] in (TCP_LISTEN, TCP_CLOSE):
        return ""
    if f["protocol"] == IPPROTO_TCP and f["state"] == TCP_ESTABLISHED:
        payload = bytes(rec.payload or b"")
        if _extra(obj, RecType.FILE_TCP) is None:
            return "the image holds no TCP_REPAIR state for this connection (FILE_TCP: an image of an older ckptrace)"
        if inet_sockaddr(f["family"], payload[:SOCKADDR_LEN]) is None or \
                inet_sockaddr(f["family"], payload[SOCKADDR_LEN:]) is None:
            return "a TCP connection without a local or peer address cannot be made again"
        return ""
    if f["protocol"] == IPPROTO_TCP:
        return Passing("restore brings back listening and established TCP sockets, not connections being "
                       "opened or closed")
    return f"restore brings back TCP and UDP sockets, not protocol {f['protocol']}"


def _in_fd_table(img: Image, objref: int) -> bool:
    held = img.derived.get("held_files")
    if held is None:  # (once per image, as _fd_uses)
        held = img.derived["held_files"] = {d["fd_objref"] for o in img.objects.values()
                                             if isinstance(o, FileTable) for d in o.fds}
    return objref in held


def max_fd(img: Image) -> int:
    return max((d["fd_descriptor"] for o in img.objects.values() if isinstance(o, FileTable)
                for d in o.fds), default=2)


def fd_base(img: Image) -> int:
    """Where the controller's descriptors for the image's files start: above every fd number the
    tasks will have, so that each task's own numbers can be dup2'ed into place."""
    return max(max_fd(img) + 1, 64)


def nofile_needed(img: Image) -> int:
    """Descriptors the restore holds at once: its files from fd_base on, at most two per object
    (a pipe's two ends, a FIFO's holder and end, a mapped file opened twice), and some slack."""
    # (and the ptmx opened on the way to a pty's index: tty.open_master)
    return fd_base(img) + 2 * len(img.objects) + 64 + max(tty.masters(img), default=-1) + 1


def nofile_problem(img: Image) -> str | None:
    """Why this process could not hold the restore's descriptors (checked before anything exists,
    and by dump --kill before it kills)."""
    need = nofile_needed(img)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        return (f"restore needs up to {need} descriptors (fd numbers up to {max_fd(img)} and the files "
                f"behind them), but this process's hard RLIMIT_NOFILE is {hard} (ulimit -Hn; raising it "
                "takes CAP_SYS_RESOURCE)")
    return None


@dataclass
class FileSet:
    """The controller's descriptors for the image's objects. Close them with `close()`."""

    img: Image
    base: int
    by_objref: dict[int, int] = field(default_factory=dict)  # FILE objref -> controller fd
    mapped: dict[tuple[str, int], int] = field(default_factory=dict)  # (path, O_ mode) -> fd
    shmem: dict[int, int] = field(default_factory=dict)  # SHMEM file objref -> memfd
    mapped_data: dict[int, int] = field(default_factory=dict)  # mapped MEMFD/DELETED objref -> memfd
    holders: list[int] = field(default_factory=list)  # FIFO readers that keep buffers alive meanwhile
    notes: list[str] = field(default_factory=list)  # what the user should know although it worked
    socket_pairs: dict[tuple[int, int], dict[int, int]] = field(default_factory=dict)
    extra: list[int] = field(default_factory=list)  # every task keeps these until its memory is done
    late_seals: list[tuple[int, int, File]] = field(default_factory=list)  # (memfd, seals, object)
    # SHMEM objrefs whose pages the controller wrote before sealing them (_seal_segments), and
    # how many bytes: the memory rebuild leaves those segments alone
    filled: set[int] = field(default_factory=set)
    bytes_filled: int = 0
    image: BinaryIO | None = None  # the image file, for the FILE_DATA payloads the reader left there
    # (peer's address, objref, place): datagram clients of a bound server, and stream clients a
    # listener had not accepted yet, in the order they wait in its accept queue
    late_connects: list[tuple[bytes, int, int]] = field(default_factory=list)
    tcp_connections: list[File] = field(default_factory=list)  # TCP connections made (in repair mode until finish_tcp)
    ctty: dict[int, int] = field(default_factory=dict)  # pty index -> a slave fd of ours (restorer/tty.py)
    hungup: dict[int, int] = field(default_factory=dict)  # index -> master of hung-up slaves, closed in create
    # unix sockets bound where their path no longer names them (_bind_unlinked, _bind_renamed):
    # objref -> where the controller reaches the socket file (until create() removes it, for an
    # unlinked one), and the directories to remove
    unlinked: dict[int, str] = field(default_factory=dict)
    unlinked_dirs: list[str] = field(default_factory=list)
    # socket files this restore made at their paths, with their (st_dev, st_ino): see unbind
    bound_paths: list[tuple[str, int, int]] = field(default_factory=list)
    # (path, dev, ino) of each carried file this restore made (_make_carried): removed should the
    # restore fail (remove_made), or process memory stays in /dev/shm for any later comer
    made_files: list[tuple[str, int, int]] = field(default_factory=list)
    _packet_ids: set[int] | None = None  # see _packet_pipes

    def place(self, fd: int) -> int:
        """Move `fd` to the first free number >= base (inherited across clone3: no CLOEXEC)."""
        try:
            new = fcntl.fcntl(fd, fcntl.F_DUPFD, self.base)
        except OSError as exc:
            os.close(fd)
            raise from_oserror(exc, f"move descriptor above {self.base}") from None
        os.close(fd)
        return new

    def create(self) -> None:
        _raise_nofile(nofile_needed(self.img))
        self.put_back_contents()  # (before any fd or mapping of those files is opened)
        pipes: dict[int, tuple[int, int]] = {}
        connections = []
        pairs = tty.masters(self.img)
        for obj in pairs.values():  # before their slaves, which are opened through them
            self.by_objref[obj.objref] = self._pty_master(obj)
        for obj in self.img.objects.values():
            if isinstance(obj, File) and _in_fd_table(self.img, obj.objref) and obj.objref not in self.by_objref:
                if _extra(obj, RecType.FILE_TCP) is not None:
                    connections.append(obj)  # after the listeners, which may share their ports
                    continue
                self.by_objref[obj.objref] = self._open(obj, pipes)
        for obj in connections:
            try:
                self.by_objref[obj.objref] = self._tcp_connection(obj)
            except OSError as exc:
                what = f"recreate {_users(self.img, obj.objref)} ({_what(obj, FileType.INET_SOCKET)})"
                if exc.errno in (errno.EADDRNOTAVAIL, errno.EADDRINUSE) and (held := self._connection_holders(obj)):
                    # (the original, dumped without --kill, still has it: restore a copy elsewhere)
                    what += f": its connection is held here by {held}"
                raise from_oserror(exc, what) from None
            self.tcp_connections.append(obj)
        # Datagrams a socket got before it connected go first (once connected it takes datagrams
        # from its peer only), its peer's after (the peer's are not held to max_dgram_qlen).
        self._send_to_named(before_connect=True)
        self._connect_late()
        self._send_to_named(before_connect=False)
        self._remove_unlinked()  # (nothing needs to reach those sockets by a path any more)
        for r, w in pipes.values():
            # Ends the image does not hold are closed: a reader then sees EOF after the buffered
            # bytes, a writer EPIPE, as they would have once the missing end was gone.
            for fd in (r, w):
                if fd >= 0 and fd not in self.by_objref.values():
                    os.close(fd)
        for master in self.hungup.values():  # which hangs up the slaves opened through it
            os.close(master)
        self.hungup.clear()
        for index, obj in pairs.items():  # every slave is open now
            tty.finish(self.by_objref[obj.objref], self.ctty[index], _extra(obj, RecType.FILE_TTY).fields)
        for obj in self.img.objects.values():
            if isinstance(obj, Mm):
                self._map_files(obj)
        self._seal_segments()

    def _open(self, obj: File, pipes: dict[int, tuple[int, int]]) -> int:
        f = obj.fields
        ft = FileType(obj.ftype)
        what = f"recreate {_users(self.img, obj.objref)} ({_what(obj, ft)})"
        try:
            if ft is FileType.REGULAR:
                fd = self._open_regular(obj)
                # O_APPEND too: its writes go to the end, but its reads start at the offset
                if not f["f_flags"] & os.O_PATH:
                    try:
                        os.lseek(fd, f["f_pos"], os.SEEK_SET)
                    except OSError as exc:
                        if exc.errno != errno.ESPIPE:  # character devices such as /dev/null
                            raise
                return self.place(fd)
            if ft is FileType.TTY:
                index = tty.paired_slave(obj, tty.masters(self.img))
                if index is not None:  # the slave of a pair made again (_pty_master)
                    master = self.by_objref[tty.masters(self.img)[index].objref]
                    return self.place(tty.open_slave(master, f["f_flags"] & ~_OPEN_ONLY))
                if tty.hung_up(obj):  # a slave of a new pair whose master create() closes
                    index = tty.tty_record(obj).fields["index"]
                    if index not in self.hungup:
                        self.hungup[index] = tty.hungup_master(index)
                    return self.place(tty.open_slave(self.hungup[index], f["f_flags"] & ~_OPEN_ONLY))
                # A terminal of the outside world is reopened by path: the tasks come back on the
                # same terminal (check_files made sure it is). O_NOCTTY: it must not become our
                # controlling tty.
                return self.place(os.open(tty.outside_path(self.img, obj), (f["f_flags"] & ~_OPEN_ONLY) | os.O_NOCTTY))
            if ft is FileType.PIPE:
                return self._pipe_end(obj, pipes)
            if ft is FileType.FIFO:
                return self._fifo_end(obj, pipes)
            if ft is FileType.SIGNALFD:
                rec = _extra(obj, RecType.FILE_SIGNALFD)
                mask = ctypes.c_uint64(rec.fields["sigmask"] if rec else 0)
                return self.place(syscall(SYS_signalfd4, -1, ctypes.addressof(mask), 8,
                                          f["f_flags"] & os.O_NONBLOCK, what="signalfd4"))
            if ft is FileType.TIMERFD:
                return self._timerfd(obj)
            if ft is FileType.INOTIFY:
                return self._inotify(obj)
            if ft is FileType.UNIX_SOCKET:
                return self._unix_socket(obj)
            if ft is FileType.INET_SOCKET:
                return self._inet_socket(obj)
            if ft is FileType.EPOLL:
                # Its interest list names fds of a task's table: each task adds them itself (tree).
                return self.place(syscall(SYS_epoll_create1, 0, what="epoll_create1"))
            if ft in (FileType.MEMFD, FileType.DELETED):
                return self._memfd(obj)
            if ft is FileType.EVENTFD:
                ev = next((r for r in obj.extra if r.type == RecType.FILE_EVENTFD), None)
                count = ev.fields["count"] if ev else 0
                fd = self.place(os.eventfd(0, (ev.fields["flags"] if ev else 0) & os.EFD_SEMAPHORE
                                           | (f["f_flags"] & os.O_NONBLOCK)))
                if count:  # written, not given to eventfd(): its initial value is an unsigned int
                    os.eventfd_write(fd, count)
                return fd
        except OSError as exc:
            if exc.errno == errno.ENOENT and ft in (FileType.REGULAR, FileType.FIFO, FileType.TTY):
                # a path gone since the validation: from_oserror's "no such process or file"
                # speaks of /proc's vanishing processes
                raise KernelError(what, exc.errno) from None
            raise from_oserror(exc, what) from None
        raise Unsupported(f"{what}: {ft.name} files cannot be restored")

    def _open_regular(self, obj: File) -> int:
        """A REGULAR object's file reopened by path, checked to be of the kind it was. Opened
        O_NONBLOCK (then cleared), unless it was a device, whose open the flag may change: the
        validation refused a FIFO at its path, but one put there since would block the open
        until a writer came, and nothing may block the restore."""
        f = obj.fields
        flags = f["f_flags"] & ~_OPEN_ONLY
        kinds = _was_kinds(obj)
        guard = not flags & (os.O_NONBLOCK | os.O_PATH) and not set(kinds) <= {stat.S_IFCHR, stat.S_IFBLK}
        fd = open_path(self.img, obj.name, flags | (os.O_NONBLOCK if guard else 0))
        try:
            kind = stat.S_IFMT(os.fstat(fd).st_mode)
            if kind not in kinds:
                raise Unsupported(f"file '{shown_path(self.img.at(obj.name))}' ({_users(self.img, obj.objref)}) was "
                                  f"{_kinds_text(kinds)} at the dump and is now {FILE_KINDS.get(kind, 'another kind of file')}")
            if guard:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def put_back_contents(self) -> None:
        """The dumped contents of the files the image carries (Image.carried_files), written back at
        their paths: a file still there is truncated to nothing, then sized and given the stored
        extents (holes stay holes); a missing one (a reboot emptied /dev/shm) is made with the
        dumped mode and owner. Its ownership and mode are otherwise left as they are now."""
        for name, obj in self.img.carried_files().items():
            what = f"put back the contents of '{shown_path(self.img.at(name))}' ({_users(self.img, obj.objref)})"
            st = _extra(obj, RecType.FILE_STAT)
            try:
                try:
                    # (O_NOFOLLOW: /dev/shm is anyone's to write in; a symlink put at the path
                    # would have root truncate and write the file it leads to)
                    fd = open_path(self.img, name, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
                except FileNotFoundError:
                    fd = self._make_carried(name, st.fields if st is not None else {})
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):  # (put there since the validation)
                        raise Unsupported(f"{what}: it is no longer a regular file")
                    if fs_type(f"/proc/self/fd/{fd}") != TMPFS_MAGIC:  # (a mount put over it since)
                        raise Unsupported(f"{what}: it is no longer on a tmpfs")
                    os.ftruncate(fd, 0)  # (what it holds now is dropped: no data where the dump had holes)
                    self._write_contents(fd, obj)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise from_oserror(exc, what) from None

    def _make_carried(self, name: str, st: dict) -> int:
        """A missing file of Image.carried_files made again, empty, with the dumped mode and owner
        (FILE_STAT; an image without them gets root's and 0600)."""
        perms = stat.S_IMODE(st.get("mode", 0)) or 0o600
        fd = open_path(self.img, name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, perms)
        made = os.fstat(fd)
        self.made_files.append((self.img.at(name), made.st_dev, made.st_ino))
        try:
            os.fchown(fd, st.get("uid", 0), st.get("gid", 0))
            os.fchmod(fd, perms)  # (after the chown, which clears set-id bits; and past the umask)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def remove_made(self) -> None:
        """Remove the carried files this restore made (still the ones it made: device and
        inode), once it has failed: each holds the image's process memory."""
        _unlink_if_same(self.made_files)
        self.made_files.clear()

    def _pty_master(self, obj: File) -> int:
        """A pty master with the image's index and state, and a slave fd of ours for the session
        whose controlling terminal it was (restorer/tty.py)."""
        f = _extra(obj, RecType.FILE_TTY).fields
        what = f"recreate {_users(self.img, obj.objref)} (the pty master of /dev/pts/{f['index']})"
        try:
            master = self.place(tty.open_master(self.img.at(obj.name or "/dev/ptmx"),
                                                (obj.fields["f_flags"] & ~_OPEN_ONLY) | os.O_NOCTTY, f["index"]))
            tty.apply_state(master, f)
            keeper = self.ctty[f["index"]] = self.place(tty.open_slave(master, os.O_RDWR))
        except OSError as exc:
            raise from_oserror(exc, what) from None
        self.extra.append(keeper)
        if note := tty.queue_note(_users(self.img, obj.objref), f):
            self.notes.append(note)
        return master

    def _pipe_end(self, obj: File, pipes: dict[int, tuple[int, int]]) -> int:
        rec = next((r for r in obj.extra if r.type == RecType.FILE_PIPE), None)
        if rec is None:
            raise Unsupported(f"pipe object {obj.objref} has no FILE_PIPE record")
        pid = rec.fields["pipe_id"]
        if pid not in pipes:
            # a packet-mode pipe (pipe2 O_DIRECT) can only be made so: F_SETFL does not set it;
            # the kernel shows O_DIRECT on the write end only
            r, w = os.pipe2(os.O_DIRECT if pid in self._packet_pipes() else 0)
            r, w = self.place(r), self.place(w)
            pipes[pid] = (r, w)
            if rec.fields["pipe_size"]:
                try:
                    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, rec.fields["pipe_size"])
                except OSError:
                    pass  # over /proc/sys/fs/pipe-max-size: the default may still hold the data
        r, w = pipes[pid]
        data = bytes(rec.payload or b"")[:rec.fields["buffered"]]
        if data:
            room = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
            if len(data) > room:  # the write would block for ever: nobody reads yet
                raise Unsupported(f"pipe:[{pid}] held {len(data)} bytes, more than a pipe here can take "
                                  f"({room}: raise fs.pipe-max-size)")
            os.write(w, data)
        end = w if obj.fields["f_mode"] & FMODE_WRITE else r
        if end in self.by_objref.values():
            # Two objects for one pipe end (opened twice through /proc): give each its own.
            end = self.place(os.dup(end))
        fl = fcntl.fcntl(end, fcntl.F_GETFL)
        fcntl.fcntl(end, fcntl.F_SETFL, (fl & ~os.O_NONBLOCK) | (obj.fields["f_flags"] & os.O_NONBLOCK))
        return end

    def _packet_pipes(self) -> set[int]:
        """The pipe ids of packet-mode pipes (an end with O_DIRECT). Found once."""
        if self._packet_ids is None:
            self._packet_ids = set()
            for o in self.img.objects.values():
                rec = _extra(o, RecType.FILE_PIPE) if isinstance(o, File) else None
                if rec is not None and o.fields["f_flags"] & os.O_DIRECT:
                    self._packet_ids.add(rec.fields["pipe_id"])
        return self._packet_ids

    def _fifo_end(self, obj: File, pipes: dict[int, tuple[int, int]]) -> int:
        rec = _extra(obj, RecType.FILE_PIPE)
        pid = rec.fields["pipe_id"] if rec else -obj.objref
        if pid not in pipes:
            # O_RDWR on a FIFO never blocks (Linux): it holds the FIFO open while the real ends
            # are opened non-blocking (a writer alone would get ENXIO) and takes the old bytes.
            holder = open_path(self.img, obj.name, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            self.holders.append(holder)
            pipes[pid] = (-1, -1)
            data = bytes(rec.payload or b"")[:rec.fields["buffered"]] if rec else b""
            if data and (why := _fifo_lives_on(holder)):
                # The pipe the dump saw is still there, with its capacity: its bytes were never
                # lost, or the other party has read them since; written again, they would be
                # read twice.
                self.notes.append(f"{_users(self.img, obj.objref)}: the FIFO {shown_path(self.img.at(obj.name))} {why}, "
                                  f"so the pipe the dump saw lives on: its {len(data)} buffered bytes "
                                  "are left to it, not written again")
                data = b""
            elif rec is not None and rec.fields["pipe_size"]:
                try:
                    fcntl.fcntl(holder, fcntl.F_SETPIPE_SZ, rec.fields["pipe_size"])
                except OSError:
                    pass
            if data:
                os.write(holder, data)
        end = open_path(self.img, obj.name, (obj.fields["f_flags"] & os.O_ACCMODE) | os.O_NONBLOCK)
        fl = fcntl.fcntl(end, fcntl.F_GETFL)
        fcntl.fcntl(end, fcntl.F_SETFL, (fl & ~os.O_NONBLOCK) | (obj.fields["f_flags"] & os.O_NONBLOCK))
        return self.place(end)

    def _unix_socket(self, obj: File) -> int:
        """Connected ends whose peer is in the image come back as a socketpair (an accepted
        connection too: both ends then lose their names), but a socket connected to one that is
        not connected back (a datagram client of a bound server) is connected to its address
        again; listeners are bound again (a dead socket's file at the path is removed first) and
        listen; others are created, bound if they were. Their queued messages are sent to them
        again (see _fill_pair, _send_to_named); pairs are shut down as they were."""
        import socket

        rec = _extra(obj, RecType.FILE_SOCKET)
        if rec is None or rec.fields["family"] != AF_UNIX:
            raise Unsupported(f"socket object {obj.objref} is not a unix socket")
        f = rec.fields
        nonblock = obj.fields["f_flags"] & os.O_NONBLOCK
        idx = UnixIndex.of(self.img)
        peer = idx.by_ino.get(f["peer_ino"]) if f["peer_ino"] else None
        # connected to a socket that is not connected back: a datagram client of a bound server
        # (syslog's pattern). A socketpair would leave it talking to nobody: it is made like an
        # unconnected socket, and connected to the server's address once that is bound.
        one_way = idx.late_peer(rec) is not None
        if f["peer_ino"] and not one_way:
            if peer is None or not _in_fd_table(self.img, peer[0].objref):
                raise Unsupported(f"unix socket object {obj.objref} is connected to socket:[{f['peer_ino']}], "
                                  "which is outside the image")
            key = tuple(sorted((f["ino"], f["peer_ino"])))
            if key not in self.socket_pairs:
                a, b = socket.socketpair(socket.AF_UNIX, f["type"])
                ends = {key[0]: a.detach(), key[1]: b.detach()}
                self.socket_pairs[key] = ends
                for ino, end in ends.items():  # before the queues: see _set_unix_options
                    _set_unix_options(end, idx.by_ino[ino][1].fields["options"])
                self._fill_pair(ends)
            fd = self.socket_pairs[key].pop(f["ino"], None)
            if fd is None:
                raise Unsupported(f"unix socket:[{f['ino']}] appears twice in the image")
        elif _half_dead(rec):
            # Connected to a socket that is gone (its process closed it): a pair whose other end
            # sends the queued messages and closes. Reads then take them and see the end (EOF),
            # writes fail (EPIPE, ECONNREFUSED), as they would have.
            a, b = socket.socketpair(socket.AF_UNIX, f["type"])
            fd, other = a.detach(), b.detach()
            try:
                _set_unix_options(fd, f["options"])
                self._send_queue(obj, other)
                if f["shutdown"] & SHUTDOWN_RESET:
                    # its peer closed with data unread: the kernel gives the survivor ECONNRESET,
                    # as it does here when `other` closes holding this byte
                    os.write(fd, b"\0")
            finally:
                os.close(other)
            _shutdown(fd, f["shutdown"])
        else:
            s = socket.socket(socket.AF_UNIX, f["type"], f["protocol"])
            path = _local_name(rec)
            if path and path[0] != 0 and f["shutdown"] & SHUTDOWN_UNLINKED and obj.name:
                self._bind_renamed(s, obj, self.img.at(path.decode("utf-8", "surrogateescape"), follow=False),
                                   self.img.at(obj.name, follow=False))
            elif path and path[0] != 0 and f["shutdown"] & SHUTDOWN_UNLINKED:
                self._bind_unlinked(s, obj, self.img.at(path.decode("utf-8", "surrogateescape"), follow=False))
            elif path:
                if path[0] != 0:
                    # (under another root, bound at the path the host sees: getsockname says so)
                    # (bind(2) does not follow a symlink at the path: nor does the lookup)
                    path = self.img.at(path.decode("utf-8", "surrogateescape"), follow=False)
                with _bind_lock():  # another restore must not unlink what this one just bound
                    if path[0] != 0 and os.path.exists(path):
                        import stat

                        if stat.S_ISSOCK(os.lstat(path).st_mode):
                            if _socket_alive(path):
                                raise KernelError(_path_in_use(path), errno.EADDRINUSE)
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(path)  # the dead original's socket file
                    s.bind(path)
                    if path[0] != 0:  # (removed again should the restore fail: unbind)
                        st = os.lstat(path)
                        self.bound_paths.append((path, st.st_dev, st.st_ino))
            if f["state"] == TCP_LISTEN:
                s.listen(f["backlog"] or 128)
            fd = s.detach()
            # (its datagrams are sent by _send_to_named, once every socket exists)
            _set_unix_options(fd, f["options"])
            if one_way:
                self.late_connects.append((idx.late_peer_name(rec), obj.objref, f["backlog"]))
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (fl & ~os.O_NONBLOCK) | nonblock)
        return self.place(fd)

    def _fill_pair(self, ends: dict[int, int]) -> None:
        """Each end of a pair made again gets its queued messages, sent by the other end; then
        each end is shut down as it was (after: a shut-down writer could not send them)."""
        index = UnixIndex.of(self.img).by_ino
        (i, fi), (j, fj) = ends.items()
        self._send_queue(index[i][0], fj)
        self._send_queue(index[j][0], fi)
        _shutdown(fi, index[i][1].fields["shutdown"])
        _shutdown(fj, index[j][1].fields["shutdown"])

    def _send_queue(self, obj: File, via: int, to: bytes | None = None) -> None:
        """Queue `obj`'s messages for reading again, in their order: sent through `via`, a socket
        connected to it, or one that sends to its name `to`."""
        import socket

        msgs = socket_queue(obj)
        if not msgs:
            return
        with _sending(via) as s:
            stream = s.type == socket.SOCK_STREAM
            for _, data in msgs:
                _send_all(s, data, to, stream, lambda data: f"{_users(self.img, obj.objref)}: queue "
                                                            f"{len(data)} bytes for reading again")

    def _send_to_named(self, *, before_connect: bool) -> None:
        """Datagrams queued on a bound socket that is not one end of a pair: each is sent to its
        name again, by the socket that sent it when that is in the image (its name is the
        reply's address), else by an unnamed socket (check_files refused the rest). For a socket
        connected late (to a server not connected back), the datagrams before the first from that
        server go `before_connect`, the rest after."""
        import socket

        idx = UnixIndex.of(self.img)
        for ino, (obj, rec) in idx.by_ino.items():
            msgs = socket_queue(obj)
            if not msgs or not idx.sent_by_name(rec) or obj.objref not in self.by_objref:
                continue
            name = _local_name(rec)
            if not name:
                continue  # (check_files refused it: nothing can send to it)
            split = idx.first_from_peer(rec, msgs)
            msgs = msgs[:split] if before_connect else msgs[split:]
            if not msgs:
                continue
            to = self.unlinked.get(obj.objref) or \
                (self.img.at(name.decode("utf-8", "surrogateescape")) if name[0] != 0 else name)
            what = lambda data: f"{_users(self.img, obj.objref)}: queue a {len(data)}-byte datagram for reading again"  # noqa: E731,B023
            anonymous = None
            try:
                for sender, data in msgs:
                    if sender:
                        via = self.by_objref[idx.by_name[(rec.fields["type"], sender)].objref]
                    else:
                        if anonymous is None:
                            anonymous = socket.socket(socket.AF_UNIX, rec.fields["type"])
                        via = anonymous.fileno()
                    with _sending(via) as s:
                        _send_all(s, data, to, False, what)
            finally:
                if anonymous is not None:
                    anonymous.close()

    def _inet_socket(self, obj: File) -> int:
        """A TCP listener is bound again (SO_REUSEADDR: the dead original's connections may sit
        in TIME_WAIT) and listens with its backlog; a UDP socket is bound, and connected again
        if it was. A socket that was neither (TCP_CLOSE: made for a later connect or sendto) is
        bound where it was bound, if it was: by its port, or by its address alone (port 0),
        which only IP_BIND_ADDRESS_NO_PORT gives, set again for the bind (its port is then
        chosen at connect). Unbound, it gets the image's options only (no SO_REUSEADDR of ours).
        Socket options other than these are not in the image."""
        rec = _extra(obj, RecType.FILE_SOCKET)
        f = rec.fields
        payload = bytes(rec.payload or b"")
        local, peer = inet_sockaddr(f["family"], payload[:SOCKADDR_LEN]), inet_sockaddr(f["family"], payload[SOCKADDR_LEN:])
        s = _bound_inet(f, local)
        try:
            if f["protocol"] == IPPROTO_TCP and f["state"] == TCP_LISTEN:
                s.listen(f["backlog"] or 128)
            elif f["protocol"] == IPPROTO_UDP and f["state"] == TCP_ESTABLISHED and peer is not None:
                s.connect(peer)
            fd = s.detach()
        finally:
            s.close()
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (fl & ~os.O_NONBLOCK) | (obj.fields["f_flags"] & os.O_NONBLOCK))
        return self.place(fd)

    def _tcp_connection(self, obj: File) -> int:
        """An established TCP connection, made again in repair mode (kernel/tcprepair.py) at the
        image's local address, connected to its peer without a handshake, with its queues and
        sequence numbers. It stays in repair mode until finish_tcp: a restore that fails before
        closes it silently (no FIN, no RST), and the peer outside, which has seen nothing, can
        be reached by another try."""
        import time

        from ..kernel import tcprepair

        rec = _extra(obj, RecType.FILE_SOCKET)
        tcp = _extra(obj, RecType.FILE_TCP)
        f, tf = rec.fields, tcp.fields
        payload, data = bytes(rec.payload or b""), bytes(tcp.payload or b"")
        local = inet_sockaddr(f["family"], payload[:SOCKADDR_LEN])
        peer = inet_sockaddr(f["family"], payload[SOCKADDR_LEN:])
        stamp = self.img.header.get("time", 0)
        # (SO_REUSEADDR is set again in finish_tcp: leaving repair mode clears it)
        s = tcprepair.make(f["family"], local, peer, tf, data[:tf["inq_len"]], data[tf["inq_len"]:],
                           elapsed=time.time() - stamp if stamp else 0.0, sockopts=_sockopts(f["options"]),
                           where=f"recreate {_users(self.img, obj.objref)} ({_what(obj, FileType.INET_SOCKET)})")
        try:
            s.setblocking(not obj.fields["f_flags"] & os.O_NONBLOCK)
        except BaseException:
            s.close()
            raise
        return self.place(s.detach())

    def _connection_holders(self, obj: File) -> str:
        """_inet_holders of the image's TCP connection `obj` (its 4-tuple)."""
        rec = _extra(obj, RecType.FILE_SOCKET)
        payload = bytes(rec.payload or b"")
        local = inet_sockaddr(rec.fields["family"], payload[:SOCKADDR_LEN])
        peer = inet_sockaddr(rec.fields["family"], payload[SOCKADDR_LEN:])
        return _inet_holders(IPPROTO_TCP, local, peer) if local and peer else ""

    def finish_tcp(self) -> None:
        """Every TCP connection out of repair mode, just before the tasks are let go (restore.py
        _finish) and once every connection exists: leaving repair mode sends a window probe, and
        one sent to a peer in the image not made yet would meet its listener, whose answer is a
        reset. Then SO_REUSEADDR, as every restored TCP socket has, and a shutdown for reading
        where it was so."""
        import socket

        from ..kernel import tcprepair

        for obj in self.tcp_connections:
            rec = _extra(obj, RecType.FILE_SOCKET)
            tcp = _extra(obj, RecType.FILE_TCP)
            s = socket.socket(fileno=self.by_objref[obj.objref])
            try:
                tcprepair.finish(s, tcp.fields, bytes(tcp.payload or b"")[tcp.fields["inq_len"]:])
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if rec.fields["shutdown"] & 1:
                    s.shutdown(socket.SHUT_RD)
            except OSError as exc:
                if exc.errno in (errno.ECONNRESET, errno.EPIPE):
                    # The peer (outside) sent while the namespace was down, met no socket and
                    # was answered with a reset (there is no network lock): the connection is
                    # gone for both. The program finds it reset, as after any peer's reset;
                    # failing the restore would lose the whole namespace for one connection.
                    self.notes.append(f"{_users(self.img, obj.objref)} ({_what(obj, FileType.INET_SOCKET)}): the "
                                      "peer reset the connection while the namespace was down; the program "
                                      "gets ECONNRESET on it")
                    continue
                raise from_oserror(exc, f"{_users(self.img, obj.objref)} ({_what(obj, FileType.INET_SOCKET)}): "
                                        "leave TCP repair mode") from None
            finally:
                s.detach()

    def repair_tcp_again(self) -> None:
        """A restore that fails after finish_tcp: every TCP connection back into repair mode (on
        where it is already), so that the kill and close that follow end them without a FIN or a
        RST. Best effort: a connection the peer closed meanwhile cannot, and is left as it is."""
        from ..kernel import tcprepair

        for obj in self.tcp_connections:
            fd = self.by_objref.get(obj.objref)
            if fd is not None:
                with contextlib.suppress(OSError):
                    tcprepair.set_repair(fd, True)

    def _connect_late(self) -> None:
        import socket

        idx = UnixIndex.of(self.img)
        for addr, objref, _ in sorted(self.late_connects, key=lambda c: c[2]):
            s = socket.socket(fileno=self.by_objref[objref])
            blocking = s.getblocking()
            target = self.img.at(addr.decode("utf-8", "surrogateescape")) if addr and addr[0] != 0 else addr
            server = idx.late_peer(_extra(self.img.obj(objref), RecType.FILE_SOCKET))
            if server is not None and server[0].objref in self.unlinked:
                target = self.unlinked[server[0].objref]  # (its path names nothing)
            try:
                if not target:
                    raise Unsupported(f"{_users(self.img, objref)}: a unix socket connected to an unnamed "
                                      "socket that is not connected back: cannot be connected again")
                s.setblocking(False)  # a full accept queue must fail, not hang the restore
                s.connect(target)
            except OSError as exc:
                raise from_oserror(exc, f"{_users(self.img, objref)}: connect to '{shown_path(target)}'") from None
            finally:
                s.setblocking(blocking)
                s.detach()

    def _bind_unlinked(self, s, obj: File, path: str) -> None:
        """Bind `s` to `path` without anything appearing there: the original's path was unlinked
        (or given to another file) before the dump, and getsockname must still say it. A
        thread with a filesystem context of its own (unshare CLONE_FS: root and cwd, nothing
        else) chroots into a new empty directory, makes the path's directories there and binds:
        the socket file is made inside that directory, nothing at `path` (which may not exist
        any more, or be another file, a live socket even), and the name is the path as given.
        The directory stays until create() has sent the queues and connected the clients (they
        reach the socket through it: `unlinked`), then goes, leaving the socket bound to an
        unlinked file, as the original was."""
        top = tempfile.mkdtemp(prefix="ckptrace-unlinked-")
        self.unlinked_dirs.append(top)
        self.unlinked[obj.objref] = self._bind_within(s, top, path, "its path unlinked before the dump")

    @staticmethod
    def _bind_within(s, top: str, path: str, why: str) -> str:
        """Bind `s` to `path` chroot'ed in directory `top` (see _bind_unlinked): where the socket
        file is, as the controller sees it."""
        import threading

        from .threads import CLONE_FS  # (threads imports memory, which imports this module)

        failed: list[BaseException] = []

        def bind() -> None:
            try:
                if libc.unshare(CLONE_FS) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err), "unshare(CLONE_FS)")
                os.chroot(top)
                os.chdir("/")
                parent = os.path.dirname(path)
                if parent:
                    os.makedirs(parent, exist_ok=True)
                s.bind(path)
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller
                failed.append(exc)

        t = threading.Thread(target=bind, name="ckptrace-bind-unlinked")
        t.start()
        t.join()
        if failed:
            raise from_oserror(failed[0], f"bind '{shown_path(path)}' ({why})") \
                if isinstance(failed[0], OSError) else failed[0]
        return os.path.join(top, path.lstrip("/"))

    def _bind_renamed(self, s, obj: File, path: str, name: str) -> None:
        """Bind `s` to `path` with its file at `name`, another name in the same directory: the
        original's file was renamed after its bind (bind-then-rename publishes a socket at once:
        a JVM's attach listener binds .java_pidN.tmp, then renames it to .java_pidN), so
        getsockname says `path` and clients connect to `name`. Bound as _bind_unlinked binds,
        but in a directory made inside `name`'s, then the file renamed to `name`: `path`, which
        named nothing of it at the dump (nothing, or another file), is not touched. The dead
        original's file at `name` is replaced (a live socket's, or any other file, fails the
        restore with EADDRINUSE, as a bind there would)."""
        import shutil

        why = f"its file renamed to '{shown_path(name)}' before the dump"
        try:
            top = tempfile.mkdtemp(prefix=".ckptrace-bind-", dir=os.path.dirname(name) or ".")
        except OSError as exc:
            raise from_oserror(exc, f"bind '{shown_path(path)}' ({why}): make a directory beside it") from None
        try:
            made = self._bind_within(s, top, path, why)
            with _bind_lock():  # (another restore must not take the name between the look and the rename)
                try:
                    mode = os.lstat(name).st_mode
                except FileNotFoundError:
                    pass
                else:
                    if not stat.S_ISSOCK(mode):
                        raise KernelError(f"unix socket file {shown_path(name)} (renamed from {shown_path(path)} before the dump): "
                                          "another file is there now", errno.EADDRINUSE)
                    if _socket_alive(name):
                        raise KernelError(_path_in_use(name), errno.EADDRINUSE)
                try:
                    os.rename(made, name)  # (over the dead original's socket file, at once)
                except OSError as exc:
                    raise from_oserror(exc, f"rename the socket file bound at '{shown_path(path)}' to '{shown_path(name)}'") from None
                st = os.lstat(name)
                self.bound_paths.append((name, st.st_dev, st.st_ino))  # (removed should the restore fail)
        finally:
            shutil.rmtree(top, ignore_errors=True)
        self.unlinked[obj.objref] = name

    def unbind(self) -> None:
        """Remove the socket files this restore bound, once it has failed: left behind, each
        would be a dead socket's file at the path (a restore tried again removes it, but any
        other program binding there meets EADDRINUSE). Only a file that is still the one the bind
        made (device and inode), under the bind lock: another restore removing a dead file and
        binding there meanwhile has its own. (The dead original's file, removed to bind, is not
        put back.)"""
        with _bind_lock():
            _unlink_if_same(self.bound_paths)
        self.bound_paths.clear()

    def _remove_unlinked(self) -> None:
        import shutil

        for top in self.unlinked_dirs:
            shutil.rmtree(top, ignore_errors=True)
        self.unlinked_dirs.clear()
        self.unlinked.clear()

    def _inotify(self, obj: File) -> int:
        """Watches are added again by path, in wd order; the kernel hands out wds in sequence, so
        wds the image skips are used up by throw-away watches on an empty temp dir (whose
        IN_IGNORED events are then drained)."""
        rec = _extra(obj, RecType.FILE_INOTIFY)
        watches = _inotify_watches(rec)
        fd = self.place(_check_libc(libc.inotify_init1(os.O_NONBLOCK), "inotify_init1"))
        scratch = tempfile.mkdtemp(prefix="ckptrace-wd-")
        try:
            next_wd = 1
            for wd, mask, path in sorted(watches):
                if not path:
                    raise Unsupported(f"inotify object {obj.objref}: the inode of watch {wd} has no path")
                while next_wd < wd:
                    dummy = _check_libc(libc.inotify_add_watch(fd, scratch.encode(), 0x100), "inotify_add_watch")
                    libc.inotify_rm_watch(fd, dummy)
                    next_wd = dummy + 1
                got = _check_libc(libc.inotify_add_watch(fd, self.img.at(path).encode("utf-8", "surrogateescape"),
                                                        ctypes.c_uint32(mask)),
                                  f"inotify_add_watch({shown_path(path)})")
                if got != wd:
                    raise Unsupported(f"inotify object {obj.objref}: watch on {shown_path(path)} got wd {got}, not {wd}")
                next_wd = got + 1
            while True:
                try:
                    os.read(fd, 65536)  # the throw-away watches' IN_IGNORED events
                except BlockingIOError:
                    break
        finally:
            os.rmdir(scratch)
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (fl & ~os.O_NONBLOCK) | (obj.fields["f_flags"] & os.O_NONBLOCK))
        return fd

    def _timerfd(self, obj: File) -> int:
        rec = _extra(obj, RecType.FILE_TIMERFD)
        if rec is None:
            raise Unsupported(f"timerfd object {obj.objref} has no FILE_TIMERFD record")
        t = rec.fields
        fd = syscall(SYS_timerfd_create, t["clockid"], obj.fields["f_flags"] & os.O_NONBLOCK,
                     what="timerfd_create")
        fd = self.place(fd)
        import time

        from ..objects.anon import NS, TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET, abs_realtime
        from .timers import timerfd_abs_rearm

        value = (t["value_sec"], t["value_nsec"])
        flags, nticks = 0, t["ticks"]
        if abs_realtime(t):
            # TFD_TIMER_ABSTIME on CLOCK_REALTIME(_ALARM): the image holds the deadline as ns
            # after HEADER.time (objects/anon.py). Re-armed at that date, absolute (and
            # TFD_TIMER_CANCEL_ON_SET kept), it fires when it would have, not late by the time
            # the namespace spent dumped; a date already past fires at once.
            deadline, nticks = timerfd_abs_rearm(
                (self.img.header["time"] + value[0]) * NS + value[1], t["interval_sec"] * NS + t["interval_nsec"],
                nticks, time.clock_gettime_ns(time.CLOCK_REALTIME))
            value = (0, 0) if deadline is None else divmod(deadline, NS)
            flags = t["settime_flags"] & (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET)
        elif value == (0, 0):
            # Relative to now otherwise: fdinfo shows the time left, and a monotonic or boottime
            # clock does not carry across a restore (it counts from this host's boot), so the
            # time left is what there is to keep. An interval timer that expired and was not
            # forwarded shows 0 left (the dumper forwards it with timerfd_gettime first; older
            # images may have it): the next expiration is due within one interval. 0 and no
            # interval: disarmed.
            value = (t["interval_sec"], t["interval_nsec"])
        spec = (ctypes.c_int64 * 4)(t["interval_sec"], t["interval_nsec"], *value)
        if value != (0, 0):
            syscall(SYS_timerfd_settime, fd, flags, ctypes.addressof(spec), 0, what="timerfd_settime")
        if nticks:
            ticks = ctypes.c_uint64(nticks)
            try:
                fcntl.ioctl(fd, TFD_IOC_SET_TICKS, bytes(ticks))
            except OSError:
                raise Unsupported(f"timerfd object {obj.objref} has {nticks} unread expirations "
                                  "and this kernel cannot set them (TFD_IOC_SET_TICKS)") from None
        return fd

    def _write_contents(self, fd: int, obj: File) -> None:
        """The object's FILE_DATA into the empty file `fd`: sized once, then only the stored
        extents written (holes stay holes, unallocated)."""
        sized = False
        for r in obj.extra:
            if r.type != RecType.FILE_DATA:
                continue
            if not sized:
                os.ftruncate(fd, r.fields["size"])
                sized = True
            if r.payload:
                os.pwrite(fd, r.payload, r.fields["offset"])
            elif r.payload is None and r.payload_len:  # left in the image file by the reader
                self._copy_from_image(fd, r)

    def _memfd(self, obj: File) -> int:
        """A memfd with the object's contents: sized once, then only the stored extents written
        (holes stay holes, unallocated). A memfd's seals come back too (`_new_memfd`, `_seal`),
        added once the contents are written."""
        name = os.path.basename(obj.name or "restored").removeprefix("memfd:")[:200] or "restored"
        seals = memfd_seals(obj)
        fd = self._new_memfd(obj, name, seals)
        self._write_contents(fd, obj)
        os.lseek(fd, obj.fields["f_pos"], os.SEEK_SET)
        if seals is not None:
            self._seal(fd, obj, seals)
        return fd

    def _new_memfd(self, obj: File, name: str, seals: int | None) -> int:
        """An empty memfd for a MEMFD object or a SHMEM segment that was one, placed: made
        sealable (or with MFD_NOEXEC_SEAL for F_SEAL_EXEC) unless its seals were just
        F_SEAL_SEAL, as a memfd made without MFD_ALLOW_SEALING has, or are unknown (None)."""
        sealable = seals is not None and seals != F_SEAL_SEAL
        # The exec bits: MFD_NOEXEC_SEAL makes the memfd 0666 and seals that. The image has no
        # mode, so a memfd sealed F_SEAL_EXEC that a process runs (its exe or an exec mapping:
        # runc seals its binary copy so) is made executable and sealed by F_ADD_SEALS instead.
        # Any other memfd asks for MFD_EXEC where the kernel knows it (6.3), so that a host's
        # vm.memfd_noexec does not make it noexec, and sealable, behind our back.
        if sealable and seals & F_SEAL_EXEC and not self._executed(obj.objref):
            flags = MFD_NOEXEC_SEAL
        else:
            flags = (MFD_ALLOW_SEALING if sealable else 0) | MFD_EXEC
        try:
            fd = os.memfd_create(name, flags)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not flags & MFD_EXEC:
                raise from_oserror(exc, f"memfd_create for {obj.name or 'a memfd'} (object {obj.objref})") from None
            fd = os.memfd_create(name, flags & ~MFD_EXEC)  # before 6.3: executable anyway
        return self.place(fd)

    def _seal(self, fd: int, obj: File, image_seals: int) -> None:
        """The image's seals on the memfd `_new_memfd` made for `obj`, now that its contents
        are written. Those that would refuse or lose a mapping the tasks are yet to make wait
        (`late_seals`, added by `add_late_seals` once every process's memory is rebuilt):
        F_SEAL_FUTURE_WRITE (and F_SEAL_SEAL, which would forbid adding it later) when a shared
        VMA of the file may write; the kernel lets such a mapping outlive the seal, but not be
        made after it. F_SEAL_WRITE cannot coexist with such a VMA and is added at once, so a
        read-only shared mapping of a write-sealed memfd is made as the kernel allows it: after
        the seal."""
        late = 0
        if image_seals != F_SEAL_SEAL:  # (else made unsealable, which says F_SEAL_SEAL)
            seals = image_seals & ~fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            late = seals & (F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) if self._shared_maywrite(obj.objref) else 0
            _add_seals(fd, seals & ~late, obj)
            if late:
                self.late_seals.append((fd, late, obj))
        got, want = fcntl.fcntl(fd, fcntl.F_GET_SEALS), image_seals & ~late
        if got != want:  # a host policy (vm.memfd_noexec = 2) had its say
            raise Unsupported(f"memfd {obj.name or ''} (object {obj.objref}) came out sealed "
                              f"{'|'.join(flag_names(got, SEAL_NAMES)) or 'not at all'}, not "
                              f"{'|'.join(flag_names(want, SEAL_NAMES))}: see this host's vm.memfd_noexec")

    def _mappings_of(self, objref: int):
        """Every VMA of the image, in any process, that maps the file object."""
        return (v for mm in self.img.objects.values() if isinstance(mm, Mm) for v in mm.vmas
                if v.fields["vma_objref"] == objref)

    def _executed(self, objref: int) -> bool:
        """Whether some process runs the file object: its exe, or a mapping of it may execute."""
        return any(isinstance(mm, Mm) and mm.fields["exe_objref"] == objref for mm in self.img.objects.values()) \
            or any(v.fields["vm_flags"] & VM_EXEC for v in self._mappings_of(objref))

    def _copy_from_image(self, fd: int, r) -> None:
        """A FILE_DATA payload the reader left in the image, copied a chunk at a time."""
        self._copy_image_bytes(fd, r.payload_offset, r.payload_len, r.fields["offset"],
                               f"FILE_DATA record {r.index}")

    def _copy_image_bytes(self, fd: int, src: int, n: int, dst: int, what: str) -> None:
        """`n` bytes at `src` in the image file written to `fd` at `dst`, a chunk at a time."""
        if self.image is None:
            raise KernelError(f"the contents of {what} were not read", errno.EIO)
        done, chunk = 0, 4 << 20
        while done < n:
            self.image.seek(src + done)
            data = self.image.read(min(chunk, n - done))
            if not data:
                raise KernelError(f"reading {what} of the image", errno.EIO)
            os.pwrite(fd, data, dst + done)
            done += len(data)

    def _shared_maywrite(self, objref: int) -> bool:
        """Whether some shared VMA of the image maps the file object (a memfd, or a SHMEM
        segment) and may write it."""
        return any(v.fields["vma_type"] in (VmaType.SHARED_FILE, VmaType.SHARED_ANON)
                   and v.fields["vm_flags"] & (VM_WRITE | VM_MAYWRITE) for v in self._mappings_of(objref))

    def set_owners(self, host_of, set_async) -> None:
        """O_ASYNC, then the I/O signal owner and signal, of each file that had them; called once
        every task exists (an owner may be any thread). set_async(objref) sets O_ASYNC from a
        restored process that holds the file: the registration keeps the number of the fd it
        was made through (the si_fd of the signals), and for a tty it makes its caller the owner,
        so the owner comes after. host_of(owner_type, in-namespace id) gives a host id, None for
        one that is not there."""
        for obj in self.img.objects.values():
            if not isinstance(obj, File) or obj.objref not in self.by_objref:
                continue
            fd = self.by_objref[obj.objref]
            if obj.fields["f_flags"] & os.O_ASYNC:
                set_async(obj.objref)
            rec = _extra(obj, RecType.FILE_OWNER)
            if rec is None:
                continue
            o = rec.fields
            try:
                if o["signal"]:
                    fcntl.fcntl(fd, F_SETSIG, o["signal"])
                host = host_of(o["owner_type"], o["owner_pid"]) if o["owner_pid"] else None
                if o["owner_pid"] and not host:
                    raise Unsupported(f"{_users(self.img, obj.objref)}: its I/O signal owner "
                                      f"{o['owner_pid']} is not in the restored namespace")
                if host:
                    fcntl.fcntl(fd, F_SETOWN_EX, F_OWNER_EX.pack(o["owner_type"], host))
            except OSError as exc:
                raise from_oserror(exc, f"{_users(self.img, obj.objref)}: set its I/O signal owner") from None

    def holder(self, objref: int) -> tuple[int, int]:
        """(pid, fd): the first process in the image holding file `objref`, and its number."""
        for t in self.img.processes():
            table = self.img.obj(t.files_objref)
            for d in getattr(table, "fds", []):
                if d["fd_objref"] == objref:
                    return t.tid, d["fd_descriptor"]
        raise Unsupported(f"file object {objref} has O_ASYNC but no process holds it")

    def add_late_seals(self) -> None:
        """The memfd seals `_memfd` held back, now that every task has mapped its files."""
        for fd, seals, obj in self.late_seals:
            _add_seals(fd, seals, obj)
        self.late_seals.clear()

    def _map_files(self, mm: Mm) -> None:
        exe = self.img.obj(mm.fields["exe_objref"]) if mm.fields["exe_objref"] else None
        if isinstance(exe, File) and exe.name:
            self.exe_fd(exe)
        for vma in mm.vmas:
            vf = vma.fields
            t = VmaType(vf["vma_type"])
            if t in (VmaType.FILE, VmaType.SHARED_FILE):
                self.vma_fd(vf)
            elif t is VmaType.SHARED_ANON:
                seg = self.img.obj(vf["vma_objref"])
                if not isinstance(seg, File) or seg.ftype != FileType.SHMEM:
                    raise Unsupported(f"shared VMA {vf['vm_start']:#x} names no SHMEM file")
                fd = self.shmem.get(vf["vma_objref"])
                if fd is None:
                    seals = memfd_seals(seg)
                    if seals is None:  # anonymous or SysV, or an image without seals: as always
                        fd = self.place(os.memfd_create(_segment_name(seg), 0))
                    else:
                        fd = self._new_memfd(seg, _segment_name(seg), seals)
                    self.shmem[vf["vma_objref"]] = fd
                end = vf["vm_pgoff"] * PAGE_SIZE + (vma.end - vma.start)
                if os.fstat(fd).st_size < end:
                    os.ftruncate(fd, end)

    def _seal_segments(self) -> None:
        """The seals of SHMEM segments that were memfds, once every VMA has sized them. A
        sealed segment is filled here, from the pages its VMAs store, rather than by the memory
        rebuild (`filled`): F_SEAL_WRITE forbids writing it, and must precede its read-only
        shared mappings (see `_seal`); the seals then go on as a memfd's."""
        for objref, fd in self.shmem.items():
            seg = self.img.obj(objref)
            seals = memfd_seals(seg)
            if seals is None:
                continue
            if seals & ~fcntl.fcntl(fd, fcntl.F_GET_SEALS):  # (none to add: filled as any other)
                for v in self._mappings_of(objref):
                    base = v.fields["vm_pgoff"] * PAGE_SIZE - v.start
                    for run in v.runs:  # (each page of the segment is stored with one VMA)
                        n = run.npages * PAGE_SIZE
                        self._copy_image_bytes(fd, run.offset, n, base + run.vaddr, f"pages at {run.vaddr:#x}")
                        self.bytes_filled += n
                self.filled.add(objref)
            self._seal(fd, seg, seals)

    def exe_fd(self, exe: File) -> int:
        if exe.ftype in (FileType.MEMFD, FileType.DELETED):
            return self.vma_fd(dict(vma_objref=exe.objref, vm_start=0))
        return self.map_fd(exe.name, os.O_RDONLY)

    def vma_fd(self, vf: dict) -> int:
        """The descriptor a file-backed VMA is mapped from: its file reopened by path, or for an
        unlinked file or memfd, a memfd holding the contents the image carries (one per object,
        so processes sharing such a mapping share it again). When an fd table holds that object
        too, the VMA maps the very memfd the fd gets: one inode, as before the dump, so writes
        through the fd show in a shared mapping."""
        src = self.img.obj(vf["vma_objref"])
        if not isinstance(src, File) or not src.name:
            raise Unsupported(f"VMA {vf['vm_start']:#x} maps a file the image does not name")
        if src.ftype in (FileType.MEMFD, FileType.DELETED):
            fd = self.mapped_data.get(src.objref)
            if fd is None:
                own = self.by_objref.get(src.objref)
                if own is not None:
                    # A second description of the same inode (not a dup: its offset is the fd's
                    # own), read-write so that a shared writable mapping may use it.
                    try:
                        fd = self.place(os.open(f"/proc/self/fd/{own}", os.O_RDWR | os.O_CLOEXEC))
                    except OSError as exc:
                        raise from_oserror(exc, f"reopen {shown_path(src.name)} for its mapping at {vf['vm_start']:#x}") from None
                else:
                    fd = self._memfd(src)
                self.mapped_data[src.objref] = fd
            return fd
        return self.map_fd(src.name, vma_open_mode(vf))

    def vma_path(self, vf: dict) -> str:
        """The path of the file a VMA maps, as this host finds it (for messages)."""
        src = self.img.obj(vf["vma_objref"])
        return shown_path(self.img.at(src.name)) if isinstance(src, File) and src.name else f"object {vf['vma_objref']}"

    def map_fd(self, name: str, mode: int) -> int:
        """The fd a file mapped from image path `name` is mapped from (one per path and mode)."""
        key = (name, mode)
        if key not in self.mapped:
            try:
                # (O_NONBLOCK: a FIFO put at the path since the validation would block the open;
                # mmap then refuses it, and ignores the flag)
                self.mapped[key] = self.place(open_path(self.img, name, mode | os.O_NONBLOCK))
            except OSError as exc:
                raise from_oserror(exc, f"open {shown_path(self.img.at(name))} to map it") from None
        return self.mapped[key]

    def all_fds(self) -> list[int]:
        return sorted({*self.by_objref.values(), *self.mapped.values(), *self.shmem.values(),
                       *self.mapped_data.values(), *self.extra})

    def close(self) -> None:
        for fd in self.all_fds():
            try:
                os.close(fd)
            except OSError:
                pass
        self.by_objref.clear()
        self.mapped.clear()
        self.shmem.clear()
        self.mapped_data.clear()
        for fd in self.holders + [fd for pair in self.socket_pairs.values() for fd in pair.values()]:
            os.close(fd)
        for fd in self.hungup.values():  # (create failed before closing them)
            os.close(fd)
        self.hungup.clear()
        self.holders.clear()
        self.socket_pairs.clear()
        self._remove_unlinked()  # (create failed before removing them)


def memfd_seals(obj: File) -> int | None:
    """The F_GET_SEALS a MEMFD object, or a SHMEM segment that was a memfd, had (FILE.f_version,
    docs/format.md); None when the image does not say (older images, other kinds): such a file
    comes back unsealable, as it used to."""
    v = obj.fields["f_version"]
    if obj.ftype not in (FileType.MEMFD, FileType.SHMEM) or not v & MEMFD_SEALS_KNOWN:
        return None
    return v & 0xFFFFFFFF


def _add_seals(fd: int, seals: int, obj: File) -> None:
    if not seals:
        return
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except OSError as exc:
        names = "|".join(flag_names(seals, SEAL_NAMES))
        raise from_oserror(exc, f"seal {obj.name or 'a memfd'} (object {obj.objref}) with {names}") from None


def _inotify_watches(rec) -> list[tuple[int, int, str]]:
    """(wd, mask, path) of a FILE_INOTIFY record's watches (none without one); the reader has
    checked the payload holds exactly nwatch of them."""
    if rec is None:
        return []
    return [(w.wd, w.mask, w.path) for w in inotify_watches(rec.payload or b"", rec.fields["nwatch"])]


def _check_libc(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise from_oserror(OSError(err, os.strerror(err)), what)
    return ret


def _sockopts(options: int) -> list[tuple[int, int]]:
    """(level, optname) of the boolean socket options the image says were set."""
    return [lo for bit, lo in SOCKOPTS.items() if options & bit]


def _set_options(s, options: int) -> None:
    """The boolean socket options the image says were set (before bind: V6ONLY and REUSEPORT
    only count then)."""
    for level, opt in _sockopts(options):
        s.setsockopt(level, opt, 1)


def _set_unix_options(fd: int, options: int) -> None:
    """A unix socket's boolean options, set before anything is queued on it again: the kernel
    attaches credentials to a message as it is sent, and only when its receiver (or sender) has
    SO_PASSCRED then; one queued earlier reads back with the overflow ids (65534), not the
    restorer's credentials."""
    import socket

    s = socket.socket(fileno=fd)
    try:
        _set_options(s, options)
    finally:
        s.detach()


def _segment_name(seg: File) -> str:
    """What a shared segment's memfd is called: a memfd's own name when the segment was one
    (mapped MAP_SHARED, its fd closed: /proc shows "/memfd:NAME (deleted)"), else "shmem"."""
    name = seg.name or ""
    if name.startswith("/memfd:"):
        return name[len("/memfd:"):].removesuffix(DELETED_SUFFIX)[:200] or "shmem"
    return "shmem"


def socket_queue(obj: File) -> list[tuple[bytes, bytes]]:
    """(sender's name, message) of every FILE_SOCKET_QUEUE record of a socket, oldest first."""
    out = []
    for r in obj.extra:
        if r.type == RecType.FILE_SOCKET_QUEUE:
            raw = bytes(r.payload or b"")
            out.append((raw[:r.fields["addrlen"]], raw[r.fields["addrlen"]:]))
    return out


def _half_dead(rec) -> bool:
    """A unix socket whose connected peer is gone: getpeername still answered (the peer sockaddr
    has its family), sock_diag names no peer any more. (Not the state alone: this kernel reports
    every datagram socket "established".) A bound datagram socket keeps its name instead: others
    may send to it."""
    f = rec.fields
    return peer_gone(f, bytes(rec.payload or b"")) and (f["type"] != SOCK_DGRAM or not _local_name(rec))


def _unix_by_ino(img: Image) -> dict[int, tuple[File, object]]:
    out = {}
    for o in img.objects.values():
        if isinstance(o, File) and o.ftype == FileType.UNIX_SOCKET:
            r = _extra(o, RecType.FILE_SOCKET)
            if r is not None:
                out[r.fields["ino"]] = (o, r)
    return out


@dataclass
class UnixIndex:
    """The image's unix sockets, looked up by inode and by name; built once per image (each
    socket's checks and sends look their peers and senders up in it)."""

    img: Image
    by_ino: dict[int, tuple[File, object]]
    by_name: dict[tuple[int, bytes], File]  # bound ones in fd tables, by (type, name)
    in_tables: set[int]  # FILE objrefs some fd table holds

    @staticmethod
    def of(img: Image) -> "UnixIndex":
        cached = img.derived.get("unix")
        if cached is None:
            by_ino = _unix_by_ino(img)
            tables = {d["fd_objref"] for o in img.objects.values() if isinstance(o, FileTable) for d in o.fds}
            by_name = {}
            for o, r in by_ino.values():
                name = _local_name(r)
                if name and o.objref in tables:
                    by_name[(r.fields["type"], name)] = o
            cached = UnixIndex(img, by_ino, by_name, tables)
            img.derived["unix"] = cached
        return cached

    def sent_by_name(self, rec) -> bool:
        """Whether a unix socket's queue goes back through its name (FileSet._send_to_named): it
        is neither one end of a pair made again nor connected to a socket that is gone."""
        # (connected otherwise: one end of a pair, or refused: its peer is outside the image)
        return not _half_dead(rec) and (not rec.fields["peer_ino"] or self.late_peer(rec) is not None)

    def late_peer(self, rec):
        """(FILE, FILE_SOCKET) of the server a socket is connected to that is not connected back
        (restore connects it late); None for a pair, a peer outside the image, or no peer."""
        f = rec.fields
        peer = self.by_ino.get(f["peer_ino"]) if f["peer_ino"] else None
        return peer if peer is not None and peer[1].fields["peer_ino"] != f["ino"] else None

    def late_peer_name(self, rec) -> bytes:
        """The name of the server a socket connects to late; b"" if none."""
        peer = self.late_peer(rec)
        return _local_name(peer[1]) if peer is not None else b""

    def first_from_peer(self, rec, msgs: list[tuple[bytes, bytes]]) -> int:
        """Where, in a late-connected socket's queue, its server's datagrams begin (they came
        after it connected); len(msgs) when it connects to nobody late."""
        peer = self.late_peer_name(rec)
        return next((i for i, (sender, _) in enumerate(msgs) if peer and sender == peer), len(msgs))

    def queue_problem(self, obj: File, rec) -> str | None:
        """Why restore could not queue a unix socket's messages again (None: it can)."""
        msgs = socket_queue(obj)
        if not msgs or not self.sent_by_name(rec):
            return None
        name = _local_name(rec)
        if rec.fields["type"] != SOCK_DGRAM:
            return (f"{_users(self.img, obj.objref)}: {len(msgs)} message(s) queued on an unconnected "
                    f"{_SOCK_TYPE_NAMES.get(rec.fields['type'], 'unix')} socket, which nothing could send again")
        if not name:
            return (f"{_users(self.img, obj.objref)}: {len(msgs)} datagram(s) queued on an unnamed, unconnected "
                    "unix socket, which nothing could send again")
        for sender, _ in msgs:
            if sender and (rec.fields["type"], sender) not in self.by_name:
                shown = sender.decode("utf-8", "replace").replace("\0", "@", 1)
                return (f"{_users(self.img, obj.objref)}: a datagram queued on it was sent from {shown!r}, a "
                        "socket that is not in the image (its reply address cannot be made again)")
        # Datagrams from others than its server are held to the receiver's queue length (those of
        # a connected peer are not): the original had them all; restore must take them all again.
        others = self.first_from_peer(rec, msgs)
        qlen = procfs.sysctl_int("net/unix/max_dgram_qlen")
        if qlen is not None and others > qlen:
            return (f"{_users(self.img, obj.objref)}: {others} datagrams queued on it from sockets other than its "
                    f"peer, more than net.unix.max_dgram_qlen ({qlen}) lets restore queue again")
        return None

    def peer_problem(self, obj: File, rec) -> str | None:
        """A connected unix socket whose peer is outside the image (a host daemon's socket, a
        listener of the host's that had not accepted it yet)."""
        f = rec.fields
        if not f["peer_ino"]:
            return None
        peer = self.by_ino.get(f["peer_ino"])
        if peer is not None and peer[0].objref in self.in_tables:
            return None
        # who holds the other end, for the user to find (a host client to disconnect): a scan of
        # every fd table, made only for a refusal
        held = _named(procfs.socket_holders({f["peer_ino"]}))
        who = (f"held by host pid {listed(held)}" if held else
               "which no process has open now")
        return (f"{_users(self.img, obj.objref)}: a unix socket connected to socket:[{f['peer_ino']}], which is "
                f"outside the image ({who})")


_SOCK_TYPE_NAMES = {1: "stream", 2: "datagram", 5: "seqpacket"}


def _send_all(s, data: bytes, to, stream: bool, what) -> None:
    """Send one message (a datagram whole, a stream's bytes in as many writes as it takes) without
    blocking: nobody reads yet. A sender's buffer that is too small for it (full: EAGAIN; smaller
    than one datagram: EMSGSIZE) is raised (root may go past wmem_max), once; the caller puts it
    back (_put_sndbuf_back). `what(data)`: what was being done, for an error (made only then:
    naming the socket's users scans every fd table)."""
    import socket

    view = memoryview(data)
    raised = False
    while True:
        try:
            n = s.sendto(view, socket.MSG_DONTWAIT, to) if to else s.send(view, socket.MSG_DONTWAIT)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EMSGSIZE):
                raise from_oserror(exc, what(data)) from None
            if raised:
                why = "the receiving socket's queue is full: net.unix.max_dgram_qlen?" \
                    if exc.errno == errno.EAGAIN else "larger than a socket buffer can be"
                raise KernelError(f"{what(data)} ({why})", exc.errno) from None
            have = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, min(have + 4 * len(view) + (1 << 16), (1 << 30)))
            raised = True
            continue
        if not stream:
            return
        view = view[n:]
        if not view:
            return


@contextlib.contextmanager
def _sending(fd: int):
    """A socket object over `fd` to send a queue through (_send_all), its send buffer put back
    afterwards as it was (_put_sndbuf_back); the fd stays open."""
    import socket

    s = socket.socket(fileno=fd)
    before = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    try:
        yield s
    finally:
        _put_sndbuf_back(s, before)
        s.detach()


def _put_sndbuf_back(s, before: int) -> None:
    """The send buffer as it was before _send_all raised it (the kernel doubles what it is given:
    half of what SO_SNDBUF read). What is queued meanwhile stays charged to it, as before."""
    import socket

    if s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) != before:
        s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, before // 2)


def _shutdown(fd: int, mode: int) -> None:
    """shutdown(2) as sock_diag reported it: RCV_SHUTDOWN 1, SEND_SHUTDOWN 2 (SHUT_RD + 1...)."""
    import socket

    if mode & 3:
        s = socket.socket(fileno=fd)
        try:
            s.shutdown((mode & 3) - 1)
        finally:
            s.detach()


def _local_name(rec) -> bytes:
    """A FILE_SOCKET record's own name (_sun_path of its local sockaddr)."""
    return _sun_path(bytes(rec.payload or b"")[:SOCKADDR_LEN])


def _sun_path(sockaddr: bytes) -> bytes:
    """sun_path of a struct sockaddr_un as the kernel returned it: b"" when unnamed, leading NUL
    for an abstract name (kept whole), else the path up to its NUL."""
    path = sockaddr[2:110]
    if not path.strip(b"\0"):
        return b""
    if path[0] == 0:
        return path.rstrip(b"\0")
    return path.split(b"\0", 1)[0]


def _extra(obj: File, t: RecType):
    return next((r for r in obj.extra if r.type == t), None)


def vma_open_mode(vf: dict) -> int:
    """A shared mapping that may be written needs the file open for writing; all else read-only."""
    if vf["vma_type"] == VmaType.SHARED_FILE and vf["vm_flags"] & (VM_WRITE | VM_MAYWRITE) \
            and vf["vm_flags"] & VM_SHARED:
        return os.O_RDWR
    return os.O_RDONLY


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise UsageError(f"restore needs up to {need} descriptors but this process's hard RLIMIT_NOFILE "
                             f"is {hard} (ulimit -Hn)")
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        except (OSError, ValueError) as exc:
            raise KernelError(f"raise RLIMIT_NOFILE to {need}", getattr(exc, "errno", 0) or errno.EPERM) from None
