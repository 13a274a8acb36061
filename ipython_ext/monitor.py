"""%mpi_monitor: a live per-server busy/idle/timeout view, updated by a thread.

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

COLORS = {"idle": "#2e7d32", "busy": "#f9a825", "timeout": "#c62828"}


def render(status: dict[int, dict]) -> str:
    """The monitor's HTML: one box per server with its state and current command."""
    boxes = []
    for rank, s in sorted(status.items()):
        state = s["state"]
        detail = ""
        if s.get("command"):
            elapsed = s.get("elapsed") or 0.0
            lines = s["command"].strip().splitlines() or [""]
            first = lines[0][:40] + (" …" if len(lines) > 1 or len(lines[0]) > 40 else "")
            detail = f"<br><small>{html.escape(first)} ({elapsed:.1f} s)</small>"
        boxes.append(
            f'<div class="mpi-server mpi-{state}" data-rank="{rank}" data-state="{state}" '
            f'style="display:inline-block;margin:2px;padding:4px 8px;border-radius:4px;'
            f'color:white;background:{COLORS[state]};font-family:monospace">'
            f"rank {rank}: {state}{detail}</div>")
    return '<div class="mpi-monitor">' + "".join(boxes) + "</div>"


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
