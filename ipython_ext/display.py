"""How the servers' results look in the notebook: labelled output, Out[rank:n] results
and the progress line (merged errors are mpi_kernel.errors.RemoteError). (The live monitor is in monitor.py.)"""
from __future__ import annotations

import json
import re
import sys
import time
from typing import Any, Iterable

from IPython.display import display

from mpi_kernel.errors import RED, RESET, ranks_word
from mpi_kernel.framework.protocol import format_ranks


class StreamPrinter:
    """Writes server output with [stdout:0] (or [stderr:0], [stdout:0-63] for merged lines)
    at the start of each line.

    A line that arrives in pieces (print(..., end=""), a prompt) gets one label; a rank's
    unfinished line is ended before other ranks write to the same stream; after a
    carriage return (a progress bar redrawing its line) the label is written again.
    The caller flushes once per batch (each flush waits for ipykernel's IOPub thread).
    With a `pacer` (cellout.Pacer) each write first waits for its share of the data rate.
    """

    def __init__(self, pacer: Any = None) -> None:
        # stream name -> (ranks owning the unfinished line, whether it is at the line's start)
        self._open: dict[str, tuple[tuple[int, ...], bool]] = {}
        self.pacer = pacer

    def label(self, ranks: int | tuple[int, ...], name: str, text: str) -> str:
        ranks = (ranks,) if isinstance(ranks, int) else ranks
        out = []
        # End another rank's unfinished line first: this output would run on (or overwrite) it.
        if self._open.get(name, (ranks,))[0] != ranks:
            out.append("\n")
            del self._open[name]
        tag = f"[{name}:{rank_set(ranks)}] "
        for piece in _LINE_ENDS.split(text):
            if not piece:
                continue
            if name not in self._open or self._open[name][1]:
                out.append(tag)
            out.append(piece)
            if piece[-1] == "\n":
                self._open.pop(name, None)
            else:
                self._open[name] = (ranks, piece[-1] == "\r")
        return "".join(out)

    def write(self, ranks: int | tuple[int, ...], name: str, text: str) -> None:
        labelled = self.label(ranks, name, text)
        if self.pacer is not None:
            self.pacer.take(len(labelled))
        (sys.stderr if name == "stderr" else sys.stdout).write(labelled)

    def end_lines(self) -> None:
        """End the lines left unfinished (a cell's last output without a newline)."""
        for name in self._open:
            (sys.stderr if name == "stderr" else sys.stdout).write("\n")
        self._open.clear()


def rank_set(ranks: Iterable[int]) -> str:
    """A label's ranks: "3", "0-63", "0-2,5"."""
    return format_ranks(list(ranks)).replace(", ", ",")


_LINE_ENDS = re.compile(r"(?<=\n)|(?<=\r)(?!\n)")  # split after each line end (\n, \r\n, \r)


def flush() -> None:
    sys.stdout.flush()
    sys.stderr.flush()


def show_display(ranks: int | tuple[int, ...], data: dict, metadata: dict) -> None:
    """A server's display() output, labelled [output:N] as ipyparallel labels it
    ([output:0-63] when those ranks displayed the same)."""
    sys.stdout.write(f"[output:{rank_set((ranks,) if isinstance(ranks, int) else ranks)}]\n")
    display(data, metadata=metadata, raw=True)  # flushes stdout first


def show_result(ranks: tuple[int, ...], count: int | None, ret: dict) -> None:
    """Out[rank:count] for one server's last-expression value (rich ones displayed);
    Out[0-63:count] for the same value on several ranks."""
    data = ret["data"]
    label = f"{RED}Out[{rank_set(ranks)}:{count}]:{RESET} "
    if set(data) == {"text/plain"}:
        text = data["text/plain"]
        sys.stdout.write(label + ("\n" if "\n" in text else "") + text + "\n")
    else:
        sys.stdout.write(label + "\n")
        display(data, metadata=ret.get("metadata") or {}, raw=True)  # flushes stdout first


def merge_displays(outputs: list[tuple[int, dict, dict]]) -> list[tuple[tuple[int, ...], dict, dict]]:
    """The same display (the k-th of its rank, with the same data) from several ranks, once:
    [(ranks, data, metadata)] in the order each first came."""
    groups: dict[tuple[int, str], tuple[list[int], dict, dict]] = {}
    seen: dict[int, int] = {}
    for rank, data, metadata in outputs:
        k = seen[rank] = seen.get(rank, -1) + 1
        key = (k, json.dumps([data, metadata], sort_keys=True, default=repr))
        groups.setdefault(key, ([], data, metadata))[0].append(rank)
    return [(tuple(sorted(ranks)), data, metadata) for ranks, data, metadata in groups.values()]


def merge_results(results: list[tuple[int, dict]]) -> list[tuple[tuple[int, ...], dict]]:
    """Identical last-expression values (same mime bundle) of several ranks, once, in rank order."""
    groups: dict[str, tuple[list[int], dict]] = {}
    for rank, ret in sorted(results, key=lambda item: item[0]):
        key = json.dumps([ret["data"], ret.get("metadata")], sort_keys=True, default=repr)
        groups.setdefault(key, ([], ret))[0].append(rank)
    return [(tuple(ranks), ret) for ranks, ret in groups.values()]


class ProgressLine:
    """A line in the cell, updated in place, shown only once a cell has run for `after` s."""

    def __init__(self, total: int, after: float = 1.0, hint: str = "") -> None:
        self.total, self.after, self.hint = total, after, hint
        self.dead: list[int] = []  # ranks of the cell that died: ended, but not done
        self.start = time.monotonic()
        self._handle: Any = None
        self._last = 0.0

    def update(self, waiting: list[int]) -> None:
        now = time.monotonic()
        elapsed = now - self.start
        if elapsed < self.after or now - self._last < 0.25:
            return
        self._last = now
        done = self.total - len(waiting) - len(self.dead)
        text = f"[px] {done}/{self.total} ranks done"
        if self.dead:
            text += f", {ranks_word(self.dead)} dead"
        text += f", {elapsed:.1f} s elapsed"
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
