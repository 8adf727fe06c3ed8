"""Cgroup namespaces of their own, made again (TASK_NS's cgroup namespace and its roots).

A cgroup namespace's root, in each hierarchy, is the cgroup its maker was in when it called
unshare(CLONE_NEWCGROUP); nothing moves it later. So restore puts one process of each namespace
(the image's first in it: TASK_NS names the namespace after it) into the namespace's roots and
has it call unshare(CLONE_NEWCGROUP) by injection; the others of that namespace join it with
setns() on a pidfd of that process. Each is moved on to its own cgroups later, with every other
process (cgroup.place, at the end of the restore).

Why there, and done by the restored processes themselves: unshare and setns of a cgroup
namespace need CAP_SYS_ADMIN, which the processes have until their own credentials are set
(restore._process, by injection too), so this runs after they are all seized and before the
first of them is rebuilt. By then each is one thread (its threads are cloned in _process, and
share the namespace they are cloned in), and forked children are made already: a namespace made
earlier, while the tree is forked, would pass to children that are not in it. A helper process
of the controller could make the namespace too, but the restored processes could not name it:
they are in the new pid namespace, where it has no pid for pidfd_open, and the chroot they are
in may hide /proc; the maker being one of them has neither problem.
"""

from __future__ import annotations

import os

from ..image.reader import Image, Task
from ..image.records import CLONE_NEWCGROUP
from ..image.render import listed, shown_path
from ..kernel.procfs import cgroup_key
from ..kernel.sysno import SYS_close, SYS_pidfd_open, SYS_setns, SYS_unshare
from . import cgroup


def namespaces(img: Image) -> dict[int, list[Task]]:
    """The image's cgroup namespaces that restore makes: the pid they are named after (their
    maker's) -> the processes in them, in TREE order."""
    out: dict[int, list[Task]] = {}
    for t in img.processes():
        if (t.own_ns or 0) & CLONE_NEWCGROUP and t.cgroup_ns:
            out.setdefault(t.cgroup_ns, []).append(t)
    return out


def roots(members: list[Task]) -> tuple[dict[str, tuple[int, str, str]], list[str]]:
    """One namespace's root per hierarchy (cgroup_key -> (hierarchy id, controllers, path)), from
    what its members know of it (one whose cgroup was outside the root knows nothing of it there),
    and why they cannot be trusted: members that disagree."""
    out: dict[str, tuple[int, str, str]] = {}
    problems = []
    for t in members:
        for hid, controllers, path in t.cgroup_ns_roots:
            key = cgroup_key(controllers)
            known = out.get(key)
            if known is None or not known[2]:
                out[key] = (hid, controllers, path)
            elif path and path != known[2]:
                problems.append(f"processes {members[0].tid} and {t.tid} share a cgroup namespace whose "
                                f"{controllers or 'cgroup2'} root they disagree on ({shown_path(known[2])} and "
                                f"{shown_path(path)})")
    return out, problems


def problems(img: Image, mounts: dict[str, str]) -> list[str]:
    """Why the image's cgroup namespaces cannot be made here (`mounts`: procfs.cgroup_mounts)."""
    out = []
    for name, members in namespaces(img).items():
        if not any(t.tid == name for t in members):
            out.append(f"process {members[0].tid}'s cgroup namespace is named after process {name}, which is "
                       "not in it")
            continue
        where, disagreements = roots(members)
        out += disagreements
        if not where:  # (a damaged image: a dump records a line per hierarchy)
            out.append(f"process {name}'s cgroup namespace has no root recorded in any hierarchy")
            continue
        unknown = [c or "cgroup2" for _hid, c, path in where.values() if not path]
        if unknown:
            out.append(f"process {name}'s cgroup namespace has no known root in the {_hierarchies(unknown)}: "
                       "every process in it was in a cgroup outside that root at the dump")
        unmounted = [c or "cgroup2" for key, (_hid, c, _path) in where.items() if key not in mounts]
        if unmounted:
            out.append(f"process {name} had a cgroup namespace of its own, rooted in the {_hierarchies(unmounted)} "
                       "too, not mounted here: restore cannot put its root there")
        for key, (_hid, controllers, root) in where.items():
            if not root:
                continue
            if why := cgroup.path_problem(root):
                out.append(f"process {name}'s cgroup namespace's {controllers or 'cgroup2'} root "
                           f"{shown_path(root)} {why}")
                continue
            if key in mounts and (enabled := _children_controllers(mounts[key], root)):
                out.append(f"process {name}'s cgroup namespace's cgroup2 root {shown_path(root)} has controllers "
                           f"enabled for its children ({enabled}, cgroup.subtree_control): no process may be put "
                           "there (EBUSY), and restore makes the namespace from inside it")
            for t in members:
                says = next((p for _h, c, p in t.cgroup_ns_roots if cgroup_key(c) == key), "")
                path = next((p for _h, c, p in t.cgroups if cgroup_key(c) == key), None)
                if says and path is not None and not _under(path, root):
                    out.append(f"process {t.tid}'s {controllers or 'cgroup2'} cgroup {shown_path(path)} is not "
                               f"under the root {shown_path(root)} of its cgroup namespace")
    return out


def _children_controllers(mount: str, root: str) -> str:
    """A cgroup2 cgroup's cgroup.subtree_control, '' when it has none or is not there (made
    by the restore then, with none) or is the hierarchy's root (which takes processes all the
    same). Only cgroup v2 has this file; its "no internal processes" rule is what makes it
    matter: a cgroup with controllers enabled for its children takes no process."""
    if root.strip("/") == "":
        return ""
    try:
        with open(os.path.join(mount, root.lstrip("/"), "cgroup.subtree_control")) as f:
            return " ".join(f.read().split())
    except OSError:
        return ""


def _hierarchies(names: list[str]) -> str:
    return f"{names[0]} hierarchy" if len(names) == 1 else f"{listed(names, 3)} hierarchies"


def _under(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


def make(img: Image, host: dict[int, int], injectors: dict, mounts: dict[str, str], created: list[str]) -> None:
    """Make each of the image's cgroup namespaces (see the module's doc): its maker is put into
    its roots (directories made are appended to `created`, as cgroup.place does) and unshares;
    the others setns into it. `host`: image pid -> host pid; `injectors`: image pid -> Injector
    of each held process, whose credentials are still the controller's."""
    from .memory import check

    for name, members in namespaces(img).items():
        where, _ = roots(members)
        cgroup.place(host[name], list(where.values()), mounts, created, name=name)
        check(injectors[name].syscall(SYS_unshare, CLONE_NEWCGROUP), f"unshare(CLONE_NEWCGROUP) in {name}")
        for t in members:
            if t.tid == name:
                continue
            inj = injectors[t.tid]
            # (the maker by its pid in the new pid namespace, where both are)
            fd = check(inj.syscall(SYS_pidfd_open, name, 0), f"pidfd_open({name}) in {t.tid}")
            try:
                check(inj.syscall(SYS_setns, fd, CLONE_NEWCGROUP),
                      f"setns into the cgroup namespace of {name} in {t.tid}")
            finally:
                inj.syscall(SYS_close, fd)
