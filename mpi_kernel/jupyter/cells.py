"""IPython-style cells on a server: last-expression results, display(), figures, tracebacks.

Used for the %%px magic's requests (kind "cell"): `python -m mpi_kernel` plugs CellRunner
into the framework's server (MPICommandServer.cell_runner), which never imports IPython. A minimal IPython shell (no
history, no display hooks) is created on first use, so `IPython.display.display`
and `plt.show()` work on servers; what they publish is sent to the client as
display data. Plain commands from the guide's API never load IPython.
"""
from __future__ import annotations

import ast
import os
import sys
from types import CodeType, TracebackType
from typing import Any, Callable

from ..framework.bounded import BoundedCache, SourceKeeper, source_hash

Publish = Callable[[dict, dict, dict | None, bool], None]  # (data, metadata, transient, update)
_BACKEND = "module://matplotlib_inline.backend_inline"
_PLAIN = {int, float, complex, bool, str, bytes}


def cell_filename(source: str) -> str:
    return f"<px-cell-{source_hash(source)}>"


class _Publisher:
    """Stands in for IPython's DisplayPublisher on a server."""

    def __init__(self, publish: Publish) -> None:
        self._publish = publish

    def publish(self, data: dict, metadata: dict | None = None, source: Any = None, *,
                transient: dict | None = None, update: bool = False, **kwargs: Any) -> None:
        self._publish(data, metadata or {}, transient, update)

    def clear_output(self, wait: bool = False) -> None:
        pass  # a server cannot clear the client's cell


def _refuse_exit() -> None:
    raise SystemExit("exit() and quit() end only this cell on a server: the servers keep running "
                     "until the kernel stops (restart the kernel to end the MPI job)")


class CellRunner:
    """Runs cell source like IPython does and formats results and errors."""

    def __init__(self, namespace: dict, publish: Publish, sources: SourceKeeper) -> None:
        self.namespace = namespace
        self._publish = publish
        self._shell: Any = None
        self._sources = sources
        self._cache = BoundedCache(256, 16 << 20)  # source -> (body, last expression)

    @property
    def shell(self) -> Any:
        if self._shell is None:
            os.environ.setdefault("MPLBACKEND", _BACKEND)  # before user code imports pyplot
            from IPython.core.interactiveshell import InteractiveShell
            from traitlets.config import Config
            config = Config()
            config.HistoryManager.enabled = False  # ranks must not share one sqlite file
            self._shell = InteractiveShell.instance(config=config, user_ns=self.namespace)
            self._shell.display_pub = _Publisher(self._publish)
            self._shell.ask_exit = _refuse_exit  # what IPython's exit and quit call
            self.namespace.setdefault("display", __import__("IPython.display").display.display)
        return self._shell

    def compile(self, source: str) -> tuple[CodeType, CodeType | None]:
        """Compile the body and, if the cell ends with an expression, that expression."""
        codes = self._cache.get(source)
        if codes is None:
            filename = cell_filename(source)
            # Kept like IPython's cells, so tracebacks and stack dumps show the right lines
            # even for functions a cell defined long ago (within the keeper's byte budget).
            self._sources.keep(filename, source)
            # IPython syntax (%magics, !shell) as in any cell; line numbers are kept.
            tree = ast.parse(self.shell.transform_cell(source), filename)
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = compile(ast.Expression(tree.body.pop().value), filename, "eval")
            codes = (compile(tree, filename, "exec"), last)
            self._cache.put(source, codes, len(source))
        return codes

    def run(self, body: CodeType, last: CodeType | None) -> Any:
        """Execute; return the value of the last expression (None if there is none)."""
        self.shell  # noqa: B018 - display() and figures need it before user code runs
        exec(body, self.namespace)
        return eval(last, self.namespace) if last is not None else None

    def result(self, value: Any, want_value: bool) -> dict | None:
        """The Out[...] of a cell: the value's mime bundle (and the value if asked)."""
        self.flush_figures()
        if value is None:
            return None
        self.namespace["_"] = value
        if type(value) in _PLAIN:  # IPython's formatters would give exactly the repr, 20x slower
            data, metadata = {"text/plain": repr(value)}, {}
        else:
            data, metadata = self.shell.display_formatter.format(value)
        return {"data": data, "metadata": metadata, "value": value if want_value else None}

    def flush_figures(self) -> None:
        """Show and close figures the cell left open, as the inline backend does."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        from IPython.display import display
        for num in pyplot.get_fignums():
            display(pyplot.figure(num))
        pyplot.close("all")

    def traceback(self, exc: BaseException, tb: TracebackType | None) -> str:
        """An IPython-style (colored) traceback, without the framework's frames."""
        self.flush_figures()
        if isinstance(exc, SyntaxError) and tb is not None and tb.tb_frame.f_globals is not self.namespace:
            # raised while compiling the cell: show the error at its line, as IPython does
            lines = self.shell.SyntaxTB.structured_traceback(type(exc), exc, None)
        else:
            lines = self.shell.InteractiveTB.structured_traceback(type(exc), exc, tb)
        return "\n".join(lines)
