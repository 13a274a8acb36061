"""The parallel magics: %%px, %px, %autopx, %pxresult, %pxconfig, %mpi_push, %mpi_pull,
%mpi_scatter, %mpi_gather, %mpi_status, %mpi_monitor, %mpi_restart_dead.

They parse their options (magic_arguments; bad input is a UsageError and nothing is
sent) and call the client; a %%px cell runs through the one PxRunner (cellrun.py)."""
from __future__ import annotations

import ast
import contextlib
import re
import shlex
import sys
import types
from typing import Any, Iterator

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Float, Int, Unicode, default

from mpi_kernel.errors import DeadServerError, PxInterrupted, RemoteError, ServerError, ranks_word
from mpi_kernel.framework.client import MPICommandClient
from mpi_kernel.framework.protocol import format_ranks
from mpi_kernel.parallel.asyncresult import AsyncResult

from .cellout import default_output_dir
from .cellrun import PxRunner
from .live_monitor import TILE_UP_TO, MonitorUpdater, show_monitor, summary
from .targets import parse_targets

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
        self.runner = PxRunner(shell, client, self)  # how every %%px cell runs (cellrun.py)
        self.defaults: dict[str, Any] = {"targets": "all", "block": True, "verbose": False,  # %pxconfig
                                         "merge": True}
        self.autopx = False
        self._told: set[int] = set()  # dead servers the user has been told of
        self.monitor = MonitorUpdater(client.get_server_status)

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
    def px(self, line: str, cell: str | None = None) -> AsyncResult | None:
        """Run code on the MPI servers: %px STATEMENT or a %%px cell. With --noblock it
        returns the AsyncResult at once (`ar = %px --noblock 6*7`)."""
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
            return self._run_px(source, args)
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
        """The ranks `spec` names; "all" means the servers that are alive, and naming a dead
        one is a UsageError that says so."""
        try:
            targets = parse_targets(spec, self.client.servers())
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        dead = self.client.dead()
        if not dead or targets is None:
            return targets
        if spec.strip().lower() == "all":
            live = [t for t in targets if t not in dead]
            if not live:
                raise UsageError("every server is dead: %mpi_restart_dead starts them anew")
            return live
        named = [t for t in targets if t in dead]
        if named:
            raise UsageError(str(DeadServerError(named[0], dead[named[0]])))
        return targets

    def _tell_deaths(self) -> None:
        """Say once, in the next cell, which servers died since the last one said so."""
        for rank, reason in sorted(self.client.dead().items()):
            if rank not in self._told:
                lines = reason.strip().splitlines()
                print(f"mpi-kernel: {lines[-1]}\n{lines[0]}", file=sys.stderr, flush=True)
                self._told.add(rank)

    def _definite_targets(self, spec: str, magic: str) -> list[int]:
        targets = self._targets(spec)
        if targets is None:
            raise UsageError(f"%{magic} needs definite targets (all or ranks), not 'any'")
        return targets

    def _run_px(self, source: str, args: Any) -> AsyncResult | None:
        args = self._with_defaults(args)
        self._tell_deaths()
        targets = self._targets(args.targets)
        if not args.block and args.local:
            raise UsageError("--noblock and --local cannot be combined")
        timed_out = sorted(set(targets or []) & set(self.client.timed_out()))
        if timed_out:
            raise UsageError(f"server {format_ranks(timed_out)} is in timeout; choose other --targets")
        try:
            return self.runner.run(source, targets, args)
        finally:  # a death among the targets was this cell's error
            self._told.update(set(targets or []) & set(self.client.dead()))

    def _with_defaults(self, args: Any) -> Any:
        """Options not given take %pxconfig's defaults; --no-stream groups output by rank."""
        if args.group_outputs in ("engine", "rank", "order") and args.merge is None:
            args.merge = False  # asked for per-engine output, as ipyparallel shows it: no merged lines
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
        if name not in self.runner.pending:
            known = ", ".join(sorted(n for n in self.runner.pending if n != "_")) or "none"
            raise UsageError(f"no pending %%px --noblock results named {name!r} (named ones: {known})")
        self.runner.result(name, self.defaults["merge"])

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

    @magic_arguments()
    @argument("--end-busy", action="store_true",
              help="also end the servers that still run something (a collective with a dead rank "
                   "never returns) and start them anew: their variables are lost")
    @line_magic
    def mpi_restart_dead(self, line: str) -> None:
        """%mpi_restart_dead [--end-busy]: start a new server for each dead rank, with the same
        rank number and an empty namespace; MPI.COMM_WORLD in %%px cells has every rank again."""
        args = self._parse(self.mpi_restart_dead, line)
        if not self.client.dead():
            print("No server has died: every rank is running.")
            return
        try:
            ranks = self.client.restart_dead(end_busy=args.end_busy)
        except RuntimeError as exc:
            raise UsageError(str(exc)) from None
        status = self.client.get_server_status()
        where = ", ".join(f"{r} on {status[r]['host']} (pid {status[r]['pid']})" for r in ranks)
        print(f"Started {ranks_word(ranks)} anew: {where}. {'Their' if len(ranks) > 1 else 'Its'} "
              f"variables are empty (run the set-up cells there again); MPI.COMM_WORLD in %%px "
              f"cells has all {len(status)} ranks again.")
        self._told.difference_update(ranks)

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
