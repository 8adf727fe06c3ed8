"""ckptrace command line. Imports only argparse up front: every command's module (and heavy
libraries such as bcc, rich, textual, pyroute2) is imported when that command runs, so that
`ckptrace --help` stays fast.

Commands return an exit status; a CkptError becomes one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from . import __version__
from .stdfds import reserve_standard_fds

# command -> (module, function, help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "doctor": ("ckptrace.doctor", "main", "report what this host supports"),
    "ls": ("ckptrace.dump", "main_ls", "list the pid namespaces on this host"),
    "dump": ("ckptrace.dump", "main", "checkpoint every task of a pid namespace"),
    "restore": ("ckptrace.restore", "main", "restart a dumped namespace from its image"),
    "show": ("ckptrace.image.render", "main_show", "summarise an image"),
    "decode": ("ckptrace.image.render", "main_decode", "print every record of an image"),
    "inspect": ("ckptrace.tui.inspect", "main", "browse an image interactively"),
    "diff": ("ckptrace.imgdiff", "main", "compare two images of the same namespace"),
    "watch": ("ckptrace.watch", "main", "live BPF view of namespaces' tasks and dirty memory"),
    "demo": ("ckptrace.demo", "main", "run the built-in example: sample workload, dump --kill, show, restore"),
}


def byte_count(text: str) -> int:
    """A size in bytes: a non-negative integer."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"a size cannot be negative: {text}")
    return n


def retry_count(text: str) -> int:
    """How many more dumps --retry may make: 0 to 100 (each waits up to 2 s first)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of tries: {text!r}") from None
    if not 0 <= n <= 100:
        raise argparse.ArgumentTypeError(f"must be 0 to 100: {text}")
    return n


def pidns_arg(text: str) -> int:
    """Accept `4026532830` or `pid:[4026532830]` (as readlink /proc/PID/ns/pid prints it)."""
    t = text.strip()
    if t.startswith("pid:[") and t.endswith("]"):
        t = t[5:-1]
    try:
        n = int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a pid namespace id: {text!r} (want N or pid:[N])") from None
    if not 0 < n < 1 << 64:  # (an inode number)
        raise argparse.ArgumentTypeError(f"not a pid namespace id: {text!r} (want N or pid:[N])")
    return n


def seconds_arg(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        s = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < s < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds: {text!r}")
    return s


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line on stderr, like every other error (argparse prints the whole
    usage block first); --help still prints it all. Subcommands' parsers are of this class too.
    No abbreviated options: `watch --pid P` was taken as `--pidns P` (a host pid read as a
    namespace, refused with a misleading message), as `dump --pid P` reads a pid."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


class CommandParser(OneLineParser):
    """A subcommand's parser. argparse hands the arguments a subcommand does not know back up to
    the top-level parser, which would report them as `ckptrace: unrecognized arguments` and point
    at `ckptrace --help`; everything after the command word is the command's, so its own parser
    reports them, naming the command and the help that lists its options."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="ckptrace", description="Watch and checkpoint whole pid namespaces.")
    p.add_argument("--version", action="version", version=f"ckptrace {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    sub.required = True
    subs = {name: sub.add_parser(name, help=h, description=h) for name, (_, _, h) in COMMANDS.items()}

    subs["doctor"].add_argument("--json", action="store_true", help="print the checks as JSON")

    subs["ls"].add_argument("--json", action="store_true", help="print JSON")

    d = subs["dump"]
    target = d.add_mutually_exclusive_group(required=True)
    target.add_argument("--pidns", type=pidns_arg, metavar="N", help="namespace inode (N or pid:[N])")
    target.add_argument("--pid", type=int, metavar="P", help="dump the pid namespace host pid P lives in")
    d.add_argument("-o", "--output", default="-", metavar="FILE|-", help="image file, or - for stdout (default)")
    after = d.add_mutually_exclusive_group()
    after.add_argument("--leave-stopped", action="store_true", help="leave the tasks stopped after the dump")
    after.add_argument("--kill", action="store_true", help="kill the tasks after a successful dump (migration)")
    d.add_argument("--retry", type=retry_count, default=0, metavar="N",
                   help="when refused for a passing state (a connection not accepted yet, data or a signal "
                        "arriving during the dump, a TCP connection being closed), dump again up to N more "
                        "times, 0.1 s apart, doubling up to 2 s (needs -o FILE)")
    d.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    d.add_argument("--json", action="store_true", help="print the closing summary as JSON")
    d.add_argument("--max-file-data", type=byte_count, default=64 << 20, metavar="BYTES",
                   help="most data (holes not counted) a deleted/memfd file may hold to be captured (default 64 MiB)")

    r = subs["restore"]
    r.add_argument("image", metavar="FILE|-")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.add_argument("--quiet", "-q", action="store_true", help="print nothing on success but notes (stderr)")
    r.add_argument("--root", metavar="DIR",
                   help="where the namespace's root directory (and the image's paths under it) "
                        "is now, if not where it was when dumped")

    for name in ("show", "decode"):
        subs[name].add_argument("image", metavar="FILE|-")
    subs["show"].add_argument("--json", action="store_true", help="the summary as JSON")
    subs["decode"].add_argument("--json", action="store_true", help="JSON lines")
    subs["decode"].add_argument("--pages", action="store_true", help="include page data (hex) in the output")

    subs["inspect"].add_argument("image", metavar="FILE|-")

    df = subs["diff"]
    df.add_argument("a", metavar="A")
    df.add_argument("b", metavar="B")
    df.add_argument("--json", action="store_true", help="the differences as one JSON document")

    w = subs["watch"]
    w.add_argument("--pidns", type=pidns_arg, metavar="N", help="watch only this namespace")
    w.add_argument("--json", action="store_true", help="one JSON object per event line")
    w.add_argument("--duration", type=seconds_arg, metavar="S", help="stop after S seconds")
    w.add_argument("--no-faults", action="store_true", help="do not trace page faults (no dirty tracking)")
    w.add_argument("--plain", action="store_true", help="plain event lines even on a terminal")
    w.add_argument("--priority", choices=("auto", "idle", "normal"), default="auto",
                   help="controller CPU priority: auto (default) is idle while it keeps up and normal when it falls "
                        "behind; idle never rises (least cost to busy workloads, but events may be lost while the "
                        "CPUs are saturated); normal never drops")
    w.add_argument("--idle", dest="priority", action="store_const", const="idle", help="same as --priority idle")

    subs["demo"].add_argument("--keep", action="store_true", help="keep the image and leave the workload running")
    subs["demo"].add_argument("-o", "--output", metavar="FILE", help="where to write the image")
    return p


class _ClosedOutput:
    """Stands in for a standard output the process was started without."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "standard output is closed")


def main(argv: list[str] | None = None) -> int:
    from .errors import CkptError, Terminated

    reserve_standard_fds()
    if sys.stdout is None:  # started with fd 1 closed: a write fails with one line, not an AttributeError
        sys.stdout = _ClosedOutput()
    if sys.stderr is None:  # fd 2 closed: messages go nowhere (print's file=None would mean stdout)
        sys.stderr = open(2, "w", closefd=False)
    parser = build_parser()
    args = parser.parse_args(argv)
    module, func, _ = COMMANDS[args.command]
    try:
        fn = getattr(importlib.import_module(module), func)
        return int(fn(args) or 0)
    except (CkptError, Terminated) as exc:  # (Terminated: a BaseException, see errors.py)
        print(f"ckptrace {args.command}: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt as exc:  # (its text, where a command gives one: what it undid)
        print(f"ckptrace {args.command}: interrupted" + (f"; {exc}" if str(exc) else ""), file=sys.stderr)
        return 130
    except (OverflowError, ValueError) as exc:
        if args.command != "restore":
            raise
        # (a field of a damaged image no check caught, handed to a system call that cannot take
        # it: restore.range_problems names those it knows before anything is created)
        print(f"ckptrace {args.command}: a value in the image is out of range: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of our stdout went away (e.g. `| head`): not an error worth a traceback.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 141
    except OSError as exc:
        # An I/O error no module mapped (output on a full disk, a closed stdout...): one line too.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"ckptrace {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
