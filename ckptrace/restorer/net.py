"""The network namespace a restore makes: a new one when the image's init had its own (TASK_NS),
with lo up or down as it was and nothing else; the controller's otherwise.

It is made by the controller before any file (kernel.netns.NetNs), since the sockets are made
then, and every socket must belong to it: the controller's thread enters it while the files are
made (FileSet.create) and while init is clone3'd (which inherits it), and comes back at once.
What the dump saw there that a new namespace with only lo lacks (other interfaces, addresses,
routes) is not made: the image says it in words, and the restore notes it.
"""

from __future__ import annotations

from ..image.reader import Image
from ..image.records import CLONE_NEWNET, NS_LO_DOWN
from ..kernel.netns import NetNs


def own(img: Image) -> bool:
    """Whether the image's init had a network namespace of its own."""
    init = img.task(1) if img.tree else None
    return init is not None and bool((init.own_ns or 0) & CLONE_NEWNET)


def make(img: Image) -> NetNs | None:
    """A new network namespace as the image's init had (lo up unless the image says it was
    down), or None: the restore then keeps the controller's."""
    if not own(img):
        return None
    return NetNs(lo_up=not img.task(1).ns_flags & NS_LO_DOWN)


def notes(img: Image) -> list[str]:
    """What the restored network namespace lacks of the original's, for the user."""
    if not own(img) or not img.task(1).net_missing:
        return []
    return [f"the restored namespace is in a new network namespace with only lo; the original's also had "
            f"{img.task(1).net_missing}, which were not made again"]
