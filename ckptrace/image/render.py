"""`ckptrace show` and `ckptrace decode`: pure functions from a parsed image to text or JSON."""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

from .reader import File, FileTable, Image, Mm, Task, file_data_size, read_image
from .records import (CLONE_NEWCGROUP, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWTIME, CLONE_NEWUTS, FILE_NAMES,
                      NS_FLAG_NAMES, NS_LO_DOWN, NS_OWN_PROC, NS_TIME_CHILDREN, O_FLAG_NAMES, O_TMPFILE, Payload, PAGE_SIZE, RLIMIT_NAMES, SECCOMP_MODES, TASK_NS_FLAG_NAMES, VM_FLAG_NAMES, VM_MAYSHARE,
                      VMA_NAMES, FileType, RecType, flag_names, format_time, inotify_watches, json_safe, signal_name,
                      wait_status_text)
from .stream import Record, open_image


def plural(n: int, noun: str) -> str:
    """'1 process', '2 processes', '0 tasks': counts in words, as a user reads them."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun}{'es' if noun.endswith(('s', 'x', 'ch', 'sh')) else 's'}"


def listed(items: list, keep: int = 1) -> str:
    """The first `keep` items, comma-separated, and how many more: 'host pid 7 (and 2 more)'.
    For messages that name who holds something without drowning the user in pids."""
    shown = ", ".join(str(i) for i in items[:keep])
    return shown + (f" (and {len(items) - keep} more)" if len(items) > keep else "")


def human(n: int, *, short: bool = False) -> str:
    """1536 -> '1.5 KiB' (short: '1.5K', for narrow columns)."""
    units = ("B", "K", "M", "G", "T") if short else ("B", "KiB", "MiB", "GiB", "TiB")
    sep = "" if short else " "
    for unit in units:
        if n < 1024 or unit == units[-1]:
            return f"{n:.0f}{sep}{unit}" if unit == "B" else f"{n:.1f}{sep}{unit}"
        n /= 1024
    return str(n)


def prot_str(prot: int, flags: int) -> str:
    """rwxp / r--s as /proc/PID/maps prints it: "s" for a MAP_SHARED mapping, which is
    VM_MAYSHARE (VM_SHARED is missing from a shared mapping that can never be written)."""
    return ("r" if prot & 1 else "-") + ("w" if prot & 2 else "-") + ("x" if prot & 4 else "-") + \
        ("s" if flags & VM_MAYSHARE else "p")


def open_flags_text(flags: int) -> str:
    """FILE.f_flags as open(2) spells them: the access mode (O_RDONLY is 0, so it has no bit)
    and the O_ names of the other bits, any unnamed ones in hex ("O_RDWR|O_APPEND"); O_TMPFILE
    for its two bits (O_DIRECTORY and __O_TMPFILE), as it was asked for."""
    acc = ("O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE")[flags & 3]
    tmpfile = ["O_TMPFILE"] if flags & O_TMPFILE == O_TMPFILE else []
    return "|".join([acc] + flag_names(flags & ~3 & ~(O_TMPFILE if tmpfile else 0), O_FLAG_NAMES) + tmpfile)


def vma_label(img: Image, vma) -> str:
    ref = vma.fields["vma_objref"]
    o = img.obj(ref) if ref else None
    if isinstance(o, File):
        if o.ftype == FileType.SHMEM:
            return f"<shared anon #{ref}> {o.name or ''}".rstrip()
        if o.ftype == FileType.DELETED:  # its contents are in the image; the path holds something else
            return f"{o.name or f'<file #{ref}>'} (deleted)"
        return o.name or f"<file #{ref}>"
    return ""


def vma_what(img: Image, mm, v, *, short: bool = False) -> str:
    """What a VMA maps, as /proc/PID/maps names it: its file; else its kind, `[heap]` and
    `[stack]` recognised from the mm's brk and stack start, `[vdso]`/`[vvar]` from the VMA's type,
    a shared segment by its label. `short`: a file's base name only (narrow columns)."""
    label = vma_label(img, v)
    if label and not label.startswith("<"):
        return label.rsplit("/", 1)[-1] if short else label
    m = mm.fields
    if v.start <= m.get("start_stack", 0) < v.end:
        return "[stack]"
    if m.get("start_brk", 0) <= v.start < max(m.get("brk", 0), m.get("start_brk", 0) + 1) and v.start < m.get("brk", 0):
        return "[heap]"
    kind = VMA_NAMES.get(v.fields["vma_type"], str(v.fields["vma_type"]))
    if kind in ("VDSO", "VVAR"):
        return f"[{kind.lower()}]"
    kind = kind.lower().replace("_", " ")
    if label.startswith("<shared anon"):
        return label  # (it says so already: "shared anon <shared anon #49> ...")
    return f"{kind} {label}" if label else kind


def _exe_label(f: File) -> str | None:
    """An executable's path, marked when the file had been deleted (the image carries it)."""
    return f"{f.name} (deleted)" if f.name and f.ftype == FileType.DELETED else f.name


def file_label(f: File) -> str:
    """A file's path, or for nameless ones what the kernel would show in /proc/PID/fd (for a
    socket always: the FILE_NAME of one whose file was renamed is not what /proc shows)."""
    if f.name and not any(rec.type == RecType.FILE_SOCKET for rec in f.extra):
        return f.name
    for rec in f.extra:
        if rec.type == RecType.FILE_PIPE:
            return f"pipe:[{rec.fields['pipe_id']}]"
        if rec.type == RecType.FILE_SOCKET:
            return f"socket:[{rec.fields['ino']}]"
    return f"anon_inode:[{FILE_NAMES.get(f.ftype, f.ftype).lower()}]"


_TCP_STATES = {1: "established", 2: "syn-sent", 3: "syn-recv", 4: "fin-wait1", 5: "fin-wait2",
               6: "time-wait", 7: "closed", 8: "close-wait", 9: "last-ack", 10: "listening",
               11: "closing"}
_SOCK_TYPES = {1: "stream", 2: "dgram", 3: "raw", 5: "seqpacket"}


def socket_name(family: int, addr: bytes) -> str:
    """The local (first 128 bytes) or peer sockaddr of a FILE_SOCKET payload, readably."""
    import socket as s

    if len(addr) < 2:
        return ""
    if family == s.AF_UNIX:
        path = addr[2:128]
        if not path.strip(b"\0"):
            return ""
        if path[0] == 0:
            return "@" + path[1:].split(b"\0")[0].decode("utf-8", "replace")
        return path.split(b"\0")[0].decode("utf-8", "replace")
    inet = inet_sockaddr(family, addr)
    if inet is None:
        return ""
    return f"{inet[0]}:{inet[1]}" if family == s.AF_INET else f"[{inet[0]}]:{inet[1]}"


def inet_sockaddr(family: int, raw: bytes) -> tuple | None:
    """A stored sockaddr_in / sockaddr_in6 as the socket module takes it: (host, port) or
    (host, port, flowinfo, scope_id); None when unbound (any address, port 0) or not inet."""
    import socket as s

    port = int.from_bytes(raw[2:4], "big") if len(raw) >= 4 else 0
    if family == s.AF_INET and len(raw) >= 8:
        return (s.inet_ntop(s.AF_INET, raw[4:8]), port) if port or any(raw[4:8]) else None
    if family == s.AF_INET6 and len(raw) >= 24:
        if not (port or any(raw[8:24])):
            return None
        flow, scope = int.from_bytes(raw[4:8], "big"), int.from_bytes(raw[24:28], "little")
        return s.inet_ntop(s.AF_INET6, raw[8:24]), port, flow, scope
    return None


def peer_gone(fields: dict[str, Any], payload: bytes) -> bool:
    """A unix socket connected to one that no longer exists: getpeername answered at the dump
    (the stored peer sockaddr has its family, AF_UNIX), and sock_diag named no peer."""
    return fields["family"] == 1 and not fields.get("peer_ino") and payload[128:130] == b"\x01\x00"


def socket_desc(fields: dict[str, Any], payload: bytes, name: str | None = None) -> str:
    """FILE_SOCKET in words: "tcp 127.0.0.1:8080 listening", "unix stream /run/x.sock -> peer".
    `name`: its file's FILE_NAME, which a unix socket has when that file was renamed."""
    fam, typ, proto = fields["family"], fields["type"], fields["protocol"]
    local, peer = socket_name(fam, payload[:128]), socket_name(fam, payload[128:256])
    if fam in (2, 10):
        kind = {6: "tcp", 17: "udp"}.get(proto, f"inet proto {proto}") + ("6" if fam == 10 and proto in (6, 17) else "")
        state = _TCP_STATES.get(fields["state"], "") if proto == 6 else ""
    else:
        kind = f"unix {_SOCK_TYPES.get(typ, typ)}" if fam == 1 else f"family {fam}"
        state = "listening" if fam == 1 and fields["state"] == 10 else ""  # (sock_diag's TCP_LISTEN)
    parts = [kind, local or "(unbound)"]
    if peer:
        parts.append(f"-> {peer}")
    if state:
        parts.append(state)
    if peer_gone(fields, payload):
        parts.append("(its peer is gone)")
    down = fields.get("shutdown", 0)
    shut = {1: "shut down for reading", 2: "shut down for writing", 3: "shut down"}.get(down & 3)
    if shut:
        parts.append(f"({shut}{', ECONNRESET pending' if down & 0x100 else ''})")
    if down & 0x200:
        parts.append(f"(file renamed to {name})" if name else "(its path unlinked)")
    return " ".join(parts)


_CLOCKS = {0: "CLOCK_REALTIME", 1: "CLOCK_MONOTONIC", 7: "CLOCK_BOOTTIME", 8: "CLOCK_REALTIME_ALARM",
           9: "CLOCK_BOOTTIME_ALARM"}


def _seconds(sec: int, nsec: int) -> str:
    return f"{sec + nsec / 1e9:g}s"


def anon_desc(f: File) -> str | None:
    """What an eventfd, signalfd, timerfd, epoll or inotify holds, in words (its /proc link says
    only anon_inode:[...]); None for other files."""
    rec = next((r for r in f.extra if r.type in (RecType.FILE_EVENTFD, RecType.FILE_SIGNALFD, RecType.FILE_TIMERFD,
                                                  RecType.FILE_EPOLL, RecType.FILE_INOTIFY)), None)
    if rec is None:
        return None
    v = rec.fields
    if rec.type == RecType.FILE_EVENTFD:
        return f"count {v['count']}" + (", semaphore" if v["flags"] & 1 else "")
    if rec.type == RecType.FILE_SIGNALFD:
        sigs = [signal_name(i + 1) for i in range(64) if v["sigmask"] >> i & 1]
        return "signals " + (" ".join(sigs) or "none")
    if rec.type == RecType.FILE_TIMERFD:
        clock = _CLOCKS.get(v["clockid"], f"clock {v['clockid']}")
        armed = v["value_sec"] or v["value_nsec"]
        when = (("at +" if v["settime_flags"] & 1 else "in ") + _seconds(v["value_sec"], v["value_nsec"])
                if armed else "disarmed")
        every = f" every {_seconds(v['interval_sec'], v['interval_nsec'])}" if v["interval_sec"] or v["interval_nsec"] else ""
        ticks = f", {plural(v['ticks'], 'expiration')} unread" if v["ticks"] else ""
        return f"{clock}, {when}{every}{ticks}"
    if rec.type == RecType.FILE_EPOLL:
        fds = [e["tfd"] for e in rec.rtype.decode_entries(rec.payload)]
        return "watching " + (("fd" + ("s " if len(fds) > 1 else " ") + ", ".join(map(str, fds))) if fds else "nothing")
    watches = inotify_watches(bytes(rec.payload or b""), v["nwatch"])
    return plural(len(watches), "watch") + (": " + ", ".join(w.path or "?" for w in watches[:4])
                                                               + (" …" if len(watches) > 4 else "") if watches else "")


def _socket_of(f: File) -> str | None:
    rec = next((r for r in f.extra if r.type == RecType.FILE_SOCKET), None)
    if rec is None:
        return None
    return socket_desc(rec.fields, bytes(rec.payload or b""), f.name) + queue_note(f)


def pipe_buffers(img: Image) -> dict[int, int]:
    """pipe id -> the bytes buffered in that pipe (or FIFO). The dump stores them with the first
    end of it that it meets, and the other ends' FILE_PIPE records say 0; every end is the same
    pipe, so every end is given its count."""
    buffered: dict[int, int] = {}
    for o in img.objects.values():
        if isinstance(o, File):
            for r in o.extra:
                if r.type == RecType.FILE_PIPE:
                    buffered[r.fields["pipe_id"]] = max(buffered.get(r.fields["pipe_id"], 0), r.fields["buffered"])
    return buffered


def _queued(f: File, pipes: dict[int, int]) -> dict[str, int] | None:
    """What a socket or pipe had queued for reading, for show --json; None for other files. A
    TCP connection's is a byte stream (FILE_TCP's inq_len), and so is a pipe's (`pipes`, from
    pipe_buffers): bytes, and no messages."""
    pipe = next((r for r in f.extra if r.type == RecType.FILE_PIPE), None)
    if pipe is not None:
        return dict(messages=0, bytes=pipes.get(pipe.fields["pipe_id"], 0))
    if not any(r.type == RecType.FILE_SOCKET for r in f.extra):
        return None
    tcp = next((r for r in f.extra if r.type == RecType.FILE_TCP), None)
    if tcp is not None:
        return dict(messages=0, bytes=tcp.fields["inq_len"])
    sizes = _queue_sizes(f)
    return dict(messages=len(sizes), bytes=sum(sizes))


def _queue_sizes(f: File) -> list[int]:
    return [r.fields["bytes"] for r in f.extra if r.type == RecType.FILE_SOCKET_QUEUE]


def queue_note(f: File) -> str:
    """", 12 bytes queued" / ", 2 messages (13 bytes) queued" for a socket with FILE_SOCKET_QUEUE
    records; ", 12 bytes to read, 3 to send" for a TCP connection with queued bytes; "" otherwise."""
    tcp = next((r for r in f.extra if r.type == RecType.FILE_TCP), None)
    if tcp is not None and (tcp.fields["inq_len"] or tcp.fields["outq_len"]):
        return f", {plural(tcp.fields['inq_len'], 'byte')} to read, {tcp.fields['outq_len']} to send"
    queue = _queue_sizes(f)
    if not queue:
        return ""
    n = sum(queue)
    sock = next((r for r in f.extra if r.type == RecType.FILE_SOCKET), None)
    if sock is not None and sock.fields["type"] == 1:  # SOCK_STREAM: bytes, not messages
        return f", {plural(n, 'byte')} queued"
    return f", {plural(len(queue), 'message')} ({plural(n, 'byte')}) queued"


def carried_contents(img: Image, f: File | None) -> dict[str, int] | None:
    """What of the file `f` opens or maps the image carries (Image.contents_of: a memfd's, a
    deleted file's, shared memory on tmpfs): {"bytes": stored, "size": the file's size}, for
    show --json; None when its contents live in the file."""
    carrier = img.contents_of(f) if isinstance(f, File) else None
    if carrier is None:
        return None
    stored, size = file_data_size(carrier)
    return dict(bytes=stored, size=size)


def carried_note(carried: dict[str, int] | None) -> str:
    """"contents in image: 4.0 KiB" (", of 8.0 KiB" for a file with holes, which are not
    stored) for carried_contents; "" when the image carries none."""
    if carried is None:
        return ""
    of = f" of {human(carried['size'])}" if carried["size"] != carried["bytes"] else ""
    return f"contents in image: {human(carried['bytes'])}{of}"


def fd_rows(img: Image, table: FileTable, pipes: dict[int, int]) -> list[dict[str, Any]]:
    """show's fds of one table; `pipes`: pipe_buffers(img)."""
    rows = []
    for d in table.fds:
        f = img.obj(d["fd_objref"])
        rows.append(dict(fd=d["fd_descriptor"], objref=d["fd_objref"], cloexec=bool(d["fd_close_on_exec"]),
                         kind=FILE_NAMES.get(f.ftype, str(f.ftype)), path=f.name, label=file_label(f),
                         socket=_socket_of(f), detail=anon_desc(f), queued=_queued(f, pipes),
                         file_data=carried_contents(img, f), flags=f.fields["f_flags"], pos=f.fields["f_pos"]))
    return rows


def namespaces_summary(t: Task) -> dict[str, Any] | None:
    """What TASK_NS says of a process's namespaces, for show --json (None: the image has no
    TASK_NS for it, as for a zombie): which were its own, its host and domain names, what restore
    does not make of its network and mount namespaces, its time namespaces' offsets, its cgroup
    namespace (named by the pid of its first process) and that namespace's root per hierarchy."""
    if t.own_ns is None:
        return None

    def time_ns(name_offsets: tuple[int, int, int]) -> dict[str, int]:
        name, monotonic, boottime = name_offsets
        return dict(name=name, monotonic=monotonic, boottime=boottime)

    return dict(own=flag_names(t.own_ns, NS_FLAG_NAMES), flags=flag_names(t.ns_flags, TASK_NS_FLAG_NAMES),
                nodename=t.nodename.decode("utf-8", "surrogateescape"),
                domainname=t.domainname.decode("utf-8", "surrogateescape"),
                net_missing=t.net_missing, mnt_missing=t.mnt_missing, time_offsets=t.time_offsets,
                time_ns=None if t.time_ns is None else dict(current=time_ns(t.time_ns[0]), children=time_ns(t.time_ns[1])),
                cgroup_ns=t.cgroup_ns or None,
                cgroup_ns_roots=[dict(hierarchy=h, controllers=c, path=p) for h, c, p in t.cgroup_ns_roots])


def cgroup_line(hierarchy: int, controllers: str, path: str) -> str:
    """A cgroup as /proc/PID/cgroup writes it ("0::/ctr", "4:memory:/x"); `path` "" (unknown,
    as a cgroup namespace's root can be) as "?"."""
    return f"{hierarchy}:{controllers}:{path or '?'}"


def namespace_parts(pid: int, ns: dict[str, Any] | None) -> list[str]:
    """namespaces_summary (of process `pid`) in words, a phrase each: ["own mnt uts", "host box",
    "time monotonic +5000 s", "cgroup ns root 0::/ctr"]; empty when the process had no namespace
    of its own. show joins them on one line, inspect's Creds tab puts one a line."""
    if ns is None or not ns["own"]:
        return []
    own, flags = ns["own"], ns["flags"]
    parts = ["own " + " ".join(own)]
    if NS_FLAG_NAMES[CLONE_NEWNS] in own and TASK_NS_FLAG_NAMES[NS_OWN_PROC] in flags:
        parts.append("its own /proc")
    if NS_FLAG_NAMES[CLONE_NEWNET] in own and TASK_NS_FLAG_NAMES[NS_LO_DOWN] in flags:
        parts.append("lo down")
    if NS_FLAG_NAMES[CLONE_NEWUTS] in own:
        domain = ns["domainname"] not in ("", "(none)")
        parts.append(f"host {ns['nodename']}" + (f", domain {ns['domainname']}" if domain else ""))
    if NS_FLAG_NAMES[CLONE_NEWTIME] in own:
        whose = " (its children's only)" if TASK_NS_FLAG_NAMES[NS_TIME_CHILDREN] in flags else ""
        parts.append(f"time{whose} " + (ns["time_offsets"] or "offsets not recorded"))
    if NS_FLAG_NAMES[CLONE_NEWCGROUP] in own:
        parts.append(cgroup_ns_text(pid, ns))
    if ns["net_missing"]:
        parts.append(f"net not made again: {ns['net_missing']}")
    if ns["mnt_missing"]:
        parts.append(f"mounts not made again: {ns['mnt_missing']}")
    return parts


def cgroup_ns_text(pid: int, ns: dict[str, Any]) -> str:
    """"cgroup ns root 0::/ctr" for one hierarchy; with several, the root most of them share
    and the others: "cgroup ns root / (4:memory:/x)". "cgroup ns of pid 1, root ..." when
    another process of the image was in it first (one namespace, one first process)."""
    roots = ns["cgroup_ns_roots"]
    if not roots:
        root = "root not recorded"
    elif len(roots) == 1:
        root = "root " + cgroup_line(roots[0]["hierarchy"], roots[0]["controllers"], roots[0]["path"])
    else:
        common = Counter(r["path"] for r in roots).most_common(1)[0][0]
        others = [cgroup_line(r["hierarchy"], r["controllers"], r["path"]) for r in roots if r["path"] != common]
        root = f"root {common or '?'}" + (f" ({', '.join(others)})" if others else "")
    whose = f" of pid {ns['cgroup_ns']}," if ns["cgroup_ns"] and ns["cgroup_ns"] != pid else ""
    return f"cgroup ns{whose} {root}"


def rlimit_text(v: int) -> str:
    """A TASK_RLIMITS value as getrlimit gave it: "unlimited" for RLIM_INFINITY (2**64-1)."""
    return "unlimited" if v == (1 << 64) - 1 else str(v)


def cpu_list(mask: int | bytes) -> str:
    """0b1011 -> "0-1,3", as /proc's *_list files write CPU sets (bytes: a little-endian
    cpumask, as TASK_SCHED holds it)."""
    if isinstance(mask, bytes):
        mask = int.from_bytes(mask, "little")
    cpus = [i for i in range(mask.bit_length()) if mask >> i & 1]
    runs: list[str] = []
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        runs.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(runs) or "-"


def processes_text(img: Image) -> str:
    """"3 processes", "5 processes (2 zombies)"."""
    live, dead = len(img.processes()), len(img.zombies())
    return plural(live + dead, "process") + (f" ({plural(dead, 'zombie')})" if dead else "")


def summary(img: Image) -> dict[str, Any]:
    """The `show --json` document; `show` prints the same content as text."""
    procs = []
    pipes = pipe_buffers(img)
    for p in img.processes():
        mm = img.obj(p.mm_objref)
        table = img.obj(p.files_objref)
        entry = img.tree_entry(p.tid)
        procs.append(dict(
            pid=p.tid, ppid=entry.get("ppid"), pgid=entry.get("pgid"), sid=entry.get("sid"),
            hostpid=entry.get("hostpid"), comm=p.comm,
            threads=[t.tid for t in img.threads_of(p.tgid)],
            exe=(_exe_label(img.obj(mm.fields["exe_objref"])) if mm.fields.get("exe_objref") else None),
            cwd=p.cwd, root=p.root or "/", brk=mm.fields["brk"], seccomp=_seccomp_summary(p),
            namespaces=namespaces_summary(p),
            vmas=[dict(start=v.start, end=v.end, size=v.end - v.start, prot=prot_str(v.fields["vm_page_prot"], v.fields["vm_flags"]),
                       type=VMA_NAMES.get(v.fields["vma_type"], v.fields["vma_type"]),
                       flags=flag_names(v.fields["vm_flags"], VM_FLAG_NAMES),
                       file=vma_what(img, mm, v), pages=sum(r.npages for r in img.runs_of(v)),
                       file_data=carried_contents(img, img.obj(v.fields["vma_objref"]))) for v in mm.vmas],
            fds=fd_rows(img, table, pipes)))
    zombies = []
    for z in img.zombies():
        entry = img.tree_entry(z.tid)
        status = z.fields["exit_code"]
        zombies.append(dict(pid=z.tid, ppid=entry.get("ppid"), pgid=entry.get("pgid"), sid=entry.get("sid"),
                            hostpid=entry.get("hostpid"), comm=z.comm, wait_status=status,
                            exit_code=None if status & 0x7F else status >> 8 & 0xFF,
                            signal=signal_name(status & 0x7F) if status & 0x7F else None,
                            exited=wait_status_text(status), uid=z.creds["uid"] if z.creds else None))
    h = img.header
    return dict(
        kernel=f"{h['major']}.{h['minor']}.{h['patch']}", release=img.uts[0], version=img.uts[1],
        machine=img.uts[2], time=h["time"], xstate_size=img.arch["xstate_size"], xcr0=img.arch["xcr0"],
        tasks=len(img.tasks), processes=len(procs) + len(zombies), pages=img.page_count, bytes=img.size,
        records=img.records, tree=img.tree, procs=procs, zombies=zombies)


def _seccomp_summary(p) -> dict[str, Any] | None:
    """The leader's seccomp state (threads usually share it): mode, no_new_privs, filter sizes."""
    if p.seccomp is None:
        return None
    return dict(mode=SECCOMP_MODES.get(p.seccomp["mode"], p.seccomp["mode"]), no_new_privs=bool(p.seccomp["no_new_privs"]),
                filters=[dict(flags=f, insns=len(insns) // 8) for f, insns in p.seccomp_filters])


def terminal_safe(text: str) -> str:
    """`text` (one line of our own making, with an image's strings in it) fit for a terminal: an
    image is data, and its comm or file names may hold newlines, escape sequences or bytes no
    UTF-8 decodes (kept as lone surrogates). Those are shown escaped, \\n, \\x1b, \\xff, as
    Python writes them, and cannot move the cursor, recolour the terminal or split a line."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        o = ord(c)
        if 0xDC80 <= o <= 0xDCFF:  # a byte surrogateescape kept
            out.append(f"\\x{o - 0xDC00:02x}")
        elif c.isprintable() or c == " ":
            out.append(c)
        else:
            out.append(repr(c)[1:-1])
    return "".join(out)


def shown_path(path: str | bytes) -> str:
    """A path as every message shows it: bytes no UTF-8 decodes (a file name is any bytes; the
    image keeps them as lone surrogates) as \\xff, control characters escaped, as
    terminal_safe shows them; not `\\udcff`, which is how Python would print the string, and
    which names no byte the user could look for. Quoting is the message's."""
    if isinstance(path, bytes):
        path = path.decode("utf-8", "surrogateescape")
    return terminal_safe(path)


def pipe_note(fd: dict[str, Any]) -> str:
    """"5 bytes buffered" for a show fd row of a pipe or FIFO holding data; "" otherwise."""
    queued = fd["queued"]
    if fd["kind"] not in ("PIPE", "FIFO") or not queued or not queued["bytes"]:
        return ""
    return f"{plural(queued['bytes'], 'byte')} buffered"


def group_text(pgid: int, sid: int) -> str:
    """A process's group and session in the task tree: "pgid 5, sid 1", the word "outside" for
    0, which TREE holds for a group or session whose leader is not in the namespace (a process
    started by `unshare` stays in its caller's): a bare 0 read as a pid of the namespace."""
    if not pgid and not sid:
        return "group and session outside the namespace"
    return f"pgid {pgid or 'outside'}, sid {sid or 'outside'}"


def show_text(s: dict[str, Any]) -> str:
    zombies = f" ({plural(len(s['zombies']), 'zombie')})" if s["zombies"] else ""
    out = [f"ckptrace image: {s['records']} records, {human(s['bytes'])}, {plural(s['tasks'], 'task')} "
           f"in {plural(s['processes'], 'process')}{zombies}, {plural(s['pages'], 'page')} ({human(s['pages'] * PAGE_SIZE)})",
           f"kernel {s['release']} ({s['machine']}), taken {format_time(s['time'])}, "
           f"xsave {s['xstate_size']} bytes, xcr0 {s['xcr0']:#x}", "", "task tree:"]
    by_pid = {p["pid"]: p for p in s["procs"] + s["zombies"]}
    children: dict[int, list[int]] = {}
    for p in (by_pid[e["pid"]] for e in s["tree"] if e["pid"] in by_pid):  # TREE order
        children.setdefault(p["ppid"] if p["ppid"] in by_pid else 0, []).append(p["pid"])

    # depth first, parents before children, without recursion: a chain of a thousand forks
    # is a valid image, and Python's stack is not that deep
    stack = [(root, 0) for root in reversed(children.get(0, []))]
    while stack:
        pid, depth = stack.pop()
        p = by_pid[pid]
        th = f" threads {p['threads']}" if len(p.get("threads", ())) > 1 else ""
        dead = f" <defunct: {p['exited']}>" if "exited" in p else ""
        out.append(f"  {'  ' * depth}{pid} {p['comm']}{dead} ({group_text(p['pgid'], p['sid'])}){th}")
        stack += [(c, depth + 1) for c in reversed(children.get(pid, []))]
    for p in s["procs"]:
        sc = p["seccomp"]
        confined = "" if sc is None else "  seccomp " + (
            f"{sc['mode']} ({len(sc['filters'])} filter{'s' if len(sc['filters']) != 1 else ''})" if sc["filters"]
            else sc["mode"]) + (", no_new_privs" if sc["no_new_privs"] else "")
        chroot = f"  root {p['root']}" if p["root"] != "/" else ""
        out += ["", f"process {p['pid']} {p['comm']}  exe {p['exe'] or '-'}  cwd {p['cwd']}{chroot}  brk {p['brk']:#x}{confined}"]
        ns = namespace_parts(p["pid"], p["namespaces"])
        if ns:
            out.append("  namespaces: " + "; ".join(ns))
        out.append(f"  {'start':>14} {'end':>14} {'size':>10} prot {'type':<11} {'pages':>7}  file")
        for v in p["vmas"]:
            carried = carried_note(v["file_data"])
            out.append(f"  {v['start']:>14x} {v['end']:>14x} {human(v['size']):>10} {v['prot']} "
                       f"{v['type']:<11} {v['pages']:>7}  {v['file']}" + (f"  ({carried})" if carried else ""))
        out.append(f"  {'fd':>4} {'kind':<12} {'pos':>10} cloexec  path")
        for f in p["fds"]:
            about = f["socket"] or f["detail"] or pipe_note(f) or carried_note(f["file_data"])
            sock = f"  ({about})" if about else ""
            out.append(f"  {f['fd']:>4} {f['kind']:<12} {f['pos']:>10} {'yes' if f['cloexec'] else 'no ':<7}  {f['label']}{sock}")
    return "\n".join(terminal_safe(line) for line in out)


def record_line(rec: Record, *, as_json: bool, with_pages: bool) -> str:
    rt = rec.rtype
    if as_json:
        doc: dict[str, Any] = dict(index=rec.index, offset=rec.offset, type=rt.name, type_id=int(rt.type),
                                   len=rec.length, fields=rt.fields_json(rec.fields))
        if rt.payload is not Payload.NONE:  # present whenever the type has one, empty or not
            doc["payload"] = rt.payload_json(rec.payload if rec.payload is not None else b"", with_pages=with_pages)
        return json.dumps(json_safe(doc))
    line = f"#{rec.index:<6} @{rec.offset:<10} {rt.name:<13} len={rec.length:<7} {rt.pretty(rec.fields)}"
    if rec.payload is not None and rec.payload_len:
        pj = rt.payload_json(rec.payload, with_pages=with_pages)
        if isinstance(pj, dict) and "sha256" in pj:
            pj = f"<{pj['length']} bytes sha256 {pj['sha256'][:16]}>" + (f" {pj['hex']}" if "hex" in pj else "")
        line += f" payload={pj}"
    return terminal_safe(line)


def main_show(args) -> int:
    with open_image(args.image) as f:
        img = read_image(f)
    s = summary(img)
    if args.json:
        print(json.dumps(json_safe(s)))
    else:
        print(show_text(s))
    return 0


def main_decode(args) -> int:
    out = sys.stdout

    def emit(rec: Record):
        out.write(record_line(rec, as_json=args.json, with_pages=args.pages) + "\n")

    with open_image(args.image) as f:
        read_image(f, on_record=emit)
    return 0


__all__ = ["summary", "show_text", "record_line", "Mm", "RLIMIT_NAMES"]
