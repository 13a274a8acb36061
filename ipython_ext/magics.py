"""The parallel magics: %%px, %px, %autopx, %pxresult, %mpi_push, %mpi_pull,
%mpi_status, %mpi_monitor. They talk to the servers through MPICommandClient."""
from __future__ import annotations

import ast
import collections
import contextlib
import re
import shlex
import time
import types
from typing import Any, Iterator

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Float, Int, Unicode, default

from mpi_kernel.errors import PxError, PxInterrupted, PxTimeout, RemoteError, ServerError, error_name, ranks_word
from mpi_kernel.framework.client import MPICommandClient
from mpi_kernel.framework.stopping import Stop
from mpi_kernel.parallel.asyncresult import AsyncResult
from mpi_kernel.framework.protocol import format_ranks
from mpi_kernel.framework.stuck import explain

from . import display as show
from .cellout import CellOutput, Pacer, Spill, default_output_dir
from .live_monitor import TILE_UP_TO, MonitorUpdater, show_monitor, summary
from .targets import parse_targets

DIAGNOSE_AFTER = 5.0  # seconds a cell waits before its progress line looks at the ranks' stacks
BUSY_NOTICE_AFTER = 1.0  # seconds a server has been busy before a new cell says it waits for it
LOCAL_FAILED_WAIT = 5.0  # seconds the servers get to finish once the client's part of --local failed
STOP_WAIT = 3.0  # seconds after Stop before the cell says which ranks did not stop, and why
# The --targets option of the magics that move variables (no "any": they need definite ranks).
_DEFINITE_TARGETS = argument("--targets", "-t", default="all", help="servers: all, 0, 0,2, 1-3 (default all)")
_VALUE_OPTIONS = {"--targets", "-t", "--timeout", "--group-outputs", "--out", "-o", "--progress-after",
                  "--max-lines"}


@magics_class
class MPIMagics(Magics):
    progress_after = Float(1.0, help="Seconds a %%px cell runs before its progress line appears. "
                                     "The line is one more output of the cell, so test runs that "
                                     "compare outputs (nbval) may set inf to turn it off.").tag(config=True)
    max_lines = Int(1000, help="Lines of output a %%px cell shows per rank (0: all); the rest goes "
                               "to a file in output_dir, and the cell says where.").tag(config=True)
    output_dir = Unicode(help="Where the output a cell did not show is written.").tag(config=True)

    @default("output_dir")
    def _output_dir_default(self) -> str:
        return default_output_dir()

    def __init__(self, shell: Any, client: MPICommandClient) -> None:
        super().__init__(shell)
        self.client = client
        self.events: collections.deque = collections.deque()   # filled by the pumping thread
        self.deferred: dict[int, list] = {}                     # displays of --noblock requests
        self.pending: dict[str, tuple[list[int], bool]] = {}    # %pxresult NAME -> (ids, want value)
        self.defaults: dict[str, Any] = {"targets": "all", "block": True, "verbose": False,  # %pxconfig
                                         "merge": True}
        self.autopx = False
        self.printer = show.StreamPrinter()
        self.cell_out: CellOutput | None = None  # the running cell's output (_cell_output)
        self.monitor = MonitorUpdater(client.get_server_status)
        client.stream_callback = lambda *event: self.events.append(("stream", *event))
        client.display_callback = lambda *event: self.events.append(("display", *event))

    # -- %%px --------------------------------------------------------------------------
    @magic_arguments()
    @argument("--targets", "-t", default=None,
              help="servers: all, any, 0, -1, 0,2, [0,2], 1-3, ::2, 1:3 (default all, or %%pxconfig's)")
    @argument("--block", dest="block", action="store_true", default=None,
              help="wait for the results (the default)")
    @argument("--noblock", dest="block", action="store_false",
              help="return at once; get results with %%pxresult")
    @argument("--local", action="store_true", help="also run the cell on the client, at the same time")
    @argument("--timeout", type=float, default=None, help="seconds before the servers are interrupted")
    @argument("--stream", dest="stream", action="store_true", default=None,
              help="show output live as it comes (the default)")
    @argument("--no-stream", dest="stream", action="store_false",
              help="show each rank's output together at the end")
    @argument("--progress-after", type=float, default=None,
              help="seconds before the progress line appears (default MPIMagics.progress_after)")
    @argument("--group-outputs", choices=["order", "engine", "rank", "type"], default=None,
              help="order: live as it comes; engine (or rank): each rank's output together at the "
                   "end; type: all stdout, then all stderr, at the end")
    @argument("--verbose", action="store_true", default=None,
              help="say where the cell runs and how long it took")
    @argument("--merge", dest="merge", action="store_true", default=None,
              help="show identical output of several ranks once, as [stdout:0-63] (the default)")
    @argument("--no-merge", dest="merge", action="store_false", help="show every rank's output separately")
    @argument("--max-lines", type=int, default=None,
              help="lines shown per rank (default MPIMagics.max_lines, 1000; 0: all); the rest goes to a file")
    @argument("--out", "-o", default=None,
              help="store the cell's AsyncResult in this variable (.get(), .get_dict())")
    @argument("statement", nargs="*", help="with %%px: the statement to run")
    @line_cell_magic
    def px(self, line: str, cell: str | None = None) -> None:
        """Run code on the MPI servers: %px STATEMENT or a %%px cell."""
        if cell is None:
            options, statement = _split_line(line)
            args = self._parse(self.px, options)
            source = statement
        else:
            args = self._parse(self.px, line)
            if args.statement:
                raise UsageError(f"%%px takes options only, not {' '.join(args.statement)!r}; "
                                 "put the code in the cell body")
            source = cell
        if not source.strip():
            raise UsageError("%px needs code to run, e.g. %px print(rank)")
        try:
            self._run_px(source, args)
        except PxInterrupted:
            raise
        except KeyboardInterrupt:  # a second Ctrl-C while the first was being handled
            raise PxInterrupted("interrupted while stopping the servers; output they write "
                                     "from now on shows in a later %%px cell") from None

    def _parse(self, magic: Any, line: str) -> Any:
        try:
            args = parse_argstring(magic, line)
        except ValueError as exc:  # shlex: "No closing quotation", "No escaped character"
            raise UsageError(f"cannot read the options {line!r}: {exc} (quote values with spaces "
                             f"in matching quotes)") from None
        if getattr(args, "timeout", None) is not None and not args.timeout > 0:  # nan too
            raise UsageError(f"--timeout must be a positive number of seconds, not {args.timeout:g}")
        if getattr(args, "progress_after", None) is not None and not args.progress_after >= 0:
            raise UsageError(f"--progress-after must be a number of seconds, not {args.progress_after:g}")
        if getattr(args, "max_lines", None) is not None and args.max_lines < 0:
            raise UsageError(f"--max-lines must be 0 (no limit) or more, not {args.max_lines}")
        if getattr(args, "out", None) is not None and not args.out.isidentifier():
            raise UsageError(f"--out takes a variable name, not {args.out!r}")
        return args

    def _targets(self, spec: str) -> list[int] | None:
        try:
            return parse_targets(spec, self.client.servers())
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def _definite_targets(self, spec: str, magic: str) -> list[int]:
        targets = self._targets(spec)
        if targets is None:
            raise UsageError(f"%{magic} needs definite targets (all or ranks), not 'any'")
        return targets

    def _run_px(self, source: str, args: Any) -> None:
        args = self._with_defaults(args)
        targets = self._targets(args.targets)
        if not args.block and args.local:
            raise UsageError("--noblock and --local cannot be combined")
        timed_out = sorted(set(targets or []) & set(self.client.timed_out()))
        if timed_out:
            raise UsageError(f"server {format_ranks(timed_out)} is in timeout; choose other --targets")
        # A blocking cell shows its output from the stream: its responses need no copy of it,
        # unless -o keeps them (the AsyncResult's stdout).
        ids = self.client.execute_cell(source, targets, want_value=args.out is not None, local=args.local,
                                       keep_output=not args.block or args.out is not None)
        self._say_busy(ids)
        if args.verbose:
            where = "the first idle server" if targets is None else ranks_word(targets)
            print(f"[px] running on {where}{' and the client' if args.local else ''} "
                  f"(request{'s' if len(ids) > 1 else ''} {format_ranks(ids)})", flush=True)
        if not args.block:
            name = args.out or "_"
            self.pending[name] = (ids, args.out is not None)
            if args.out:  # ipyparallel's %%px --noblock -o: NAME.get() waits; %pxresult works too
                self.shell.user_ns[args.out] = AsyncResult(self.client, ids, _cell_values, "ranks",
                                                           keep_records=True)
            print(f"[px] running as request{'s' if len(ids) > 1 else ''} {format_ranks(ids)}; "
                  f"%pxresult{'' if name == '_' else ' ' + name} shows the results")
            return
        local_ok = self.shell.run_cell(source, store_history=False).success if args.local else True
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

    def _with_defaults(self, args: Any) -> Any:
        """Options not given take %pxconfig's defaults; --no-stream groups output by rank."""
        for name, value in self.defaults.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        if args.group_outputs == "rank":  # this kernel's older name for it
            args.group_outputs = "engine"
        if args.stream is None:
            args.stream = args.group_outputs in (None, "order")
        if args.group_outputs is None or (args.group_outputs == "order" and not args.stream):
            args.group_outputs = "order" if args.stream else "engine"
        if args.progress_after is None:
            args.progress_after = self.progress_after
        if args.max_lines is None:
            args.max_lines = self.max_lines
        return args

    def _cell_output(self, ids: list[int], live: bool, merge: bool, max_lines: int,
                     from_events: bool = True) -> CellOutput:
        """The cell's output streams, with a fresh printer (no line is left open) paced to
        stay under the IOPub data rate limit."""
        self.printer = show.StreamPrinter(Pacer())
        spill = Spill(self.output_dir, f"px-cell-{self.shell.execution_count}-{ids[0]}.txt")
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
        after = self.progress_after if progress_after is None else progress_after
        progress = show.ProgressLine(len(ids), after=after)
        slice_ = 0.3  # a cell done within the first slice shows its output in rank order
        next_look = DIAGNOSE_AFTER
        try:
            while not self.client.wait(ids, timeout=slice_):
                slice_ = 0.1
                self._drain(ids)
                waiting = self._waiting(ids)
                elapsed = time.monotonic() - progress.start
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


    def _diagnosis(self, stuck: list[int], local: bool) -> tuple[list[tuple[str, bool]], dict]:
        """What the `stuck` ranks are doing, from their stacks (mpi_kernel.framework.stuck):
        ([(advice, blocked)], {rank: stack report}). Every busy rank's stack is taken, so
        a collective's missing members can be named."""
        status = self.client.get_server_status()
        idle = [r for r, s in status.items() if not s["busy"]]
        stacks = self.client.stacks(sorted({r for r, s in status.items() if s["busy"]} | set(stuck)))
        reports = {r: None if v is None else v["doing"] for r, v in stacks.items()}
        still = [r for r in stuck if stacks.get(r) is None or stacks[r]["doing"] is not None]
        return explain(still, reports, idle, self._client_rank, local), stacks

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
            self.shell.user_ns[name] = AsyncResult.done(ordered, _cell_values, "ranks")
        failed = [r for r in responses if not r["successful"]]
        if failed or note:
            raise RemoteError.from_responses(failed, note)

    @magic_arguments()
    @argument("--targets", "-t", default=None, help="default servers of later %%px cells")
    @argument("--block", dest="block", action="store_true", default=None, help="later cells wait (the default)")
    @argument("--noblock", dest="block", action="store_false", help="later cells return at once")
    @argument("--verbose", dest="verbose", action="store_true", default=None, help="later cells say where they ran")
    @argument("--no-verbose", dest="verbose", action="store_false", help="the default")
    @argument("--merge", dest="merge", action="store_true", default=None,
              help="later cells show identical output of several ranks once (the default)")
    @argument("--no-merge", dest="merge", action="store_false", help="later cells show every rank separately")
    @line_magic
    def pxconfig(self, line: str) -> None:
        """%pxconfig [--targets SPEC] [--block|--noblock] [--verbose|--no-verbose] [--merge|--no-merge]:
        defaults of later %%px cells."""
        args = self._parse(self.pxconfig, line)
        if args.targets is not None:
            self._targets(args.targets)  # a UsageError now rather than in every later cell
        for name in self.defaults:
            if getattr(args, name) is not None:
                self.defaults[name] = getattr(args, name)
        print("%px defaults: " + ", ".join(f"{k}={v}" for k, v in self.defaults.items()))

    # -- %pxresult, %autopx ---------------------------------------------------------------
    @line_magic
    def pxresult(self, line: str) -> None:
        """%pxresult [NAME]: wait for and show the results of a %%px --noblock cell."""
        name = line.strip() or "_"
        if name not in self.pending:
            known = ", ".join(sorted(n for n in self.pending if n != "_")) or "none"
            raise UsageError(f"no pending %%px --noblock results named {name!r} (named ones: {known})")
        ids, want_value = self.pending[name]
        # Its streams come from the responses: events of a --noblock cell are not kept.
        out = self._cell_output(ids, False, self.defaults["merge"], self.max_lines, from_events=False)
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

    @line_magic
    def autopx(self, line: str) -> None:
        """%autopx: toggle running every following cell on the servers."""
        transforms = self.shell.input_transformers_cleanup
        self.autopx = not self.autopx
        if self.autopx:
            transforms.append(_autopx_transform)
            print("%autopx enabled: cells run on all servers (run %autopx again to stop)")
        else:
            while _autopx_transform in transforms:
                transforms.remove(_autopx_transform)
            print("%autopx disabled")

    # -- variables -----------------------------------------------------------------------
    @magic_arguments()
    @argument("names", nargs="*", help="client variables to push")
    @_DEFINITE_TARGETS
    @line_cell_magic
    def mpi_push(self, line: str, cell: str | None = None) -> None:
        """%mpi_push a b: push client variables to servers. %%mpi_push: run the cell here, push what it assigns."""
        args = self._parse(self.mpi_push, line)
        targets = self._definite_targets(args.targets, "mpi_push")
        if cell is None:
            if not args.names:
                raise UsageError("%mpi_push needs variable names, e.g. %mpi_push a b")
            names = args.names
        else:
            if args.names:
                raise UsageError("%%mpi_push takes no names: it pushes what the cell assigns")
            result = self.shell.run_cell(cell, store_history=False)
            if not result.success:
                return
            names = assigned_names(cell)
        user_ns = self.shell.user_ns
        missing = [n for n in names if n not in user_ns]
        if missing:
            raise UsageError(f"not defined on the client: {', '.join(missing)}")
        # Modules cannot be pickled: the servers import them instead.
        modules = {n: user_ns[n].__name__ for n in names if isinstance(user_ns[n], types.ModuleType)}
        with _reported():
            self.client.push({n: user_ns[n] for n in names if n not in modules}, targets)
        if modules:
            imports = "import importlib\n" + "".join(
                f"{n} = importlib.import_module({m!r})\n" for n, m in modules.items())
            failed = [r for r in self.client.push_command_request(imports, True, targets)
                      if not r["successful"]]
            if failed:
                raise RemoteError.from_responses(failed)
        print(f"pushed {', '.join(names)} to ranks {format_ranks(targets)}")

    @magic_arguments()
    @argument("names", nargs="+", help="server variables to pull")
    @_DEFINITE_TARGETS
    @line_magic
    def mpi_pull(self, line: str) -> dict:
        """%mpi_pull NAME [NAME ...]: {rank: value} (a list of values per rank for several names)."""
        args = self._parse(self.mpi_pull, line)
        targets = self._definite_targets(args.targets, "mpi_pull")
        with _reported():
            return self.client.pull(args.names[0] if len(args.names) == 1 else args.names, targets)

    @magic_arguments()
    @argument("name", help="a client variable holding a list, tuple or NumPy array")
    @_DEFINITE_TARGETS
    @line_magic
    def mpi_scatter(self, line: str) -> None:
        """%mpi_scatter NAME: split a client sequence into contiguous parts, one per server."""
        args = self._parse(self.mpi_scatter, line)
        targets = self._definite_targets(args.targets, "mpi_scatter")
        if args.name not in self.shell.user_ns:
            raise UsageError(f"not defined on the client: {args.name}")
        with _reported():
            self.client.scatter(args.name, self.shell.user_ns[args.name], targets)
        print(f"scattered {args.name} over ranks {format_ranks(targets)}")

    @magic_arguments()
    @argument("name", help="a server variable holding a list, tuple or NumPy array")
    @_DEFINITE_TARGETS
    @line_magic
    def mpi_gather(self, line: str) -> Any:
        """%mpi_gather NAME: the servers' parts of NAME joined in rank order (arrays concatenated)."""
        args = self._parse(self.mpi_gather, line)
        targets = self._definite_targets(args.targets, "mpi_gather")
        with _reported():
            return self.client.gather(args.name, targets)

    # -- status ---------------------------------------------------------------------------
    @magic_arguments()
    @argument("--all", action="store_true", help="list every rank, idle ones too, however many")
    @line_magic
    def mpi_status(self, line: str) -> None:
        """%mpi_status [--all]: a one-line summary, then a table of the servers (rank, host, pid,
        state, command, elapsed); beyond 16 ranks only those not idle, unless --all."""
        args = self._parse(self.mpi_status, line)
        status = self.client.get_server_status()
        print(summary(status))
        if args.all or len(status) <= TILE_UP_TO:
            print(status_table(status))
            return
        active = {rank: s for rank, s in status.items() if s["state"] != "idle"}
        if active:
            print(status_table(active))
        print(f"({len(status) - len(active)} idle ranks not listed: %mpi_status --all lists every rank)")

    @line_magic
    def mpi_monitor(self, line: str) -> None:
        """%mpi_monitor: a live view of each server's state (idle, busy, timeout)."""
        if line.strip():
            raise UsageError("%mpi_monitor takes no arguments")
        show_monitor(self.monitor, getattr(self.shell, "kernel", None))


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """Errors of the variable magics as a user should see them: bad input as a UsageError,
    failures on servers merged by rank (as %%px shows them), without the client's frames."""
    try:
        yield
    except ServerError as exc:
        raise RemoteError.from_responses(exc.responses) from None
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _cell_values(rets: list) -> list:
    """A %%px cell's results: each rank's last-expression value (None without one)."""
    return [(ret or {}).get("value") if isinstance(ret, dict) else ret for ret in rets]


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


def status_table(status: dict[int, dict]) -> str:
    rows = [("rank", "host", "pid", "state", "command", "elapsed")]
    for rank, s in sorted(status.items()):
        command = (s.get("command") or "").strip().splitlines()
        elapsed = s.get("elapsed")
        rows.append((str(rank), s.get("host") or "", str(s.get("pid") or ""), s["state"],
                     (command[0][:40] + (" ..." if len(command) > 1 else "")) if command else "",
                     f"{elapsed:.1f} s" if elapsed is not None else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def assigned_names(source: str) -> list[str]:
    """Names a cell binds at its top level (assignments, defs, imports, for/with targets)."""
    names: list[str] = []

    def add(name: str) -> None:
        if name not in names:
            names.append(name)

    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            add(node.name)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                add((alias.asname or alias.name).split(".")[0])
            continue
        for sub in ast.walk(node):
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                break
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                add(sub.id)
    return names


def _split_line(line: str) -> tuple[str, str]:
    """Split `%px [options] STATEMENT` into the options and the statement (kept verbatim)."""
    rest = line.lstrip()
    options: list[str] = []
    while rest.startswith("-"):
        match = re.match(r"(\S+)\s*", rest)
        assert match is not None
        flag = match.group(1)
        rest = rest[match.end():]
        options.append(flag)
        if flag in _VALUE_OPTIONS:
            value = re.match(r"(\S+)\s*", rest)
            if value is None:
                raise UsageError(f"{flag} needs a value")
            options.append(value.group(1))
            rest = rest[value.end():]
    return " ".join(shlex.quote(o) for o in options), rest


def _autopx_transform(lines: list[str]) -> list[str]:
    """Input transformer for %autopx: prefix cells with %%px, except the toggle itself."""
    if lines and (lines[0].lstrip().startswith(("%autopx", "%%px", "%px"))):
        return lines
    return ["%%px\n", *lines]
