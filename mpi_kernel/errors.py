"""Every exception class of mpi-kernel, in one place.

Pure Python (no MPI, no IPython), so any layer may import it. The remote errors keep
IPython's `_render_traceback_` hook: a notebook shows the servers' tracebacks, not the
client frames that raised them.
"""
from __future__ import annotations

import re
from typing import NamedTuple

from .framework.protocol import format_ranks  # pure: importing it starts no MPI

ANSI = re.compile(r"\x1b\[[0-9;]*m")
RED, CYAN, RESET = "\x1b[31m", "\x1b[36m", "\x1b[39m"


# -- the framework --------------------------------------------------------------------------
class MPIEnvironmentError(RuntimeError):
    """The MPI world cannot host mpi-kernel; the message says why and how to fix it."""


class DecodeError(Exception):
    """A message arrived (and was consumed) but could not be unpickled here."""


class ServerError(RuntimeError):
    """push, pull, scatter or gather failed on a server; `responses` holds every failed response."""

    def __init__(self, message: str, responses: list[dict]) -> None:
        super().__init__(message)
        self.responses = responses


# -- what ran on the servers ------------------------------------------------------------------
class DeadServerError(ValueError):
    """A request names a server whose process has ended: the survivors keep serving."""

    def __init__(self, rank: int, reason: str) -> None:
        self.rank, self.reason = rank, reason
        how = reason.strip().splitlines()[-1].split(": ", 1)[-1] if reason.strip() else "its process ended"
        super().__init__(f"server {rank} is dead ({how}); choose other targets, or start a new "
                         f"server {rank} with %mpi_restart_dead (client.restart_dead()): its "
                         f"variables are lost")


class Failure(NamedTuple):
    """One failed request: the task it was (None for a %%px cell's rank), its server, the traceback."""

    task: int | None
    rank: int | None
    traceback: str


def error_name(traceback_text: str) -> str:
    """The exception's name, from the last line of a (possibly colored) traceback."""
    plain = ANSI.sub("", traceback_text).strip()
    last = plain.splitlines()[-1] if plain else "Error"
    return last.split(":", 1)[0].strip() or "Error"


def _numbered(word: str, numbers: list[int]) -> str:
    """"task 3" or "tasks 0-2, 5" (each number once)."""
    unique = sorted(set(numbers))
    return f"{word}{'s' if len(unique) > 1 else ''} {format_ranks(unique)}"


def ranks_word(ranks: list[int]) -> str:
    """"rank 1" or "ranks 0-2"."""
    return _numbered("rank", ranks)


class RemoteError(RuntimeError):
    """Code failed on servers: the failures merged by identical traceback, as STAT merges
    stacks. Raised by %%px (one failure per rank) and by the views' AsyncResult (one per
    task). `failures` lists them all; `groups` maps each traceback to its failures.

    A notebook shows each group's traceback under a colored header. str() is the summary
    line (a kernel's `evalue`), followed by the tracebacks when `detailed`: a view's error
    may end a plain script, which has only str() to print. The magics' errors are always
    shown by IPython, so theirs (from_responses) is the summary alone."""

    def __init__(self, failures: list[Failure] | list[tuple], note: str = "", detailed: bool = True,
                 call: str = "") -> None:
        self.failures = [Failure(*f) for f in failures]
        self.note = note
        self.detailed = detailed
        self.call = call  # what ran ("execute" for a %%px cell): headers read [0-2:execute], as ipyparallel's
        self.groups: dict[str, list[Failure]] = {}
        for failure in self.failures:
            self.groups.setdefault(failure.traceback, []).append(failure)
        summary = "; ".join(self._label(tb) for tb in self.groups)
        super().__init__(". ".join(part for part in (summary, note) if part))

    @classmethod
    def from_responses(cls, failed: list[dict], note: str = "", call: str = "execute") -> "RemoteError":
        """From failed response dicts of a %%px cell or a magic, in rank order."""
        return cls([Failure(None, r["server"], r["traceback"] or "")
                    for r in sorted(failed, key=lambda r: r["server"])], note, detailed=False, call=call)

    def _label(self, traceback_text: str) -> str:
        where = self.groups[traceback_text]
        tasks = [f.task for f in where if f.task is not None]
        ranks = [f.rank for f in where if f.rank is not None]
        label = error_name(traceback_text)
        if tasks:
            label += f" in {_numbered('task', tasks)}"
        return label + (f" on {ranks_word(ranks)}" if ranks else "")

    def _header(self, traceback_text: str) -> str:
        """[0-2:execute]: ZeroDivisionError on ranks 0-2 (ipyparallel's [0:execute], for a
        rank set), or [ZeroDivisionError in tasks 1-2 on rank 1] for a view's tasks."""
        where = self.groups[traceback_text]
        ranks = sorted({f.rank for f in where if f.rank is not None})
        if self.call and ranks and all(f.task is None for f in where):
            return f"[{format_ranks(ranks).replace(', ', ',')}:{self.call}]: {self._label(traceback_text)}"
        return f"[{self._label(traceback_text)}]"

    def __str__(self) -> str:
        lines = [super().__str__()]
        for text in self.groups if self.detailed else ():
            lines += ["", self._header(text), text.rstrip()]
        return "\n".join(lines)

    def _render_traceback_(self) -> list[str]:  # IPython: the remote tracebacks, not ours
        lines: list[str] = []
        for text in self.groups:
            lines.append(f"{CYAN}{self._header(text)}{RESET}")
            lines.extend(text.rstrip("\n").splitlines())
            lines.append("")
        if self.note:
            lines.append(self.note)
        return lines


RemoteTaskError = RemoteError  # the name the views used before the two merged errors became one


# -- the magics -------------------------------------------------------------------------------
class PxTimeout(RemoteError):
    """Raised by %%px --timeout when servers were still busy."""


class PxError(Exception):
    """A %%px failure that is not one rank's error: shown as its message, without frames."""

    def _render_traceback_(self) -> list[str]:
        return [f"{RED}{type(self).__name__}{RESET}: {self}"]


class PxInterrupted(KeyboardInterrupt):
    """A second Ctrl-C while %%px was stopping the servers: one line, not the client's frames."""

    _render_traceback_ = PxError._render_traceback_


# -- the Jupyter side -------------------------------------------------------------------------
class LinkError(RuntimeError):
    """A supervisor link line that is malformed or not signed with the key."""
