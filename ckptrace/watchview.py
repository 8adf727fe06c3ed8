"""The `watch` dashboard: pure functions of the model (ckptrace.watchmodel) and the selection.

`render` builds a rich renderable from state only (no I/O, no clock), so tests render model states
into a recording Console and read the text. `handle_key` is the only thing that changes the
selection.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Group
from rich.layout import Layout
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .watchmodel import Model, Proc, prot_str
from .image.records import VM_MAYSHARE
from .image.render import human as _human
from .image.render import prot_str as maps_perms  # rw-p / rw-s, as /proc/PID/maps
from .image.render import terminal_safe


def _literal(text: str) -> Text:
    """A name or path from the watched processes as a cell: rich reads a str as markup (a comm
    "[/]" raised MarkupError and ended watch; "[heap]" vanished), and a comm may hold newlines
    or escape sequences."""
    return Text(terminal_safe(text))

BAR = 20
# Path characters the memory map keeps by narrowing its heat bar (down to 5) before it cuts the
# path: at 70 columns a 16-wide bar left "/us…" of every path.
PATH_KEPT = 12
OFF = "off"  # a dirty count or heat bar without write-fault tracing (--no-faults)
HEAT = ["green", "yellow", "dark_orange", "red"]


@dataclass
class Selection:
    """What is selected, by identity: list positions moved under it as namespaces and processes
    came and went (an inode reused by a new namespace sorting before it), and `d` dumped
    whatever was highlighted then. None: the first there is."""
    ns: int | None = None  # pid namespace inode
    hostpid: int | None = None
    message: str = ""
    # when the message goes (the model's clock; None: when another replaces it). A dump's outcome
    # stayed for the whole session, and at 80 columns it cut the keys' help short.
    message_until: float | None = None

    def tell(self, message: str, now: float, *, lasting: bool = False) -> None:
        """Show `message` in the header for MESSAGE_SECONDS from `now`, or until the next one
        when `lasting` (a dump still running)."""
        self.message = message
        self.message_until = None if lasting else now + MESSAGE_SECONDS


MESSAGE_SECONDS = 10.0
# Narrower than this, the task tree goes above the memory map: side by side at 100 columns its
# third of the width left names one letter once the pids, the dirt and the tree's indent were in.
STACK_BELOW = 110
# The namespaces panel shows at most this many rows (the selected one always among them): with
# every namespace listed, a dozen pushed the memory map and the events off an 80x24 screen.
NS_ROWS_MAX = 5


def namespaces(model: Model) -> list[int]:
    return sorted(model.namespaces)


def selected_ns(model: Model, sel: Selection) -> int | None:
    if sel.ns in model.namespaces:
        return sel.ns
    nss = namespaces(model)
    return nss[0] if nss else None


def pin(model: Model, sel: Selection) -> None:
    """Make the namespace shown the selected one, by inode: a process chosen (or a dump asked
    for) in the namespace shown first must stay with it when another one sorts before it. A
    selected namespace that is gone lets go, or an inode reused later would take its place."""
    sel.ns = selected_ns(model, sel)


def _proc_position(tree: list[tuple[int, Proc]], sel: Selection) -> int:
    for i, (_, p) in enumerate(tree):
        if p.hostpid == sel.hostpid:
            return i
    return 0


def selected_proc(model: Model, sel: Selection) -> Proc | None:
    ino = selected_ns(model, sel)
    if ino is None:
        return None
    tree = model.tree(ino)
    if not tree:
        return None
    return tree[_proc_position(tree, sel)][1]


def handle_key(sel: Selection, model: Model, key: str) -> str | None:
    """Move the selection; returns "quit" or "dump" when the key asks for that."""
    if key in ("q", "Q"):
        return "quit"
    pin(model, sel)
    if key in ("up", "k", "down", "j"):
        ino = selected_ns(model, sel)
        tree = model.tree(ino) if ino is not None else []
        if tree:
            step = -1 if key in ("up", "k") else 1
            sel.hostpid = tree[min(max(0, _proc_position(tree, sel) + step), len(tree) - 1)][1].hostpid
    elif key in ("right", "\t", "n", "left", "p"):
        nss = namespaces(model)
        if nss:
            at = nss.index(selected_ns(model, sel))
            sel.ns = nss[(at + (1 if key in ("right", "\t", "n") else -1)) % len(nss)]
            sel.hostpid = None
    elif key == "d":
        return "dump"
    return None


def heat_bar(dirty: int, pages: int, width: int = BAR) -> Text:
    """`dirty` of `pages` as a bar whose colour grows hotter with the fraction."""
    frac = 0.0 if pages <= 0 else min(1.0, dirty / pages)
    filled = round(frac * width)
    if dirty and not filled:
        filled = 1  # any dirt is visible
    colour = HEAT[min(len(HEAT) - 1, int(frac * len(HEAT)))]
    t = Text("█" * filled, style=colour)
    t.append("·" * (width - filled), style="grey37")
    t.append(f" {frac * 100:5.1f}%")
    return t


def human(n: int) -> str:
    return _human(n, short=True)


_ADDRESSES = ("addr", "new_addr", "start", "end")
_IDENTITY = ("event", "pid", "hostpid", "ns", "ts")


def event_fields(ev: dict, readable: bool = True) -> list[str]:
    """An event's own fields as `k=v`, short ones first and addresses (hex) last: a narrow panel
    cuts a line's end, and the addresses are the longest and least telling part (a dirty event's
    page count used to go). readable: lengths in K/M/G and prot as rwx (the dashboard); plain
    event lines keep the exact numbers, as --json has them."""
    extra, addresses = [], []
    for k, v in ev.items():
        if k in _IDENTITY or k.startswith("_") or v is None:
            continue
        if k in _ADDRESSES and isinstance(v, int):
            addresses.append(f"{k}={v:#x}")
            continue
        if readable and k in ("len", "new_len") and isinstance(v, int):
            v = human(abs(v)) if v >= 0 else "-" + human(-v)
        elif readable and k == "prot" and isinstance(v, int):
            v = prot_str(v)
        extra.append(f"{k}={v}")
    return extra + addresses


def event_line(ev: dict) -> str:
    """One recent event on the dashboard."""
    return terminal_safe(f"{ev['ns']} {ev['pid']:>5}/{ev['hostpid']:<7} {ev['event']:<8} {' '.join(event_fields(ev))}")


def _ns_table(model: Model, sel: Selection, now: float, rows: int) -> Table:
    """At most `rows` namespaces, a window over the sorted list that holds the selected one."""
    t = Table(expand=True, box=None, header_style="bold", pad_edge=False)
    # `procs`: the model follows processes (a thread is its process), where `ckptrace ls` counts
    # every thread as a task: one word for both read as two counts of one thing that disagreed
    for col in ("", "pid ns", "init", "procs", "events/s", "dirty pages"):
        t.add_column(col, no_wrap=True)
    current = selected_ns(model, sel)
    nss = namespaces(model)
    at = nss.index(current) if current is not None else 0
    first = max(0, min(at - rows // 2, len(nss) - rows))
    for ino in nss[first:first + rows]:
        ns = model.namespaces[ino]
        every = model.ns_procs(ino)
        procs = [p for p in every if p.alive]
        init = model.init_of(ino)
        if not procs and (ns.ended or every):  # (Model.gc says it only once a second)
            # a `--pidns` namespace stays listed once its dead are forgotten: not "not watched yet"
            who = Text("ended: no process left", style="bold yellow")
        else:
            who = _literal(f"{init.pid} {init.comm}") if init else "-"
        t.add_row("▶" if ino == current else " ", str(ino), who, str(len(procs)),
                  f"{ns.rate(now):.1f}", _dirt(model, sum(p.dirty_pages() for p in procs)),
                  style="reverse" if ino == current else None)
    if not model.namespaces:
        t.add_row("", "(no watched namespace yet)", "", "", "", "")
    return t


def _tree(model: Model, sel: Selection, rows: int) -> Table:
    t = Table(expand=True, box=None, header_style="bold", pad_edge=False)
    for col, width in (("pid", 5), ("host", 7), ("comm", 8), ("dirty", 5)):
        t.add_column(col, no_wrap=True, overflow="ellipsis", min_width=width, ratio=1 if col == "comm" else None)
    ino = selected_ns(model, sel)
    tree = model.tree(ino) if ino is not None else []
    chosen = _proc_position(tree, sel)
    shown = list(enumerate(tree))
    if len(tree) > rows:
        # Not all fit: one row says how many are not shown. Exited tasks (kept a few seconds, to
        # be seen dying) give way first, so that a loop of short-lived children does not push
        # the live processes out of the panel; then a window around the selection.
        room = max(1, rows - 1)
        live = [(i, e) for i, e in shown if e[1].alive or i == chosen]
        if len(live) <= room:  # and the most recent exited ones in the rows left
            dead = [(i, e) for i, e in shown if not (e[1].alive or i == chosen)]
            shown = sorted(live + dead[len(dead) - (room - len(live)):])
        else:
            first = max(0, min(chosen - room // 2, len(tree) - room))  # keep the selection in view
            shown = shown[first:first + room]
    for i, (depth, p) in shown:
        name = "  " * depth + ("└ " if depth else "") + (p.comm or "?")
        if not p.alive:  # exited († and its status) or gone, before the name, which may be cut
            name = "  " * depth + ("└ " if depth else "") + (f"†{p.code} " if p.code is not None else "(gone) ") + (p.comm or "?")
        t.add_row(str(p.pid), str(p.hostpid), _literal(name), _dirt(model, p.dirty_pages()),
                  style="reverse" if i == chosen else ("grey50" if not p.alive else None))
    if len(shown) < len(tree):
        seen = {i for i, _ in shown}
        hidden = [p for i, (_, p) in enumerate(tree) if i not in seen]
        t.add_row("", "", f"… {len(hidden)} " + ("more" if any(p.alive for p in hidden) else "exited"), "",
                  style="grey50")
    return t


def _dirt(model: Model, pages: int) -> str:
    """A dirty-page count as shown: "off" without write-fault tracing (`--no-faults`), where a 0
    would claim that nothing was written."""
    return str(pages) if model.faults else OFF


def _vmas(p: Proc | None, rows: int, width: int = 120, faults: bool = True) -> Table:
    """The VMA table for a panel `width` columns wide inside: start, prot, size, dirty and the
    heat bar always show (the bar narrower when it must); `end` and the path when there is room
    (at 80 columns the dirt used to be what got cut off). Without `faults` (no write-fault
    tracing) the dirty and heat cells say "off"."""
    fixed = 14 + 4 + 6 + 5 + 4 * 2  # start, prot, size, dirty and the gaps after them
    room = width - fixed
    show_end = room >= 16 + BAR + 7 + 2 + PATH_KEPT  # only with the whole heat bar and the path kept
    bar = max(5, min(BAR, room - 7 - 2 - (16 if show_end else 0) - PATH_KEPT))
    # (header, minimum width, cell of a mapping): one list drives the header and every row
    cols = [("start", 14, lambda v: f"{v.start:#x}"), ("end", 14, lambda v: f"{v.end:#x}"),
            ("prot", 4, lambda v: maps_perms(v.prot, VM_MAYSHARE if v.shared else 0)),
            ("size", 6, lambda v: human(v.end - v.start)),
            ("dirty", 5, lambda v: str(len(v.dirty))),
            ("heat", bar + 7, lambda v: heat_bar(len(v.dirty), v.pages, bar)), ("path", 4, lambda v: _literal(v.path))]
    if not faults:
        cols = [(c, w, (lambda v: OFF) if c in ("dirty", "heat") else cell) for c, w, cell in cols]
    if not show_end:
        cols = [c for c in cols if c[0] != "end"]
    t = Table(expand=True, box=None, header_style="bold", pad_edge=False)
    for col, w, _ in cols:
        t.add_column(col, no_wrap=True, overflow="ellipsis", min_width=w, ratio=1 if col == "path" else None)
    if p is None:
        return t
    vmas = p.vmas
    hidden = []
    if len(vmas) > rows:  # show the dirtiest first when they do not all fit, and say what is not
        by_dirt = sorted(vmas, key=lambda v: -len(v.dirty))
        keep = max(0, rows - 1)
        vmas, hidden = sorted(by_dirt[:keep], key=lambda v: v.start), by_dirt[keep:]
    for v in vmas:
        t.add_row(*(cell(v) for _, _, cell in cols))
    if hidden:  # their count, and their dirty pages in the dirty column
        t.add_row(*(f"… {len(hidden)} more" if col == "start" else
                    (str(sum(len(v.dirty) for v in hidden)) if faults else OFF)
                    if col == "dirty" else "" for col, _, _ in cols), style="grey50")
    return t


def render(model: Model, sel: Selection, *, width: int = 120, height: int = 40, now: float | None = None):
    """The whole dashboard for `model` as a rich renderable sized for width x height."""
    now = model.clock() if now is None else now
    total = sum(model.counts.values())
    lost = model.lost or {}
    # Two lines that never wrap (a wrapped first line pushed the keys and the dump message out
    # of the two-row header): counters first, the long BPF status last, cut with an ellipsis.
    status = Text(no_wrap=True, overflow="ellipsis")
    status.append("ckptrace watch", style="bold")
    status.append(f"  events: {total}  ")
    lost_n = sum(v for k, v in lost.items() if k != "unattributed")  # pages: shown on their own
    status.append("lost: " + " ".join(f"{k} {lost.get(k, 0)}" for k in ("ring", "dirty", "tracked", "unresolved")),
                  style="bold red" if lost_n else "green")
    if model.unattributed:
        status.append(f"  unattributed pages: {model.unattributed}", style="yellow")
    status.append(f"  BPF: {model.status}")
    # The dump message first: at 80 columns it is the image's path that matters, and the keys
    # after it (known by then) are what gets cut.
    keys = Text(no_wrap=True, overflow="ellipsis")
    if sel.message and (sel.message_until is None or now < sel.message_until):
        keys.append(f"{sel.message}  ", style="cyan")
    keys.append("↑/↓ process  ←/→ namespace  d dump  q quit", style="grey50")
    head = Group(status, keys)

    ns_rows = max(1, min(len(model.namespaces), NS_ROWS_MAX))
    body = max(8, height - 2 - (ns_rows + 3))
    events_rows = max(3, body // 3)
    upper = max(5, body - events_rows - 2)
    p = selected_proc(model, sel)

    layout = Layout()
    layout.split_column(
        Layout(head, name="head", size=2),
        Layout(Panel(_ns_table(model, sel, now, ns_rows),
                     title=f"namespaces ({len(model.namespaces)})" if len(model.namespaces) > ns_rows else "namespaces"),
               name="ns", size=ns_rows + 3),
        Layout(name="mid", size=upper + 2),
        Layout(name="log"),
    )
    title = _literal(f"memory of {p.pid} {p.comm} (host {p.hostpid})") if p else "memory"
    if width < STACK_BELOW:
        # side by side, neither fits: the task tree above the memory map, each the full width
        tree_rows = max(2, (upper - 2) // 3)
        layout["mid"].split_column(
            Layout(Panel(_tree(model, sel, tree_rows), title="processes"), size=tree_rows + 3),
            Layout(Panel(_vmas(p, upper - tree_rows - 4, width - 4, model.faults), title=title)),
        )
    else:
        tasks_w = max(30, width // 3)
        layout["mid"].split_row(
            Layout(Panel(_tree(model, sel, upper - 1), title="processes"), size=tasks_w),
            Layout(Panel(_vmas(p, upper - 1, width - tasks_w - 4, model.faults), title=title)),
        )
    recent = list(model.recent)[-events_rows:]
    layout["log"].update(Panel(Group(*[Text(event_line(e), no_wrap=True, overflow="ellipsis") for e in recent]),
                               title="recent events"))
    return layout
