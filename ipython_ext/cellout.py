"""What a %%px cell's output becomes at scale: identical lines of many ranks merged into one
(`[stdout:0-63] done`), at most `max_lines` lines shown per rank with the rest written to a
file, and the whole paced so that it never trips the IOPub data rate limit.

Pure Python, no kernel: the magics feed it the servers' stream events and print the pieces it
returns (ipython_ext.display.StreamPrinter labels them).
"""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
from typing import Any, Iterable

from mpi_kernel.framework.protocol import format_ranks

Piece = tuple[tuple[int, ...], str, str]  # (ranks, stream name, text)
MERGE_WINDOW = 0.2  # seconds a line waits for the same line from the other ranks
_LINES = re.compile(r"(?<=\n)")  # split after each "\n" only (a "\r" stays inside its line)


@dataclasses.dataclass
class _Group:
    """The n-th lines of the ranks: each distinct text with the ranks that wrote it."""

    started: float
    texts: dict[str, list[int]]
    seen: int = 0


class LineMerger:
    """Identical lines of several ranks, shown once, as they arrive.

    The complete lines of each rank are numbered; the n-th lines of all ranks form a group
    (an equivalence class, as LLNL STAT groups stacks). A group is shown once every rank has
    given its n-th line, or `window` s after the first one did: each distinct text once,
    labelled with its ranks. Groups go out in order, so each rank's own order is kept.
    Text that cannot be lined up (an unfinished line, a carriage-return progress bar, a
    line whose group has already gone out) is shown for its rank alone.
    """

    def __init__(self, ranks: Iterable[int], window: float = MERGE_WINDOW, merge: bool = True) -> None:
        self.size = len(set(ranks))
        self.window, self.merge = window, merge
        self._count: dict[tuple[str, int], int] = {}              # lines each rank has given
        self._rest: dict[tuple[str, int], tuple[str, float]] = {}  # an unfinished line, since when
        self._open: set[tuple[str, int]] = set()  # its start was shown: the end follows alone
        self._groups: dict[str, dict[int, _Group]] = {}
        self._next: dict[str, int] = {}  # the first group of each stream not yet shown

    def feed(self, rank: int, name: str, text: str, now: float) -> list[Piece]:
        if not self.merge:
            return [((rank,), name, text)]
        key = (name, rank)
        rest, since = self._rest.pop(key, ("", now))
        out: list[Piece] = []
        for line in _LINES.split(rest + text):
            if not line:
                continue
            if not line.endswith("\n"):
                self._rest[key] = (line, since)
            elif key in self._open or "\r" in line.rstrip("\r\n"):  # a progress bar redrawing itself
                self._open.discard(key)
                out += self._alone(rank, name, line)
            else:
                out += self._add(rank, name, line, now)
            since = now
        return out + self._ready(name, now)

    def due(self, now: float) -> list[Piece]:
        """Groups whose wait is over, and unfinished lines that have waited long enough."""
        out: list[Piece] = []
        for name in list(self._groups):
            out += self._ready(name, now)
        for key, (text, since) in list(self._rest.items()):
            if now - since >= self.window:
                out += self._partial(key, text)
        return out

    def flush(self) -> list[Piece]:
        """Everything still held, in order (the cell has ended)."""
        out: list[Piece] = []
        for name in list(self._groups):
            out += self._through(name, max(self._groups[name], default=-1) + 1)
        for key, (text, _) in list(self._rest.items()):
            out += self._partial(key, text)
        return out

    def _add(self, rank: int, name: str, line: str, now: float) -> list[Piece]:
        key = (name, rank)
        n = self._count.get(key, 0)
        self._count[key] = n + 1
        if n < self._next.get(name, 0):  # its group went out without it
            return [((rank,), name, line)]
        group = self._groups.setdefault(name, {}).setdefault(n, _Group(now, {}))
        group.texts.setdefault(line, []).append(rank)
        group.seen += 1
        return []

    def _alone(self, rank: int, name: str, text: str) -> list[Piece]:
        """`text` for one rank, after whatever of its earlier lines is still held."""
        return self._through(name, self._count.get((name, rank), 0)) + [((rank,), name, text)]

    def _partial(self, key: tuple[str, int], text: str) -> list[Piece]:
        del self._rest[key]
        self._open.add(key)
        return self._alone(key[1], key[0], text)

    def _ready(self, name: str, now: float) -> list[Piece]:
        groups, n, out = self._groups.get(name, {}), self._next.get(name, 0), []
        while n in groups and (groups[n].seen >= self.size or now - groups[n].started >= self.window):
            out += _pieces(name, groups.pop(n))
            n += 1
        self._next[name] = n
        return out

    def _through(self, name: str, end: int) -> list[Piece]:
        """Show the groups of `name` before `end`, complete or not."""
        groups, out = self._groups.get(name, {}), []
        for n in range(self._next.get(name, 0), end):
            if n in groups:
                out += _pieces(name, groups.pop(n))
        self._next[name] = max(self._next.get(name, 0), end)
        return out


def _pieces(name: str, group: _Group) -> list[Piece]:
    ordered = sorted(group.texts.items(), key=lambda item: min(item[1]))
    return [(tuple(sorted(ranks)), name, text) for text, ranks in ordered]


def merge_by_text(outputs: dict[int, tuple[str, ...]]) -> list[tuple[tuple[int, ...], tuple[str, ...]]]:
    """Ranks whose whole output is the same, together: [(ranks, output)], in rank order."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for rank in sorted(outputs):
        groups.setdefault(outputs[rank], []).append(rank)
    return [(tuple(ranks), output) for output, ranks in groups.items()]


def default_output_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"mpi-kernel-output-{os.getuid()}")


class Spill:
    """The output a cell did not show, labelled by rank as in the cell, in a file opened when
    first needed. It may take millions of lines, so labels are put in with str.replace, not
    line by line."""

    def __init__(self, directory: str, name: str) -> None:
        self.path = os.path.join(directory, name)
        self._file: Any = None
        self._open: tuple[int, str] | None = None  # whose line the file's last line is, unfinished
        self.lines: dict[int, int] = {}  # rank -> lines written here

    def write(self, rank: int, name: str, text: str) -> None:
        if not text:
            return
        if self._file is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._file = open(self.path, "w", encoding="utf-8", errors="replace")
        tag = f"[{name}:{rank}] "
        if self._open is not None and self._open != (rank, name):
            self._file.write("\n")
            self._open = None
        ends = text.endswith("\n")
        body = (text[:-1] if ends else text).replace("\n", "\n" + tag)
        self._file.write((tag if self._open is None else "") + body + ("\n" if ends else ""))
        self._open = None if ends else (rank, name)
        self.lines[rank] = self.lines.get(rank, 0) + text.count("\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class RankCap:
    """At most `max_lines` lines per rank go to the cell (0: no limit); the rest to a Spill."""

    def __init__(self, max_lines: int, spill: Spill) -> None:
        self.max_lines, self.spill = max_lines, spill
        self.shown: dict[int, int] = {}

    def take(self, rank: int, name: str, text: str) -> str:
        """The part of `text` the cell shows; the rest is spilled."""
        if not self.max_lines:
            return text
        left = self.max_lines - self.shown.get(rank, 0)
        if left <= 0:
            self.spill.write(rank, name, text)
            return ""
        cut = _after_lines(text, left)
        head, tail = text[:cut], text[cut:]
        self.shown[rank] = self.shown.get(rank, 0) + head.count("\n")
        if tail:
            self.spill.write(rank, name, tail)
        return head

    def note(self) -> str:
        """What was left out and where it is, for the end of the cell ("" if nothing was)."""
        dropped = self.spill.lines
        if not dropped:
            return ""
        total = sum(dropped.values())
        return (f"[px] output limited to {self.max_lines:,} lines per rank: {total:,} more lines from "
                f"rank{'s' if len(dropped) > 1 else ''} {format_ranks(list(dropped))} are in "
                f"{self.spill.path} (--max-lines N shows more, 0 shows all)")


def _after_lines(text: str, lines: int) -> int:
    """The index just after the `lines`-th newline of `text` (its length if it has fewer)."""
    at = -1
    for _ in range(lines):
        at = text.find("\n", at + 1)
        if at < 0:
            return len(text)
    return at + 1


class Pacer:
    """Keeps a cell's output under `rate` bytes/s after a `burst`, by sleeping before a write.

    Jupyter server drops IOPub output above 1 MB/s over a 3 s window ("IOPub data rate
    exceeded"); 500 kB/s after a 1 MB burst stays clear of it, and a normal cell never waits.
    """

    def __init__(self, rate: float = 500e3, burst: float = 1e6) -> None:
        self.rate, self.burst = rate, burst
        self.start = time.monotonic()
        self.sent = 0

    def take(self, nbytes: int) -> None:
        self.sent += nbytes
        ahead = (self.sent - self.burst) / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


class CellOutput:
    """One cell's output streams: capped per rank, then merged and shown as they come
    (`live`), or kept to be shown by rank at the end."""

    def __init__(self, ranks: Iterable[int], live: bool, merge: bool, max_lines: int,
                 spill: Spill, from_events: bool = True) -> None:
        self.live, self.merge, self.from_events = live, merge, from_events
        self.cap = RankCap(max_lines, spill)
        self.merger = LineMerger(ranks, merge=merge)
        self.kept: dict[int, dict[str, list[str]]] = {}

    def stream(self, rank: int, name: str, text: str, now: float) -> list[Piece]:
        """Take a rank's output; return the pieces to show now."""
        text = self.cap.take(rank, name, text)
        if not text:
            return []
        if self.live:
            return self.merger.feed(rank, name, text, now)
        self.kept.setdefault(rank, {}).setdefault(name, []).append(text)
        return []

    def due(self, now: float) -> list[Piece]:
        return self.merger.due(now) if self.live else []

    def end(self, group: str) -> list[Piece]:
        """What is left to show when the cell ends: the merger's last lines (live), or the kept
        output by rank ("engine": each rank's stdout and stderr together) or by stream ("type":
        all stdout first); ranks with the same output are shown once."""
        if self.live:
            return self.merger.flush()
        outputs = {rank: {name: "".join(parts) for name, parts in streams.items()}
                   for rank, streams in self.kept.items()}
        pieces: list[Piece] = []
        for names in (("stdout",), ("stderr",)) if group == "type" else (("stdout", "stderr"),):
            texts = {rank: tuple(out.get(name, "") for name in names) for rank, out in outputs.items()}
            groups = merge_by_text(texts) if self.merge else [((r,), texts[r]) for r in sorted(texts)]
            for ranks, parts in groups:
                pieces += [(ranks, name, part) for name, part in zip(names, parts) if part]
        return pieces

    def close(self) -> str:
        """Close the spill file; the note saying what was left out, or ""."""
        self.cap.spill.close()
        return self.cap.note()

