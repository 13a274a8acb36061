"""How a %%px cell runs: the one policy behind %%px, %px, %autopx and %pxresult.

It sends the cell, waits in short slices while it shows the servers' output as it comes
(merged by rank set, capped, paced), a progress line and, for ranks that seem stuck, what
their stacks say; it stops the cell on Ctrl-C or --timeout (through the framework's one
stop policy, mpi_kernel.framework.stopping), and shows the results and the merged errors.
The magics (magics.py) only parse their options and call it.
"""
from __future__ import annotations

import collections
import sys
import time
from typing import Any, Protocol

from mpi_kernel.errors import PxError, PxInterrupted, PxTimeout, RemoteError, error_name, ranks_word
from mpi_kernel.framework.client import MPICommandClient
from mpi_kernel.framework.protocol import format_ranks
from mpi_kernel.framework.stopping import Stop
from mpi_kernel.framework.stuck import explain, waits_for_dead
from mpi_kernel.parallel.asyncresult import AsyncResult

from . import display as show
from .cellout import CellOutput, Pacer, Spill
from .localwatch import LocalWatch

DIAGNOSE_AFTER = 5.0  # seconds a cell waits before its progress line looks at the ranks' stacks
DEATH_LOOK_AFTER = 1.0  # seconds after a death before the cell looks whether the others wait for it
BUSY_NOTICE_AFTER = 1.0  # seconds a server has been busy before a new cell says it waits for it
LOCAL_FAILED_WAIT = 5.0  # seconds the servers get to finish once the client's part of --local failed
STOP_WAIT = 3.0  # seconds after Stop before the cell says which ranks did not stop, and why


class Settings(Protocol):
    """The magics' configurable settings (MPIMagics' traitlets)."""

    progress_after: float
    max_lines: int
    output_dir: str


class PxRunner:
    """Runs %%px cells for one shell. Output events come from the client's callbacks,
    which the pumping thread calls; this thread shows them."""

    def __init__(self, shell: Any, client: MPICommandClient, settings: Settings) -> None:
        self.shell, self.client, self.settings = shell, client, settings
        self.events: collections.deque = collections.deque()   # filled by the pumping thread
        self.deferred: dict[int, list] = {}                     # displays of --noblock requests
        self.pending: dict[str, tuple[list[int], bool]] = {}    # %pxresult NAME -> (ids, want value)
        self.printer = show.StreamPrinter()
        self.cell_out: CellOutput | None = None  # the running cell's output (_cell_output)
        client.stream_callback = lambda *event: self.events.append(("stream", *event))
        client.display_callback = lambda *event: self.events.append(("display", *event))

    def run(self, source: str, targets: list[int] | None, args: Any) -> AsyncResult | None:
        """Run a %%px cell on `targets` (None: the first free server) with the magic's
        parsed options (%pxconfig's defaults filled in). A --noblock cell returns its
        AsyncResult at once, as ipyparallel's %px does (`ar = %px 6*7`)."""
        # A blocking cell shows its output from the stream: its responses need no copy of it,
        # unless -o keeps them (the AsyncResult's stdout).
        # Values travel back only for an AsyncResult (-o, --noblock): most cells show Out[] alone.
        ids = self.client.execute_cell(source, targets, want_value=args.out is not None or not args.block,
                                       local=args.local, keep_output=not args.block or args.out is not None)
        self._say_busy(ids)
        if args.verbose:  # ipyparallel's banner, and our request ids
            where = "the first idle server" if targets is None else _engines(targets)
            print(f"{'Parallel' if args.block else 'Async parallel'} execution on engine(s): {where}"
                  f"{' and the client' if args.local else ''} (request{'s' if len(ids) > 1 else ''} "
                  f"{format_ranks(ids)})", flush=True)
        if not args.block:
            name = args.out or "_"
            self.pending[name] = (ids, args.out is not None)
            # %pxresult reads the records too, so the AsyncResult keeps them.
            result = AsyncResult(self.client, ids, _cell_value, "ranks", keep_records=True)
            if args.out:  # ipyparallel's %%px --noblock -o: NAME.get() waits; %pxresult works too
                self.shell.user_ns[args.out] = result
            print(f"[px] running as request{'s' if len(ids) > 1 else ''} {format_ranks(ids)}; "
                  f"%pxresult{'' if name == '_' else ' ' + name} shows the results")
            return result
        if args.local:
            with LocalWatch(self.client):  # (a server's death must not hang it for ever)
                local_ok = self.shell.run_cell(source, store_history=False).success
        else:
            local_ok = True
        timeout, local = args.timeout, args.local
        if not local_ok:
            # The client will not join the servers' collectives now: do not wait for ever.
            timeout, local = min(timeout or LOCAL_FAILED_WAIT, LOCAL_FAILED_WAIT), False
        started = time.monotonic()
        out = self._cell_output(ids, args.group_outputs == "order", args.merge, args.max_lines)
        try:
            self._wait(ids, timeout, out, local, args.progress_after)
            self._finish(ids, args.group_outputs, args.out, out)
        except RemoteError as exc:
            if not local_ok:
                exc.note = "\n".join(filter(None, [exc.note, f"The client's part (rank {self._client_rank}) "
                                                             f"failed too: its traceback is above."]))
            raise
        finally:
            out.close()
            self.client.forget(ids)
        if not local_ok:  # only the client's part failed: the cell fails all the same
            raise PxError(f"%%px --local: the cell failed on the client (rank {self._client_rank}); "
                               f"its traceback is above. It succeeded on the servers.")
        if args.verbose:
            print(f"[px] done in {time.monotonic() - started:.3f} s")
        return None


    def result(self, name: str, merge: bool) -> None:
        """Wait for and show the results of the %%px --noblock cell stored as `name`."""
        ids, want_value = self.pending[name]
        # Its streams come from the responses: events of a --noblock cell are not kept.
        out = self._cell_output(ids, False, merge, self.settings.max_lines, from_events=False)
        self._wait(ids, None, out, False)
        del self.pending[name]
        try:
            for r in sorted(self.client.get_command_response(ids, False, False), key=lambda r: r["server"]):
                for stream in ("stdout", "stderr"):
                    out.stream(r["server"], stream, r[stream], 0.0)
            self._finish(ids, "engine", name if want_value else None, out)
        finally:
            out.close()
            self.client.forget(ids)

    def _cell_output(self, ids: list[int], live: bool, merge: bool, max_lines: int,
                     from_events: bool = True) -> CellOutput:
        """The cell's output streams, with a fresh printer (no line is left open) paced to
        stay under the IOPub data rate limit."""
        self.printer = show.StreamPrinter(Pacer())
        spill = Spill(self.settings.output_dir, f"px-cell-{self.shell.execution_count}-{ids[0]}.txt")
        self.cell_out = CellOutput(range(len(ids)), live, merge, max_lines, spill, from_events)
        return self.cell_out

    @property
    def _client_rank(self) -> int:
        return len(self.client.servers())

    def _say_busy(self, ids: list[int]) -> None:
        """Say at once when the cell must wait for servers busy with earlier work for a while
        (work younger than BUSY_NOTICE_AFTER, such as the kernel's own warm-up, is left out:
        it is likely done before the notice is read)."""
        earlier = {s: self.client.get_server_status(s) for s in set(self.client.queued(ids).values())
                   if s is not None}
        for rank, status in sorted(earlier.items()):
            if status["busy"] and status["command_id"] not in ids and \
                    (status["elapsed"] or 0) >= BUSY_NOTICE_AFTER:
                command = (status["command"] or "").strip().splitlines() or ["?"]
                print(f"[px] rank {rank} is still busy with an earlier request ({command[0][:60]!r}, "
                      f"running {status['elapsed'] or 0:.1f} s): this cell starts there when it ends. "
                      f"Stop or --timeout end the wait.", flush=True)

    def _wait(self, ids: list[int], timeout: float | None, out: CellOutput, local: bool,
              progress_after: float | None = None) -> None:
        """Wait for `ids`, showing live output and progress; handle Ctrl-C and --timeout."""
        after = self.settings.progress_after if progress_after is None else progress_after
        progress = show.ProgressLine(len(ids), after=after)
        slice_ = 0.3  # a cell done within the first slice shows its output in rank order
        next_look = DIAGNOSE_AFTER
        deaths_seen, death_look = set(self.client.dead()), None
        ranks = set(self.client.unanswered(ids).values()) - {None}  # the cell's (known so far)
        try:
            while not self.client.wait(ids, timeout=slice_):
                slice_ = 0.1
                self._drain(ids)
                waiting = self._waiting(ids)
                ranks.update(waiting)
                elapsed = time.monotonic() - progress.start
                dead = self.client.dead()
                if dead.keys() != deaths_seen:  # a rank died during the cell: say so now
                    self._say_died({r: dead[r] for r in dead.keys() - deaths_seen}, waiting)
                    deaths_seen, death_look = set(dead), elapsed + DEATH_LOOK_AFTER
                progress.dead = sorted(ranks & deaths_seen)
                if death_look is not None and waiting and elapsed > death_look:
                    death_look = None
                    self._end_if_waiting_for_dead(ids, waiting, local)
                if timeout is not None and elapsed > timeout:
                    self._expire(ids, timeout, local)
                if waiting and elapsed > next_look:  # a collective that cannot complete?
                    next_look = elapsed + DIAGNOSE_AFTER
                    progress.hint = "\n".join(line for line, blocked in self._diagnosis(waiting, local)[0]
                                              if blocked)
                progress.update(waiting)
        except KeyboardInterrupt:
            # The kernel's interrupt already reached the servers; make sure, then collect.
            self.client.stop(ids)
            try:
                answered = self.client.wait(ids, timeout=STOP_WAIT)
            except KeyboardInterrupt:
                raise PxInterrupted(f"interrupted again: stopped waiting for "
                                         f"{ranks_word(self._waiting(ids))}; output they write from "
                                         f"now on shows in a later %%px cell") from None
            if not answered:
                self._drain(ids)
                progress.close()
                self._finish(ids, "order", None, out, self._stuck_note(ids, local))
        finally:
            self._drain(ids)
            progress.close()

    def _waiting(self, ids: list[int]) -> list[int]:
        return sorted(s for s in self.client.unanswered(ids).values() if s is not None)

    @staticmethod
    def _say_died(deaths: dict[int, str], waiting: list[int]) -> None:
        """A live line per rank that died while the cell runs (the cell's error, with every
        rank's result, comes when the others end)."""
        going = f"{ranks_word(waiting).capitalize()} go on; Stop ends the cell." if waiting else ""
        for rank, reason in sorted(deaths.items()):
            how = reason.rstrip().splitlines()[-1].split(": ", 1)[-1]  # "server rank 1 on vm (pid ...) killed ..."
            print(f"[px] {how}{' ' if how.endswith(('?', '.')) else '. '}{going}".rstrip(),
                  file=sys.stderr, flush=True)


    def _diagnosis(self, stuck: list[int], local: bool) -> tuple[list[tuple[str, bool]], dict]:
        """What the `stuck` ranks are doing, from their stacks (mpi_kernel.framework.stuck):
        ([(advice, blocked)], {rank: stack report}). Every busy rank's stack is taken, so
        a collective's missing members can be named."""
        status = self.client.get_server_status()
        dead = sorted(self.client.dead())
        idle = [r for r, s in status.items() if not s["busy"] and r not in dead]
        stacks = self.client.stacks(sorted({r for r, s in status.items() if s["busy"]} | set(stuck)))
        reports = {r: None if v is None else v["doing"] for r, v in stacks.items()}
        still = [r for r in stuck if stacks.get(r) is None or stacks[r]["doing"] is not None]
        return explain(still, reports, idle, self._client_rank, local, dead), stacks

    def _end_if_waiting_for_dead(self, ids: list[int], waiting: list[int], local: bool) -> None:
        """A rank of the cell died and others still run: if they wait in a collective with it,
        which never returns (MPI does not tell them), end the cell now with the death and why
        they are stuck, instead of waiting for ever."""
        advice, stacks = self._diagnosis(waiting, local)
        dead = sorted(self.client.dead())
        if not any(waits_for_dead((stacks.get(r) or {}).get("doing"), dead) for r in waiting):
            return
        failed = [r for r in self.client.get_command_response(ids, False, False) if not r["successful"]]
        lines = [line for line, _ in advice]
        raise RemoteError.from_responses(failed, "\n".join([*lines, f"{ranks_word(waiting).capitalize()} "
                                                           f"still run the cell: work sent to them waits."]))

    def _expire(self, ids: list[int], timeout: float, local: bool) -> None:
        stop = Stop(self.client, ids)
        cancelled = stop.cancel()  # not started: they never will
        waiting = stop.running()
        status = self.client.get_server_status()
        advice, stacks = self._diagnosis(waiting, local) if waiting else ([], {})  # before the interrupt
        stop.interrupt()
        self.client.wait(ids, timeout=3)
        self._drain(ids)
        if waiting:
            lines = [f"%%px --timeout {timeout:g} s expired; still busy: {ranks_word(waiting)}"]
        else:
            lines = [f"%%px --timeout {timeout:g} s expired; it had not started (its servers were busy "
                     f"with earlier work), and it was cancelled: it will not run"]
        if cancelled and waiting:
            queued_on = sorted({r["server"] for r in self.client.get_command_response(cancelled, False, False)
                                if r["server"] is not None})
            lines.append(f"Not started on {ranks_word(queued_on) if queued_on else 'any server'} "
                         f"(busy with earlier work): cancelled there, it will not run.")
        for rank in waiting:
            command = (status[rank].get("command") or "").strip().splitlines()
            stack = (stacks.get(rank) or {}).get("stack", "").rstrip()
            lines.append(f"rank {rank} was running: {command[0] if command else '?'}"
                         + (f" ...\n{stack}" if stack else ""))
        still = self._waiting(ids)
        if still:
            lines.extend(_not_stopped(still, advice))
        elif waiting:
            lines.append("The servers were interrupted.")
        # The interrupted ranks' KeyboardInterrupts are what the summary describes: other
        # errors (a rank that failed before the timeout) are shown beside it.
        failed = [r for r in self.client.get_command_response(ids, False, False)
                  if not r["successful"] and error_name(r["traceback"] or "") != "KeyboardInterrupt"]
        raise PxTimeout.from_responses(failed, "\n".join(lines))

    def _stuck_note(self, ids: list[int], local: bool) -> str:
        """Say which ranks an interrupt did not stop, what they are doing, and what helps."""
        stuck = self._waiting(ids)
        if not stuck:
            return ""
        return "\n".join(_not_stopped(stuck, self._diagnosis(stuck, local)[0]))

    def _drain(self, ids: list[int]) -> None:
        """Show the output events of `ids` (through the cell's CellOutput: capped, merged),
        output written on a server between commands (a thread a cell started) and late
        output of cells that have ended (a server that timed out, then recovered); keep
        what --noblock cells write for %pxresult.

        Each batch (what arrived since the last look, 0.1 s at most) is taken in rank
        order, keeping each rank's own order: a quick cell's output then reads the same
        every time, whichever server answered first.
        """
        out = self.cell_out
        batch = []
        background = {i for pending, _ in self.pending.values() for i in pending}
        while self.events:
            event = self.events.popleft()
            kind, server, request_id, *rest = event
            mine = request_id in ids
            if (request_id in background and not mine) or (kind == "display" and mine and not out.live):
                if kind == "display":  # shown by _finish, in rank order (%pxresult, --no-stream)
                    self.deferred.setdefault(request_id, []).append((server, *rest))
                continue  # %pxresult shows streams from the responses
            batch.append(event)
        now = time.monotonic()
        pieces, displays = [], []
        for kind, server, request_id, *rest in sorted(batch, key=lambda event: event[1]):
            if kind == "display":
                displays.append((server, rest[0], rest[1]))
            elif request_id in ids:
                if out.from_events:
                    pieces += out.stream(server, rest[0], rest[1], now)
            else:  # between commands, or a late answer: as it comes
                pieces.append(((server,), rest[0], rest[1]))
        pieces += out.merger.flush() if displays else out.due(now)  # lines before a display stay before it
        self._show(pieces)
        for ranks, data, metadata in self._merged_displays(displays, out.merge):
            show.show_display(ranks, data, metadata)

    def _show(self, pieces: list) -> None:
        for ranks, name, text in pieces:
            self.printer.write(ranks, name, text)
        if pieces:
            show.flush()

    @staticmethod
    def _merged_displays(displays: list[tuple[int, dict, dict]], merge: bool) -> list:
        if merge:
            return show.merge_displays(displays)
        return [((rank,), data, metadata) for rank, data, metadata in displays]

    def _finish(self, ids: list[int], group: str, name: str | None, out: CellOutput,
                note: str = "") -> None:
        """Show results (and grouped output); store --out; raise if any rank failed
        (or, with `note`, if some never answered)."""
        responses = [_for_the_cell(r) for r in self.client.get_command_response(ids, False, False)]
        deferred = [item for request_id in ids for item in self.deferred.pop(request_id, [])]
        for ranks, data, metadata in self._merged_displays([d[:3] for d in deferred], out.merge):
            show.show_display(ranks, data, metadata)
        self._show(out.end(group))
        self.printer.end_lines()  # output without a final newline must not run into Out[...]
        left_out = out.close()
        if left_out:
            print(left_out)
        count = self.shell.execution_count
        results = [(r["server"], r["ret"]) for r in responses if r["successful"] and r["ret"] is not None]
        for ranks, ret in show.merge_results(results) if out.merge else [((k,), v) for k, v in sorted(results)]:
            show.show_result(ranks, count, ret)
        ordered = sorted(responses, key=lambda r: r["server"])
        if name is not None:  # as ipyparallel's %%px -o: .get() in rank order, .get_dict() by rank
            self.shell.user_ns[name] = AsyncResult.done(ordered, _cell_value, "ranks")
        failed = [r for r in responses if not r["successful"]]
        if failed or note:
            raise RemoteError.from_responses(failed, note)



def _cell_value(ret: Any) -> list:
    """A rank's result of a %%px cell: its last expression's value (None without one)."""
    return [(ret or {}).get("value") if isinstance(ret, dict) else ret]


def _engines(targets: list[int]) -> str:
    """The targets as ipyparallel's banner lists them: [0, 1, 2, 3, ..., 60, 61, 62, 63]."""
    if len(targets) > 10:
        return str(targets[:4])[:-1] + ", ..., " + str(targets[-4:])[1:]
    return str(targets)


def _not_stopped(ranks: list[int], advice: list[tuple[str, bool]]) -> list[str]:
    return [f"{ranks_word(ranks).capitalize()} did not stop after the interrupt:",
            *(line for line, _ in advice), "Work sent to them waits until they are free."]


def _for_the_cell(response: dict) -> dict:
    """A synthetic timeout response, worded for a cell: the cell ends, and then its records go."""
    if response["status"] != "timeout":
        return response
    text = (f"ServerTimeout: server {response['server']} did not answer the monitor in time: its "
            f"code holds the GIL (a C extension, a huge integer power), or the rank is gone. This "
            f"cell ends here. If the server recovers, what it prints from then on shows in a later "
            f"%%px cell, its result is dropped, and cells sent to it run once it is free.\n")
    return {**response, "traceback": text}
