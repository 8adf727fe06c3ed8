"""The mount namespace a restore puts the namespace in: a new one, with a proc of the new pid
namespace at /proc, when the image's init had a mount namespace of its own whose /proc was its
namespace's (TASK_NS NS_OWN_PROC: `unshare -p -f --mount-proc`, a container); the controller's
otherwise.

The new mount namespace is the copy clone3(CLONE_NEWNS) makes of the controller's; init makes it
private (nothing it mounts reaches the host's) and mounts the proc before it forks anything
(tree._own_proc). Where: /proc under init's restored root (its chroot, or `--root DIR`), the
/proc its processes see. The other mounts the original's mount namespace had are not made: the
image names them in words, and the restore notes them.
"""

from __future__ import annotations

import os

from ..image.reader import Image
from ..image.render import shown_path
from ..image.records import CLONE_NEWNS, NS_OWN_PROC


def own_proc(img: Image) -> bool:
    """Whether the image's init had a mount namespace of its own with its own /proc."""
    init = img.task(1) if img.tree else None
    return init is not None and bool((init.own_ns or 0) & CLONE_NEWNS) and bool(init.ns_flags & NS_OWN_PROC)


def proc_mount(img: Image) -> str:
    """Where init mounts the new namespace's proc (a path of the controller's), or "": the restore
    then keeps the controller's mount namespace. That is /proc under init's restored root, if
    there is such a directory to mount on."""
    if not own_proc(img):
        return ""
    target = os.path.join(img.at(img.task(1).root or "/"), "proc")
    return target if os.path.isdir(target) and not os.path.islink(target) else ""


def notes(img: Image) -> list[str]:
    """What the restored mount namespace lacks of the original's, for the user."""
    init = img.task(1) if img.tree else None
    if init is None:
        return []
    out = []
    if own_proc(img) and not proc_mount(img):
        target = os.path.join(img.at(init.root or "/"), "proc")
        how = ("is a symbolic link, not a directory to mount it on" if os.path.islink(target) else
               "is not a directory to mount it on" if os.path.lexists(target) else "does not exist to mount it on")
        out.append(f"the restored namespace has no /proc of its own: {shown_path(target)} {how}; "
                   "it is in the restorer's mount namespace")
    if init.mnt_missing:
        out.append(f"the original namespace's mount namespace also had {init.mnt_missing}, which were not "
                   "mounted again")
    return out
