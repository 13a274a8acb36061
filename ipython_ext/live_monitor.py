"""%mpi_monitor: a live view of the servers (busy/idle/timeout), updated by a thread: a
one-line summary, then a tile per server or, beyond 16 ranks, a grid of small squares.

With ipywidgets it is an HTML widget whose value the thread sets. Without it,
an HTML display is updated in place; those updates are sent with the parent
header of the cell that created the display, so they never land in whatever
cell runs at the time (ipykernel 7 routes thread output by the current cell).
"""
from __future__ import annotations

import html
import threading
import uuid
from typing import Any, Callable

from IPython.display import HTML, display

from mpi_kernel.errors import ranks_word
from mpi_kernel.framework.protocol import format_ranks

COLORS = {"idle": "#2e7d32", "busy": "#f9a825", "timeout": "#c62828", "dead": "#424242"}
TILE_UP_TO = 16  # ranks shown as labelled tiles; more as a grid of small squares


def _first_line(command: str | None, width: int = 40) -> str:
    lines = (command or "").strip().splitlines() or [""]
    return lines[0][:width] + (" …" if len(lines) > 1 or len(lines[0]) > width else "")


def summary(status: dict[int, dict]) -> str:
    """One line for any number of ranks: "250 idle, 6 busy (ranks 4, 17, ...: 'train()',
    up to 3.2 s), 0 timeout" (and ", 1 dead (rank 3)" once a server died)."""
    by_state: dict[str, list[int]] = {"idle": [], "busy": [], "timeout": [], "dead": []}
    for rank, s in sorted(status.items()):
        by_state[s["state"]].append(rank)
    busy = by_state["busy"]
    detail = ""
    if busy:
        shown = format_ranks(busy[:8]) + (", ..." if len(busy) > 8 else "")
        commands = {_first_line(status[r].get("command")) for r in busy}
        longest = max((status[r].get("elapsed") or 0.0) for r in busy)
        what = repr(commands.pop()) if len(commands) == 1 else f"{len(commands)} commands"
        detail = f" (rank{'s' if len(busy) > 1 else ''} {shown}: {what}, up to {longest:.1f} s)"
    dead = by_state["dead"]
    return (f"{len(by_state['idle'])} idle, {len(busy)} busy{detail}, "
            f"{len(by_state['timeout'])} timeout" + (f", {len(dead)} dead ({ranks_word(dead)})" if dead else ""))


def _hover(rank: int, s: dict) -> str:
    text = f"rank {rank} on {s.get('host') or '?'}: {s['state']}"
    if s.get("command"):  # whole seconds: the grid is re-sent only when something changes
        text += f", {_first_line(s['command'], 60)} ({s.get('elapsed') or 0.0:.0f} s)"
    return html.escape(text, quote=True)


# One style block per view instead of a style per square: 256 ranks are ~30 kB a refresh.
_GRID_STYLE = ("<style>.mpi-grid{max-width:448px;line-height:0}.mpi-grid .mpi-server{display:inline-block;"
               "width:12px;height:12px;margin:1px;border-radius:2px}"
               + "".join(f".mpi-grid .mpi-{state}{{background:{color}}}" for state, color in COLORS.items())
               + "</style>")


def render(status: dict[int, dict]) -> str:
    """The monitor's HTML: a summary line, then a labelled tile per server (up to TILE_UP_TO
    ranks) or a grid of small squares coloured by state, the details on hover."""
    head = (f'<div class="mpi-summary" style="font-family:monospace;margin-bottom:4px">'
            f"{html.escape(summary(status))}</div>")
    if len(status) > TILE_UP_TO:
        squares = "".join(f'<i class="mpi-server mpi-{s["state"]}" data-rank="{rank}" data-state="{s["state"]}" '
                          f'title="{_hover(rank, s)}"></i>' for rank, s in sorted(status.items()))
        return f'<div class="mpi-monitor">{_GRID_STYLE}{head}<div class="mpi-grid">{squares}</div></div>'
    tiles = []
    for rank, s in sorted(status.items()):
        state = s["state"]
        detail = ""
        if s.get("command"):
            detail = (f"<br><small>{html.escape(_first_line(s['command']))} "
                      f"({s.get('elapsed') or 0.0:.1f} s)</small>")
        tiles.append(f'<div class="mpi-server mpi-{state}" data-rank="{rank}" data-state="{state}" '
                     f'title="{_hover(rank, s)}" style="display:inline-block;margin:2px;padding:4px 8px;'
                     f'border-radius:4px;color:white;background:{COLORS[state]};font-family:monospace">'
                     f"rank {rank}: {state}{detail}</div>")
    return f'<div class="mpi-monitor">{head}{"".join(tiles)}</div>'


class MonitorUpdater:
    """One thread that refreshes every open monitor view."""

    def __init__(self, get_status: Callable[[], dict[int, dict]], interval: float = 0.25) -> None:
        self.get_status = get_status
        self.interval = interval
        self._views: list[Callable[[str], None]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def add(self, setter: Callable[[str], None]) -> None:
        with self._lock:
            self._views.append(setter)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mpi-monitor-view", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        last = ""
        while not self._stop.wait(self.interval):
            try:
                page = render(self.get_status())
            except Exception:  # the client is stopping
                return
            if page == last:
                continue
            last = page
            with self._lock:
                views = list(self._views)
            for setter in views:
                try:
                    setter(page)
                except Exception:
                    pass


def show_monitor(updater: MonitorUpdater, kernel: Any) -> None:
    """Display a live monitor in the current cell."""
    page = render(updater.get_status())
    try:
        import ipywidgets
    except ImportError:
        ipywidgets = None
    if ipywidgets is not None:
        widget = ipywidgets.HTML(value=page)
        display(widget)
        updater.add(lambda text: setattr(widget, "value", text))
        return
    display_id = uuid.uuid4().hex
    display(HTML(page), display_id=display_id)
    parent = kernel.get_parent() if kernel is not None else None

    def update(text: str) -> None:
        content = {"data": {"text/html": text, "text/plain": "mpi monitor"}, "metadata": {},
                   "transient": {"display_id": display_id}}
        kernel.session.send(kernel.iopub_socket, "update_display_data", content, parent=parent)

    if kernel is not None:
        updater.add(update)
