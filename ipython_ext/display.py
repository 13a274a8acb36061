"""How the servers' results look in the notebook: labelled output, merged errors,
Out[rank:n] results and the progress line. (The live monitor is in monitor.py.)"""
from __future__ import annotations

import re
import sys
import time
from typing import Any

from IPython.display import display

from mpi_kernel.protocol import format_ranks

ANSI = re.compile(r"\x1b\[[0-9;]*m")
RED, GREEN, CYAN, RESET = "\x1b[31m", "\x1b[32m", "\x1b[36m", "\x1b[39m"


class StreamPrinter:
    """Writes server output with [stdout:0] (or [stderr:0]) at the start of each line.

    A line that arrives in pieces (print(..., end=""), a prompt) gets one label; a rank's
    unfinished line is ended before another rank writes to the same stream; after a
    carriage return (a progress bar redrawing its line) the label is written again.
    The caller flushes once per batch (each flush waits for ipykernel's IOPub thread).
    """

    def __init__(self) -> None:
        # stream name -> (rank owning the unfinished line, whether it is at the line's start)
        self._open: dict[str, tuple[int, bool]] = {}

    def label(self, rank: int, name: str, text: str) -> str:
        out = []
        # End another rank's unfinished line first: this output would run on (or overwrite) it.
        if self._open.get(name, (rank,))[0] != rank:
            out.append("\n")
            self._open.pop(name)
        for piece in _LINE_ENDS.split(text):
            if not piece:
                continue
            if name not in self._open or self._open[name][1]:
                out.append(f"[{name}:{rank}] ")
            out.append(piece)
            if piece[-1] == "\n":
                self._open.pop(name, None)
            else:
                self._open[name] = (rank, piece[-1] == "\r")
        return "".join(out)

    def write(self, rank: int, name: str, text: str) -> None:
        (sys.stderr if name == "stderr" else sys.stdout).write(self.label(rank, name, text))

    def end_lines(self) -> None:
        """End the lines left unfinished (a cell's last output without a newline)."""
        for name in self._open:
            (sys.stderr if name == "stderr" else sys.stdout).write("\n")
        self._open.clear()


_LINE_ENDS = re.compile(r"(?<=\n)|(?<=\r)(?!\n)")  # split after each line end (\n, \r\n, \r)


def flush() -> None:
    sys.stdout.flush()
    sys.stderr.flush()


def show_display(rank: int, data: dict, metadata: dict) -> None:
    """A server's display() output, labelled [output:N] as ipyparallel labels it."""
    sys.stdout.write(f"[output:{rank}]\n")
    display(data, metadata=metadata, raw=True)  # flushes stdout first


def show_result(rank: int, count: int | None, ret: dict) -> None:
    """Out[rank:count] for one server's last-expression value (rich ones displayed)."""
    data = ret["data"]
    label = f"{RED}Out[{rank}:{count}]:{RESET} "
    if set(data) == {"text/plain"}:
        text = data["text/plain"]
        sys.stdout.write(label + ("\n" if "\n" in text else "") + text + "\n")
    else:
        sys.stdout.write(label + "\n")
        display(data, metadata=ret.get("metadata") or {}, raw=True)  # flushes stdout first


def merge_errors(failed: list[dict]) -> list[tuple[list[int], str]]:
    """Group identical tracebacks: [(ranks, traceback)], in rank order."""
    groups: dict[str, list[int]] = {}
    for response in sorted(failed, key=lambda r: r["server"]):
        groups.setdefault(response["traceback"] or "", []).append(response["server"])
    return [(ranks, tb) for tb, ranks in groups.items()]


def error_name(traceback_text: str) -> str:
    """The exception's name, from the last line of a (possibly colored) traceback."""
    plain = ANSI.sub("", traceback_text).strip()
    last = plain.splitlines()[-1] if plain else "Error"
    return last.split(":", 1)[0].strip() or "Error"


class RemoteError(Exception):
    """Raised by %%px when commands failed; IPython shows the merged per-rank tracebacks."""

    def __init__(self, failed: list[dict], note: str = "") -> None:
        self.groups = merge_errors(failed)
        self.note = note
        summary = "; ".join(f"{error_name(tb)} on {ranks_word(ranks)}" for ranks, tb in self.groups)
        super().__init__(". ".join(part for part in (summary, note) if part))

    def _render_traceback_(self) -> list[str]:
        lines: list[str] = []
        for ranks, tb in self.groups:
            lines.append(f"{CYAN}[{error_name(tb)} on {ranks_word(ranks)}]{RESET}")
            lines.extend(tb.rstrip("\n").splitlines())
            lines.append("")
        if self.note:
            lines.append(self.note)
        return lines


class PxTimeout(RemoteError):
    """Raised by %%px --timeout when servers were still busy."""


class PxError(Exception):
    """A %%px failure that is not one rank's error: shown as its message, without frames."""

    def _render_traceback_(self) -> list[str]:
        return [f"{RED}{type(self).__name__}{RESET}: {self}"]


class PxInterrupted(KeyboardInterrupt):
    """A second Ctrl-C while %%px was stopping the servers: one line, not the client's frames."""

    _render_traceback_ = PxError._render_traceback_


def ranks_word(ranks: list[int]) -> str:
    """"rank 1" or "ranks 0-2"."""
    return f"rank{'s' if len(ranks) > 1 else ''} {format_ranks(ranks)}"


class ProgressLine:
    """A line in the cell, updated in place, shown only once a cell has run for `after` s."""

    def __init__(self, total: int, after: float = 1.0, hint: str = "") -> None:
        self.total, self.after, self.hint = total, after, hint
        self.start = time.monotonic()
        self._handle: Any = None
        self._last = 0.0

    def update(self, waiting: list[int]) -> None:
        now = time.monotonic()
        elapsed = now - self.start
        if elapsed < self.after or now - self._last < 0.25:
            return
        self._last = now
        done = self.total - len(waiting)
        text = f"[px] {done}/{self.total} ranks done, {elapsed:.1f} s elapsed"
        if waiting:
            text += f"; waiting for {ranks_word(waiting)}"
        if self.hint:
            text += f"\n{self.hint}"
        bundle = {"text/plain": text}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)

    def close(self) -> None:
        """Replace the line by nothing: the results follow it."""
        if self._handle is not None:
            self._handle.update({"text/plain": ""}, raw=True)
