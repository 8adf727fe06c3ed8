"""The seed's objhash: each shared kernel object gets an objref the first time the dump meets it.

Identity comes from the kernel, never from heuristics: kcmp(2) tells whether two tasks share a
file table (KCMP_FILES), an mm (KCMP_VM) or one open file description (KCMP_FILE). Objects
without a kcmp handle (the exe link, a SHMEM segment, a VMA's backing file when no fd of its
process gives it: files.MappedFiles) are keyed by what the kernel names them by (device, inode,
path), and a mapped file by the access its mapping needs too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable

from ..kernel.sys import syscall
from ..kernel.sysno import SYS_kcmp

KCMP_FILE, KCMP_VM, KCMP_FILES, KCMP_FS = 0, 1, 2, 3


def kcmp(pid1: int, pid2: int, kind: int, idx1: int = 0, idx2: int = 0) -> bool:
    """True when the two tasks' objects of `kind` are the same kernel object."""
    return syscall(SYS_kcmp, pid1, pid2, kind, idx1, idx2, what=f"kcmp({pid1}, {pid2})") == 0


@dataclass
class _Seen:
    pid: int
    idx: int
    objref: int


@dataclass
class ObjHash:
    next_ref: int = 1
    # kcmp-identified objects, grouped by a cheap key (e.g. the file's device and inode) so that
    # only plausible candidates are compared.
    by_kcmp: dict[tuple[int, Hashable], list[_Seen]] = field(default_factory=dict)
    by_key: dict[Hashable, int] = field(default_factory=dict)
    info: dict[int, Any] = field(default_factory=dict)  # objref -> anything the dumper remembers

    def new(self) -> int:
        ref = self.next_ref
        self.next_ref += 1
        return ref

    def lookup_kcmp(self, kind: int, pid: int, idx: int, bucket: Hashable = None) -> int | None:
        for s in self.by_kcmp.get((kind, bucket), ()):
            if kcmp(pid, s.pid, kind, idx, s.idx):
                return s.objref
        return None

    def add_kcmp(self, kind: int, pid: int, idx: int, bucket: Hashable = None) -> int:
        ref = self.new()
        self.by_kcmp.setdefault((kind, bucket), []).append(_Seen(pid, idx, ref))
        return ref

    def lookup_key(self, key: Hashable) -> int | None:
        return self.by_key.get(key)

    def add_key(self, key: Hashable) -> int:
        ref = self.new()
        self.by_key[key] = ref
        return ref
