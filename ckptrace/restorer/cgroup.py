"""Each restored process back in the cgroups it was dumped in (TASK_PROC's /proc/PID/cgroup).

Hierarchies are matched by controllers ("" for cgroup v2, "cpu,cpuacct", "name=systemd") against
what is mounted here; a cgroup directory that does not exist is created (a migrated container's
cgroup usually does not exist on the new host yet). Only membership comes back, not the cgroups'
settings: limits belong to whoever manages the cgroup, which other processes may share. A
hierarchy that is not mounted here is skipped.
"""

from __future__ import annotations

import os

from ..errors import KernelError, Unsupported
from ..image.render import shown_path
from ..kernel import procfs


def path_problem(path: str) -> str:
    """Why a cgroup path of the image cannot be a cgroup under a hierarchy's root ("" if it can):
    each of its parts becomes a directory under the mount, so ".." would leave the hierarchy
    (where a made-up image would have restore create directories and write a pid to any file
    named cgroup.procs), and /proc/PID/cgroup shows ".." itself for a cgroup outside the
    reader's cgroup namespace: a dump made from inside one. It also never shows "." or NULs."""
    if not path.startswith("/"):
        return "is not absolute"
    parts = path.split("/")
    if ".." in parts:
        return "leaves its hierarchy ('..': was it dumped from inside a cgroup namespace?)"
    if "." in parts or "\0" in path:
        return "is not one /proc/PID/cgroup shows"
    return ""


def frozen_problems(processes, mounts: dict[str, str]) -> list[str]:
    """The image's processes whose cgroup here is frozen (or would be made under a frozen one):
    placed in it at the end of the restore, after the point of no return, a process could not
    run the last injected calls (timers, pending signals) and the restore waited for a thaw."""
    out = []
    for t in processes:
        placeable = [c for c in t.cgroups if not path_problem(c[2])]  # (validate refuses the others)
        for controllers, path, why in procfs.frozen_cgroups(placeable, mounts):
            out.append(f"process {t.tid}'s {controllers or 'cgroup2'} cgroup {shown_path(path)} is frozen "
                       f"here ({why}): thaw it first")
    return out


def place(host_pid: int, cgroups: list[tuple[int, str, str]], mounts: dict[str, str],
          created: list[str], name: int | None = None) -> None:
    """Move the process (all its threads: cgroup.procs) into each of its image cgroups; the
    directories this makes are appended to `created` (for `remove` should the restore fail).
    `name`: its pid inside the namespace, for messages (the host pid is gone by the time the
    user reads one: a failure ends the restore)."""
    who = host_pid if name is None else name
    for _hid, controllers, path in cgroups:
        mount = mounts.get(procfs.cgroup_key(controllers))
        if mount is None:
            continue
        if why := path_problem(path):  # (validate refused it already: never outside the mount)
            raise Unsupported(f"put process {who} into cgroup {shown_path(path)}: the path {why}")
        where = mount
        try:
            for part in [p for p in path.split("/") if p]:
                where = os.path.join(where, part)
                if not os.path.isdir(where):
                    os.mkdir(where)
                    created.append(where)
                    if "cpuset" in controllers.split(","):
                        _inherit_cpuset(where)
            with open(os.path.join(where, "cgroup.procs"), "w") as f:
                f.write(str(host_pid))
        except OSError as exc:
            raise KernelError(f"put process {who} into {controllers or 'cgroup2'} cgroup {shown_path(path)} "
                              f"({shown_path(where)})", exc.errno) from None


def remove(created: list[str]) -> None:
    """Remove the cgroups a failed restore made, deepest first, once their tasks are gone."""
    for where in reversed(created):
        try:
            os.rmdir(where)
        except OSError:
            pass  # still populated (a task not yet reaped) or in use by someone else: leave it


def _inherit_cpuset(where: str) -> None:
    """A new cgroup v1 cpuset starts with no CPUs and no memory nodes, and refuses tasks until it
    has some: give it its parent's (what the process would have had without the cgroup)."""
    parent = os.path.dirname(where)
    for name in ("cpuset.cpus", "cpuset.mems"):
        with open(os.path.join(parent, name)) as src, open(os.path.join(where, name), "w") as dst:
            dst.write(src.read().strip() or "\n")
