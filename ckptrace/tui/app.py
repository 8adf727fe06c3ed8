"""The textual application of `ckptrace inspect`: lays out what `InspectState` computes.

Main screen: header line, process tree on the left, tabs (VMAs, FDs, Threads, Signals, Creds) on
the right, keys in the footer. Enter on a VMA opens the hex screen. Sized for 80x24.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Input, Label, OptionList, Static, TabbedContent, TabPane
from textual.widgets.option_list import Option

from ..image.render import terminal_safe
from .state import (ASCII_COL, FD_COLUMNS, FD_TARGET, HEX_COL, ROW, InspectState, fd_column_widths, format_row,
                    parse_address, parse_needle)


def _safe(text: str) -> str:
    """Text from the image (comm, paths, names) fit for the terminal, line by line: rich drops a
    few control characters but passes ESC, so an image could clear the screen, set the title
    or write the clipboard (OSC 52) through inspect. Our own newlines stay (the state escapes
    the image's strings it puts in such text)."""
    return "\n".join(terminal_safe(line) for line in text.split("\n"))


def _line(text: str) -> str:
    """One line (a tree row, a table cell, the header, the status) fit for the terminal: every
    control character escaped as show prints it, a newline too, so a comm or path holding one
    cannot split a process-tree row or a cell into several."""
    return terminal_safe(text)


class RowTable(DataTable):
    """A table of rows whose Home and End move the cursor to the first and last row.
    DataTable's own Home and End scroll sideways and leave a row cursor where it was, so Enter
    after End opened a row far from the one the user had gone to."""

    BINDINGS = [
        Binding("home", "scroll_top", "First row", show=False),
        Binding("end", "scroll_bottom", "Last row", show=False),
    ]


class FdTable(RowTable):
    """The FDs tab's table. Its path / peer column takes the width the other columns leave and a
    longer target is cut with an ellipsis (its whole text goes to the status line while its row
    is under the cursor): at 80 columns a long path pushed the flags and offset off screen. It
    is laid out again whenever its width changes, as when its tab is first shown (a hidden
    table has no width). A scrollbar's room is always kept, so that one appearing for a long
    list does not make the table a column too wide."""

    DEFAULT_CSS = "FdTable { scrollbar-gutter: stable; scrollbar-size-vertical: 1; }"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fd_rows: list[tuple[str, ...]] = []
        self.widths: list[int] = []

    def show_rows(self, rows: list[tuple[str, ...]]) -> None:
        """Another process's fds: laid out anew, the cursor on the first."""
        self.fd_rows = rows
        self.widths = []
        self.lay_out(cursor=0)

    def lay_out(self, cursor: int | None = None) -> None:
        """Columns sized for the table's width now; the cursor on row `cursor`, else where it was."""
        widths = fd_column_widths(self.fd_rows, self.scrollable_content_region.width)
        if widths == self.widths:
            return
        cursor = self.cursor_row if cursor is None else cursor
        self.widths = widths
        self.clear(columns=True)
        for label, width in zip(FD_COLUMNS, widths):
            self.add_column(label, width=width)
        for i, row in enumerate(self.fd_rows):
            # Text, not str: a path with brackets is not markup.
            self.add_row(*(Text(_line(c), no_wrap=True, overflow="ellipsis") for c in row), key=str(i))
        if self.fd_rows:
            self.move_cursor(row=min(cursor, len(self.fd_rows) - 1))

    def cut_target(self, row: int) -> str:
        """The path / peer of `row` when its cell cuts it, else ""."""
        if not 0 <= row < len(self.fd_rows) or not self.widths:
            return ""
        target = _line(self.fd_rows[row][FD_TARGET])
        return target if cell_len(target) > self.widths[FD_TARGET] else ""

    def on_resize(self) -> None:
        self.lay_out()


class TextPane(VerticalScroll):
    """Scrolled text that is a focus stop only while it has something to scroll: Tab would
    otherwise stop on it where up/down do nothing."""

    def allow_focus(self) -> bool:
        return super().allow_focus() and (self.max_scroll_y > 0 or self.max_scroll_x > 0)


def keys_text(bindings: list, key_display) -> str:
    """The help listing of `bindings` (BINDINGS entries): one line per action, its keys (as
    `key_display` shows a Binding) then what it does (the binding's tooltip, else its
    description), in the order bound."""
    rows: dict[tuple[str, str], list[str]] = {}
    for b in Binding.make_bindings(bindings):
        rows.setdefault((b.action, b.tooltip or b.description), []).append(key_display(b))
    keys = {what: " ".join(dict.fromkeys(k)) for what, k in rows.items()}
    width = max((len(k) for k in keys.values()), default=0)
    return "\n".join(f"{k:>{width}}  {what}" for (_, what), k in keys.items())


class KeysHelp(ModalScreen[None]):
    """What `?` shows: the keys of the screen below, from its BINDINGS."""

    BINDINGS = [Binding("escape,question_mark", "dismiss", "Close")]
    DEFAULT_CSS = """
    KeysHelp { align: center middle; }
    KeysHelp > Vertical { width: auto; height: auto; max-height: 100%; padding: 0 1;
                          background: $panel; border: solid $accent; }
    KeysHelp #keys-title { text-style: bold; }
    KeysHelp #keys-text { width: auto; }
    """

    def __init__(self, title: str, text: str):
        super().__init__()
        self.title_text = title
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, id="keys-title")
            yield Static(Text(self.text), id="keys-text")
            yield Label("Esc or ? closes this", classes="note")


class Prompt(ModalScreen[str | None]):
    """One line of input at the bottom; Enter returns it, Escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, placeholder: str = ""):
        super().__init__()
        self.question = question
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question)
            yield Input(placeholder=self.placeholder, id="answer")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


ADDR_Q = "Go to address (hex):"
FIND_Q = "Find: a string, or x:DE AD BE EF for bytes"


class HexScreen(Screen):
    """The pages of one VMA, 16 bytes a line, a screenful at a time."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("g", "goto", "Go to", tooltip="Go to an address (hex) in any VMA of the process"),
        Binding("slash", "find", "Find", tooltip="Search: text, or x:DE AD BE EF for bytes"),
        Binding("n", "find_next", "Next", tooltip="Next match of the last search"),
        Binding("pagedown,space", "page(1)", "PgDn", tooltip="Next screenful"),
        Binding("pageup,b", "page(-1)", "PgUp", tooltip="Previous screenful"),
        Binding("down,j", "line(1)", "Down", show=False, tooltip="One line down"),
        Binding("up,k", "line(-1)", "Up", show=False, tooltip="One line up"),
        Binding("left_square_bracket", "vma(-1)", "Prev VMA", show=False, tooltip="Previous VMA of the process"),
        Binding("right_square_bracket", "vma(1)", "Next VMA", show=False, tooltip="Next VMA of the process"),
        Binding("home", "home", "Start", show=False, tooltip="Start of the VMA"),
        Binding("end", "end", "End", show=False, tooltip="End of the VMA"),
        Binding("q", "app.quit", "Quit"),
    ]
    DEFAULT_CSS = """
    HexScreen #hex-title { height: 1; background: $primary; color: $text; }
    HexScreen #hex-status { height: 1; color: $text-muted; }
    HexScreen #hex-body { height: 1fr; }
    """

    def __init__(self, state: InspectState):
        super().__init__()
        self.state = state

    def compose(self) -> ComposeResult:
        yield Static(id="hex-title")
        yield Static(id="hex-body")
        yield Static(id="hex-status")
        yield Footer()

    def on_resize(self) -> None:
        self.refresh_hex()

    def on_mount(self) -> None:
        self.refresh_hex()

    def refresh_hex(self) -> None:
        st = self.state
        body = self.query_one("#hex-body", Static)
        st.rows = max(1, body.size.height or st.rows)
        if st.mark is None:
            st.top = st.clamp_top(st.top)
        self.query_one("#hex-title", Static).update(Text(_line(st.hex_title()), no_wrap=True, overflow="ellipsis"))
        text = Text(no_wrap=True, overflow="crop")
        for i, (addr, data) in enumerate(st.hex_rows()):
            line = Text(format_row(addr, data))
            line.stylize("bold cyan", 0, 12)
            for col in st.marked_columns(addr):
                line.stylize("reverse", HEX_COL + 3 * col, HEX_COL + 3 * col + 2)
                line.stylize("reverse", ASCII_COL + col, ASCII_COL + col + 1)
            if data is None:
                line.stylize("dim", HEX_COL, ASCII_COL + ROW)
            if i:
                text.append("\n")
            text.append(line)
        body.update(text)
        self.query_one("#hex-status", Static).update(Text(_line(st.hex_status()), no_wrap=True, overflow="ellipsis"))

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_page(self, n: int) -> None:
        self.state.scroll(n * self.state.rows)
        self.refresh_hex()

    def action_line(self, n: int) -> None:
        self.state.scroll(n)
        self.refresh_hex()

    def action_vma(self, delta: int) -> None:
        if not self.state.step_vma(delta):
            self.app.bell()
        self.refresh_hex()

    def action_home(self) -> None:
        self.state.home()
        self.refresh_hex()

    def action_end(self) -> None:
        self.state.end()
        self.refresh_hex()

    def action_goto(self) -> None:
        self.app.push_screen(Prompt(ADDR_Q, "7ffd12340000"), self._goto)

    def _goto(self, answer: str | None) -> None:
        if answer:
            goto(self.state, answer)
        self.refresh_hex()

    def action_find(self) -> None:
        self.app.push_screen(Prompt(FIND_Q), self._find)

    def _find(self, answer: str | None) -> None:
        if answer:
            find(self.state, answer)
        self.refresh_hex()

    def action_find_next(self) -> None:
        self.state.search_next()
        self.refresh_hex()


def goto(state: InspectState, answer: str) -> bool:
    try:
        state.goto(parse_address(answer))
        return True
    except (ValueError, LookupError) as exc:
        state.message = str(exc)
        return False


def find(state: InspectState, answer: str) -> bool:
    try:
        return state.search(parse_needle(answer)) is not None
    except ValueError as exc:
        state.message = str(exc)
        return False


class InspectApp(App):
    TITLE = "ckptrace inspect"
    ENABLE_COMMAND_PALETTE = False  # its footer entry costs columns an 80x24 terminal lacks
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        # Ctrl-C quits as in any terminal program (textual's own only says to press ctrl+q)
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("g", "goto", "Go to addr", tooltip="Go to an address (hex) of the process"),
        Binding("slash", "find", "Find", tooltip="Search the process's memory"),
        Binding("question_mark", "keys", "Keys", tooltip="This list of keys"),
        Binding("v", "tab('vmas')", "VMAs", show=False, tooltip="VMAs tab"),
        Binding("f", "tab('fds')", "FDs", show=False, tooltip="FDs tab"),
        Binding("t", "tab('threads')", "Threads", show=False, tooltip="Threads tab"),
        Binding("s", "tab('signals')", "Signals", show=False, tooltip="Signals tab"),
        Binding("c", "tab('creds')", "Creds", show=False, tooltip="Creds tab"),
        Binding("i", "tab('image')", "Image", show=False, tooltip="Image tab"),
    ]
    CSS = """
    #head { height: 1; background: $primary; color: $text; }
    /* one row per task: a long name or a deep tree is cut with an ellipsis, not wrapped onto
       rows of its own that read as other processes */
    #procs { width: 18; height: 1fr; border: none; border-right: solid $primary-darken-2;
             text-wrap: nowrap; text-overflow: ellipsis; }
    #tabs { width: 1fr; }
    DataTable { height: 1fr; }
    #thread-table { height: auto; max-height: 8; }
    #regs-pane { height: 1fr; }
    #status { height: 1; color: $warning; }
    .note { height: 1; color: $text-muted; }
    Prompt { align: center bottom; }
    Prompt > Vertical { height: 3; width: 100%; background: $panel; border-top: solid $accent; }
    Prompt Label { padding: 0 1; }
    /* App CSS outranks Input's own focus style: a one-line field, no tall border */
    Prompt Input, Prompt Input:focus { border: none; height: 1; padding: 0 1; }
    """

    def __init__(self, state: InspectState, *, name: str = ""):
        super().__init__()
        self.state = state
        self.sub_title = name
        self.failure: BaseException | None = None  # what ended the app, if it crashed

    def _handle_exception(self, error: Exception) -> None:
        """An unhandled exception ends the app as textual does it (return code 1), but the report
        is `inspect`'s: one line from main(). Textual's own is a traceback with local variables,
        which here hold page data, i.e. process memory; it is kept only with TEXTUAL=debug."""
        if self.failure is None:
            self.failure = error
        super()._handle_exception(error)
        if "debug" not in self.features:
            self._exit_renderables.clear()

    def compose(self) -> ComposeResult:
        st = self.state
        yield Static(Text(_line(st.header_line()), no_wrap=True, overflow="ellipsis"), id="head")
        with Horizontal():
            options = [Option(Text(_line(st.tree_label(d, t))), id=str(t.tid)) for d, t in st.tree_rows]
            yield OptionList(*options, id="procs")
            with TabbedContent(id="tabs", initial="vmas"):
                with TabPane("VMAs", id="vmas"):
                    yield Static(id="vma-note", classes="note")
                    yield RowTable(id="vma-table", cursor_type="row", zebra_stripes=True)
                with TabPane("FDs", id="fds"):
                    yield Static(id="fd-note", classes="note")
                    yield FdTable(id="fd-table", cursor_type="row")
                with TabPane("Threads", id="threads"):
                    # the table then its registers: one scrolled pane around both was a focus
                    # stop of its own before the table, where up/down did not choose a thread
                    yield RowTable(id="thread-table", cursor_type="row")
                    with TextPane(id="regs-pane"):
                        yield Static(id="regs")
                with TabPane("Signals", id="signals"):
                    with TextPane():
                        yield Static(id="sig-text")
                with TabPane("Creds", id="creds"):
                    with TextPane():
                        yield Static(id="cred-text")
                with TabPane("Image", id="image"):
                    with TextPane():
                        yield Static(Text(_safe(st.image_text())), id="image-text")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#vma-table", DataTable).add_columns("range", "size", "prot", "pages", "file or kind")
        self.query_one("#thread-table", DataTable).add_columns("tid", "comm", "stopped in", "rip", "rsp")
        self.show_process()
        self.query_one("#procs", OptionList).highlighted = 0
        self.query_one("#procs", OptionList).focus()

    def show_process(self) -> None:
        st = self.state
        if not st.tree_rows:
            self.set_status("the image holds no tasks")
            return
        self.query_one("#fd-table", FdTable).show_rows(st.fd_rows())
        for table_id, rows in (("#vma-table", st.vma_rows()), ("#thread-table", st.thread_rows())):
            table = self.query_one(table_id, DataTable)
            table.clear()
            for i, row in enumerate(rows):
                # Text, not str: a "[heap]" cell or a comm with brackets is not markup.
                table.add_row(*(Text(_line(c)) for c in row), key=str(i))
        for note_id, what in (("#vma-note", "memory"), ("#fd-note", "open files")):
            note = self.query_one(note_id, Static)
            note.update(Text(_line(st.zombie_note(what)), no_wrap=True, overflow="ellipsis"))
            note.display = st.process.zombie
        self.query_one("#regs", Static).update(Text(_safe(st.registers(st.pid))))
        self.query_one("#sig-text", Static).update(Text(_safe(st.signals_text())))
        self.query_one("#cred-text", Static).update(Text(_safe(st.creds_text())))
        self.set_status("")

    def set_status(self, text: str) -> None:
        self.query_one("#status", Static).update(Text(_line(text), no_wrap=True, overflow="ellipsis"))

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        if isinstance(event.widget, FdTable):
            self.set_status(event.widget.cut_target(event.widget.cursor_row))

    def on_descendant_blur(self, event: events.DescendantBlur) -> None:
        if isinstance(event.widget, FdTable):
            self.set_status("")

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        pid = int(event.option.id)
        if pid != self.state.pid or not self.query_one("#vma-table", DataTable).row_count:
            self.state.select(pid)
            self.show_process()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        # Enter on a process moves on to its VMA list.
        self.query_one("#tabs", TabbedContent).active = "vmas"
        self.query_one("#vma-table", DataTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "vma-table":
            self.state.open_vma(event.cursor_row)
            self.push_screen(HexScreen(self.state))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if isinstance(event.data_table, FdTable) and event.data_table.has_focus:
            self.set_status(event.data_table.cut_target(event.cursor_row))
        if event.data_table.id == "thread-table":
            threads = self.state.thread_rows()
            if 0 <= event.cursor_row < len(threads):
                self.query_one("#regs", Static).update(Text(_safe(self.state.registers(int(threads[event.cursor_row][0])))))

    def action_keys(self) -> None:
        """`?`: the keys of the screen shown, from the BINDINGS in force there."""
        if isinstance(self.screen, KeysHelp):
            return
        if isinstance(self.screen, HexScreen):
            title, bindings = "Keys of the hex screen", HexScreen.BINDINGS
        else:
            title, bindings = "Keys (Enter on a process: its VMAs; on a VMA: its pages)", self.BINDINGS
            bindings = bindings + [Binding(b.key, b.action, b.description, tooltip=f"{b.description} (in a table)")
                                   for b in RowTable.BINDINGS]
        self.push_screen(KeysHelp(title, keys_text(bindings, self.get_key_display)))

    def action_tab(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab

    def action_goto(self) -> None:
        self.push_screen(Prompt(ADDR_Q, "7ffd12340000"), self._goto)

    def _goto(self, answer: str | None) -> None:
        if not answer or not self.state.tree_rows:
            return
        if goto(self.state, answer):
            self.push_screen(HexScreen(self.state))
        else:
            self.set_status(self.state.message)

    def action_find(self) -> None:
        self.push_screen(Prompt(FIND_Q), self._find)

    def _find(self, answer: str | None) -> None:
        if not answer or not self.state.tree_rows:
            return
        self.state.mark = None
        self.state.vma = None
        if find(self.state, answer):
            self.push_screen(HexScreen(self.state))
        else:
            self.set_status(self.state.message)
