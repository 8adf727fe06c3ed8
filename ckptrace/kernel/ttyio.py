"""Terminal ioctls and structs, and terminal device numbers, for the dump's and restore's pty
code (objects/tty.py, restorer/tty.py): declared once. The numbers Python's termios module has
come from it (the C library's headers); the others are the kernel's uapi ones (asm-generic
ioctls.h), which tests/test_ptrace.py checks with a C compiler against <asm/termios.h>."""

from __future__ import annotations

import os
import struct
import termios

from ..image.records import CC_NAMES

TIOCGPGRP, TIOCSPGRP, TIOCSCTTY = termios.TIOCGPGRP, termios.TIOCSPGRP, termios.TIOCSCTTY
TIOCGWINSZ, TIOCSWINSZ = termios.TIOCGWINSZ, termios.TIOCSWINSZ
TIOCINQ = termios.TIOCINQ  # (FIONREAD)
TIOCEXCL, TIOCPKT = termios.TIOCEXCL, termios.TIOCPKT
TIOCGSID = 0x5429
TCGETS2 = 0x802C542A  # _IOR('T', 0x2A, struct termios2)
TCSETS2 = 0x402C542B  # _IOW('T', 0x2B, struct termios2)
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431
TIOCGDEV = 0x80045432  # _IOR('T', 0x32, unsigned int): the real terminal of a /dev/tty fd
TIOCGPKT = 0x80045438
TIOCGPTLCK = 0x80045439
TIOCGEXCL = 0x80045440
TIOCGPTPEER = 0x5441

TERMIOS2 = struct.Struct("<IIIIB19sII")  # c_iflag c_oflag c_cflag c_lflag c_line c_cc[19] c_ispeed c_ospeed
WINSIZE = struct.Struct("<HHHH")  # ws_row ws_col ws_xpixel ws_ypixel
_WINSIZE_FIELDS = ("ws_row", "ws_col", "ws_xpixel", "ws_ypixel")


# FILE_TTY's fields from the kernel's structs and back (the dump reads them, restore sets them)
def termios_fields(raw: bytes) -> dict[str, int]:
    """A struct termios2 (TCGETS2) as FILE_TTY's fields: c_cc one field per index (CC_NAMES)."""
    iflag, oflag, cflag, lflag, line, cc, ispeed, ospeed = TERMIOS2.unpack(raw)
    return dict(c_iflag=iflag, c_oflag=oflag, c_cflag=cflag, c_lflag=lflag, c_line=line, c_ispeed=ispeed,
                c_ospeed=ospeed, **dict(zip(CC_NAMES, cc)))


def termios_raw(f: dict) -> bytes:
    """The struct termios2 (TCSETS2) FILE_TTY's fields `f` describe."""
    return TERMIOS2.pack(f["c_iflag"], f["c_oflag"], f["c_cflag"], f["c_lflag"], f["c_line"],
                         bytes(f[n] for n in CC_NAMES), f["c_ispeed"], f["c_ospeed"])


def winsize_fields(raw: bytes) -> dict[str, int]:
    """A struct winsize (TIOCGWINSZ) as FILE_TTY's fields."""
    return dict(zip(_WINSIZE_FIELDS, WINSIZE.unpack(raw)))


def winsize_raw(f: dict) -> bytes:
    """The struct winsize (TIOCSWINSZ) FILE_TTY's fields `f` describe."""
    return WINSIZE.pack(*(f[n] for n in _WINSIZE_FIELDS))

PTS_MAJORS = range(136, 144)  # UNIX98_PTY_SLAVE_MAJOR and the 7 after it


def is_master(st: os.stat_result) -> bool:
    return os.major(st.st_rdev) == 5 and os.minor(st.st_rdev) == 2


def is_pts(st: os.stat_result) -> bool:
    return os.major(st.st_rdev) in PTS_MAJORS


def is_devtty(st: os.stat_result) -> bool:
    return os.major(st.st_rdev) == 5 and os.minor(st.st_rdev) == 0


def encode_dev(major: int, minor: int) -> int:
    """A device number as the kernel gives it to user space in 32 bits (new_encode_dev: TIOCGDEV)."""
    return (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)


def decode_dev(dev: int) -> tuple[int, int]:
    """(major, minor) of a new_encode_dev number."""
    return (dev >> 8) & 0xfff, (dev & 0xff) | ((dev >> 12) & ~0xff)


def pts_index(major: int, minor: int) -> int:
    return (major - PTS_MAJORS.start) * 256 + minor
