"""The PAGEMAP_SCAN ioctl of /proc/PID/pagemap (Linux 6.7, linux/fs.h): which ranges of an address
range hold pages, without reading 8 bytes of pagemap per virtual page.

Reading pagemap costs the same for a page that was never touched as for one that was: a runtime's
address-space reservation (a JVM heap, Go's arenas, ASan's shadow: terabytes, MAP_NORESERVE, a few
pages used) took the dump tens of seconds of reads while the namespace stayed frozen. The ioctl
walks the page tables instead and returns the populated ranges only.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import struct

PAGEMAP_SCAN = 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg)
PM_SCAN_ARG = struct.Struct("<12Q")  # size, flags, start, end, walk_end, vec, vec_len, max_pages,
#                                      category_inverted, category_mask, category_anyof_mask, return_mask
PAGE_REGION = struct.Struct("<3Q")  # start, end, categories
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4

REGIONS_PER_CALL = 1024


def scan_supported(fd: int) -> bool:
    """Whether the kernel has the ioctl (an empty scan of `fd`, an open pagemap)."""
    arg = bytearray(PM_SCAN_ARG.pack(PM_SCAN_ARG.size, *([0] * 11)))
    try:
        fcntl.ioctl(fd, PAGEMAP_SCAN, arg)
    except OSError as exc:
        return exc.errno != errno.ENOTTY
    return True


def populated(fd: int, start: int, end: int) -> list[tuple[int, int]] | None:
    """The ranges of [start, end) (page-aligned addresses) that hold a present or swapped page, in
    order and merged, read through `fd`, an open /proc/PID/pagemap; None when the kernel lacks the
    ioctl or refuses the range (the caller then reads pagemap itself)."""
    vec = (ctypes.c_char * (PAGE_REGION.size * REGIONS_PER_CALL))()
    want = PAGE_IS_PRESENT | PAGE_IS_SWAPPED
    out: list[tuple[int, int]] = []
    at = start
    while at < end:
        arg = bytearray(PM_SCAN_ARG.pack(PM_SCAN_ARG.size, 0, at, end, 0, ctypes.addressof(vec),
                                         REGIONS_PER_CALL, 0, 0, 0, want, want))
        try:
            n = fcntl.ioctl(fd, PAGEMAP_SCAN, arg)
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                return None
            raise
        for i in range(n):
            lo, hi, _ = PAGE_REGION.unpack_from(vec, i * PAGE_REGION.size)
            if out and out[-1][1] == lo:
                out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
        walk_end = PM_SCAN_ARG.unpack(arg)[4]
        if walk_end <= at:  # (no progress: never seen, but a loop must not spin on it)
            return None
        at = walk_end
    return out
