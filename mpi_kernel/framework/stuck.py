"""What a busy server is doing, read from its stack, and the advice that fits.

A server that an interrupt does not stop is in one of four places, and each
needs different advice:

- an MPI call waiting for partners (a collective some members never join, a
  receive nobody sends to): running the matching call on the missing ranks
  frees it, so no restart is needed;
- C code that releases the GIL (LAPACK in `numpy.linalg.eig`): it returns by
  itself, and the interrupt takes effect then;
- C code that holds the GIL (a huge integer power): the server's monitor thread
  cannot even answer, and it too ends by itself;
- Python code that caught the KeyboardInterrupt.

`describe` runs on the server's monitor thread, beside the blocked main thread:
it finds the call the innermost frame is in (the instruction's source span),
resolves the object it is called on without running user code
(`inspect.getattr_static`), and for a communicator says which world ranks are
in it. `explain` runs on the client: it puts the ranks' reports side by side
(a collective's missing members are the ranks not waiting in it) and words
the advice. Like LLNL STAT, it groups ranks by what they are doing.
"""
from __future__ import annotations

import ast
import dis
import inspect
import linecache
import re
from types import FrameType
from typing import Any

from .protocol import format_ranks

COLLECTIVES = {
    "Barrier", "Bcast", "bcast", "Gather", "Gatherv", "gather", "Scatter", "Scatterv", "scatter",
    "Allgather", "Allgatherv", "allgather", "Alltoall", "Alltoallv", "Alltoallw", "alltoall",
    "Reduce", "reduce", "Allreduce", "allreduce", "Reduce_scatter", "Reduce_scatter_block",
    "Scan", "scan", "Exscan", "exscan", "Dup", "Split", "Split_type", "Create", "Create_cart",
    "Create_graph", "Create_dist_graph", "Create_group", "Create_intercomm", "Merge", "Fence",
    "Free", "Disconnect", "Spawn", "Accept", "Connect", "Allocate", "Allocate_shared",
    "Create_dynamic", "Open", "Close", "Sync",
}
_MISSING = object()


def describe(frame: FrameType | None, world_group: Any, mpi: Any) -> dict[str, Any]:
    """What the innermost frame is doing: {"kind": "mpi" | "c" | "python", "call": text,
    "where": file:line, and for MPI "method", "collective", "comm", "members" (world ranks)}."""
    if frame is None:
        return {"kind": "python", "call": "", "where": ""}
    where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
    span = _call_span(frame)
    if span is None:
        text = _line(frame).strip()
        return {"kind": "c" if _in_operation(frame) else "python", "call": text, "where": where}
    text, func = span
    report: dict[str, Any] = {"kind": "c", "call": text, "where": where}
    if isinstance(func, ast.Attribute):
        target = _resolve(func.value, frame)
        if _is_mpi(target, mpi):
            report.update(kind="mpi", method=func.attr, collective=func.attr in COLLECTIVES,
                          **_members(target, world_group, mpi))
    return report


def _call_span(frame: FrameType) -> tuple[str, ast.expr] | None:
    """The source text and callee of the call the frame's current instruction makes."""
    code = frame.f_code
    instruction = _current_instruction(frame)
    if instruction is None or not instruction.opname.startswith(("CALL", "PRECALL")):
        return None
    positions = getattr(instruction, "positions", None)
    lines = linecache.getlines(code.co_filename)
    if positions is None or positions.lineno is None or not lines:
        return _call_on_line(_line(frame))
    first, last = positions.lineno, positions.end_lineno or positions.lineno
    chunk = lines[first - 1:last]
    if not chunk:
        return None
    # Column offsets count UTF-8 bytes.
    encoded = [line.encode() for line in chunk]
    encoded[-1] = encoded[-1][:positions.end_col_offset]
    encoded[0] = encoded[0][positions.col_offset:]
    text = b"".join(encoded).decode(errors="replace")
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return _call_on_line(_line(frame))
    return (" ".join(text.split()), node.func) if isinstance(node, ast.Call) else None


def _call_on_line(line: str) -> tuple[str, ast.expr] | None:
    """Python 3.10 has no instruction positions: the last `a.b.method(` on the line."""
    matches = re.findall(r"([A-Za-z_][\w.]*)\s*\(", line)
    if not matches:
        return None
    try:
        return line.strip(), ast.parse(matches[-1], mode="eval").body
    except SyntaxError:
        return None


def _line(frame: FrameType) -> str:
    return linecache.getline(frame.f_code.co_filename, frame.f_lineno)


def _current_instruction(frame: FrameType) -> dis.Instruction | None:
    """The instruction the frame is at. f_lasti may point into its inline cache entries,
    which dis does not list: take the last instruction at or before it."""
    found = None
    for instruction in dis.get_instructions(frame.f_code):
        if instruction.offset > frame.f_lasti:
            break
        found = instruction
    return found


def _in_operation(frame: FrameType) -> bool:
    """An operator implemented in C (x ** y on huge ints, a big sort) at the current instruction."""
    instruction = _current_instruction(frame)
    return instruction is not None and instruction.opname.startswith(("BINARY", "COMPARE", "CONTAINS"))


def _resolve(node: ast.expr, frame: FrameType) -> Any:
    """The value of a name or attribute chain, found without calling user code."""
    if isinstance(node, ast.Name):
        for scope in (frame.f_locals, frame.f_globals, frame.f_builtins):
            if node.id in scope:
                return scope[node.id]
        return _MISSING
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, frame)
        if base is _MISSING:
            return _MISSING
        try:
            return inspect.getattr_static(base, node.attr)
        except AttributeError:
            return _MISSING
    return _MISSING


def _is_mpi(target: Any, mpi: Any) -> bool:
    kinds = (mpi.Comm, mpi.Win, mpi.File, mpi.Request)
    return isinstance(target, kinds) or (isinstance(target, type) and issubclass(target, kinds))


def _members(target: Any, world_group: Any, mpi: Any) -> dict[str, Any]:
    """The communicator (or window) the call is on, and its members as world ranks."""
    if isinstance(target, type) or not isinstance(target, (mpi.Comm, mpi.Win)):
        return {"comm": None, "members": None}
    try:
        name = target.Get_name() if isinstance(target, mpi.Comm) else "a window"
        group = target.Get_group()
        members = mpi.Group.Translate_ranks(group, list(range(group.Get_size())), world_group)
        group.Free()
    except Exception:  # an intercommunicator's remote side, a freed handle: say less
        return {"comm": None, "members": None}
    return {"comm": name, "members": [int(m) for m in members]}


# -- the client's side ------------------------------------------------------------------
def explain(stuck: list[int], reports: dict[int, dict | None], idle: list[int], client_rank: int,
            client_joins: bool, dead: list[int] = ()) -> list[tuple[str, bool]]:
    """(advice, blocked) for each group of `stuck` ranks doing the same thing.

    `reports` has every busy rank's report (None: it did not answer, so it holds the GIL),
    which is how a collective's missing members are found. `idle` are the servers running
    nothing, `dead` those whose process ended; `client_joins` is True in a --local cell.
    `blocked` is True for a collective that cannot complete as things are (a member is idle,
    dead, or is the client of a plain cell).
    """
    groups: dict[tuple, list[int]] = {}
    for rank in sorted(stuck):
        groups.setdefault(_key(reports[rank]), []).append(rank)
    return [_advice(ranks, reports[ranks[0]], reports, idle, client_rank, client_joins, list(dead))
            for ranks in groups.values()]


def waits_for_dead(report: dict | None, dead: list[int]) -> bool:
    """Whether a rank's report is a collective with a dead member: under MPICH it never returns."""
    return bool(report and report.get("collective") and set(report.get("members") or ()) & set(dead))


def _key(report: dict | None) -> tuple:
    if report is None:
        return ("gil",)
    members = tuple(report.get("members") or ())
    return (report["kind"], report.get("method") or report["call"], members)


def _who(ranks: list[int]) -> str:
    return f"rank{'s' if len(ranks) > 1 else ''} {format_ranks(ranks)}"


def _advice(ranks: list[int], report: dict | None, reports: dict[int, dict | None], idle: list[int],
            client_rank: int, client_joins: bool, dead: list[int]) -> tuple[str, bool]:
    who = _who(ranks).capitalize()
    if report is None:
        return (f"{who} did not answer within 1 s: C code that holds the GIL (a huge integer "
                f"power, a C extension that does not release it). It stops by itself when that "
                f"code returns; restart the kernel only if it never does.", False)
    call = f"`{report['call']}`" if report["call"] else "its code"
    if report["kind"] == "c":
        return (f"{who} {'are' if len(ranks) > 1 else 'is'} in C code ({call}): it returns by itself "
                f"when done, and the interrupt takes effect then. Wait, or restart the kernel if it "
                f"never returns.", False)
    if report["kind"] == "unknown":
        return (f"{who} did not stop ({call}); interrupt again, or restart the kernel if it never "
                f"returns.", False)
    if report["kind"] == "python":
        return (f"{who} {'are' if len(ranks) > 1 else 'is'} running Python code ({call}) that did not "
                f"stop: it may catch KeyboardInterrupt. Interrupt again, or restart the kernel.", False)
    return _mpi_advice(who, ranks, report, reports, idle, client_rank, client_joins, dead)


def _mpi_advice(who: str, ranks: list[int], report: dict, reports: dict[int, dict | None],
                idle: list[int], client_rank: int, client_joins: bool, dead: list[int]) -> tuple[str, bool]:
    verb = "wait" if len(ranks) > 1 else "waits"
    call = f"`{report['call']}`"
    comm = f" on {report['comm']}" if report.get("comm") else ""
    if not report.get("collective") or not report.get("members"):
        return (f"{who} {verb} in the MPI call {call}{comm} for a partner that has not made the "
                f"matching call (a send or receive, a request to complete). Make that call on the "
                f"partner rank to release it, or restart the kernel.", False)
    members = report["members"]
    waiting = {r for r, other in reports.items() if other is not None and _key(other) == _key(report)}
    missing = [m for m in members if m not in waiting]
    size = f"{len(members)} ranks: {format_ranks(members)}"
    text = f"{who} {verb} in the collective {call}{comm} ({size})"
    if not missing:
        return text + "; every member is in it, so it should complete: wait a moment.", False
    parts = [f"; not in it: {_who(missing)}."]
    if client_rank in missing and not client_joins:
        parts.append(f" The client (rank {client_rank}) is a member but does not run plain %%px "
                     f"cells: use `comm` or `MPI.COMM_WORLD` (the servers' world) in plain %%px "
                     f"cells, or `%%px --local` to include the client.")
        if missing == [client_rank] and report.get("comm") == "MPI_COMM_WORLD":
            parts.append(f" To release these ranks now, run `MPI.COMM_WORLD.{report['method']}(...)` "
                         f"with matching arguments in a plain cell (on the client).")
    gone = [m for m in missing if m in dead]
    if gone:
        parts.append(f" {_who(gone).capitalize()} died, and MPI does not tell the others: the call "
                     f"never returns. `%mpi_restart_dead --end-busy` ends {_who(ranks)} and starts "
                     f"{_who(sorted(gone + ranks))} anew (their variables are lost), or restart the kernel.")
    free = [m for m in missing if m in idle and m not in dead]
    busy = [m for m in missing if m not in idle and m != client_rank and m not in dead]
    if free:
        parts.append(f" Run the matching call on {_who(free)} (`%%px --targets {format_ranks(free)}`) "
                     f"to release it; no restart is needed.")
    if busy:
        parts.append(f" {_who(busy).capitalize()} {'are' if len(busy) > 1 else 'is'} busy with "
                     f"other work; the collective completes only when they join.")
    client_out = client_rank in missing and not client_joins
    if client_rank in missing:
        parts.append(" If the missing ranks cannot join, restart the kernel.")
    return text + "".join(parts), bool(free) or client_out or bool(gone)
