"""MPICommandServer: runs on ranks 0..N-2, executes what the client sends.

The main thread receives requests and runs them in one persistent namespace;
the control thread (control.ControlThread) answers pings, relays interrupts and
flushes output. IPython-style cells (the %%px requests) run through a cell runner
that the layer above plugs in (`MPICommandServer.cell_runner`): the framework itself
never imports IPython. An interrupt is a SIGINT sent to the main thread, whose handler
raises KeyboardInterrupt only while user code runs, so a late interrupt can
never break the framework's own loop.
"""
from __future__ import annotations

import faulthandler
import functools
import linecache
import logging
import os
import signal
import sys
import threading
import time
import traceback
import types
from types import TracebackType
from typing import Any, Callable

from . import broadcast, environment, logs, memory, protocol, respawn, stuck, transport, usercomm
from .bounded import BoundedCache, SourceKeeper, source_hash
from .claims import Claims
from .control import ControlThread, pthread_interrupt
from .output import FdCapture, NoInput, OutputCapture, RemoteStream
from .protocol import Reply, Tag, as_reply

log = logging.getLogger("mpi_kernel.server")
# Compiled commands, and the sources kept for tracebacks: bounded by bytes as well as
# entries, so distinct big commands do not pile up on the servers.
CODE_CACHE = (1024, 16 << 20)


def _user_frames(exc: BaseException, framework_files: set[str]) -> TracebackType | None:
    """The traceback without the framework's own frames (the exec call at its top,
    the SIGINT handler that raised an interrupt at its bottom)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in framework_files:
        tb = tb.tb_next
    link = tb
    while link is not None and link.tb_next is not None:
        if link.tb_next.tb_frame.f_code.co_filename in framework_files:
            link.tb_next = None
        link = link.tb_next
    return tb


class _Globals(dict):
    """The globals of a function the notebook or script defined: the values it referenced
    there (cloudpickle sent them), then the server's namespace (`rank`, pushed variables),
    then builtins (a KeyError makes Python look there)."""

    def __init__(self, sent: dict, namespace: dict) -> None:
        super().__init__(sent)
        self._namespace = namespace

    def __missing__(self, name: str) -> Any:
        return self._namespace[name]


def _interactive(function: Any, namespace: dict) -> Any:
    """A function defined in the client's __main__, made to see the server's namespace as
    ipyparallel's engines do; other callables as they are."""
    if not isinstance(function, types.FunctionType) or function.__module__ != "__main__":
        return function
    rebound = types.FunctionType(function.__code__, _Globals(function.__globals__, namespace),
                                 function.__name__, function.__defaults__, function.__closure__)
    rebound.__kwdefaults__ = function.__kwdefaults__
    rebound.__dict__.update(function.__dict__)
    return rebound


def _stdin_from_devnull() -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


class MPICommandServer:
    """The one command server of a server rank (a singleton, as in the guide)."""

    _instance: "MPICommandServer | None" = None
    # Makes the runner of IPython-style cells: (namespace, publish display data, source
    # keeper) -> an object with compile, run, result and traceback (jupyter/cells.py's
    # CellRunner, which `python -m mpi_kernel` plugs in). None: cell requests fail.
    cell_runner: Callable[[dict, Callable, SourceKeeper], Any] | None = None

    def __new__(cls) -> "MPICommandServer":
        if cls._instance is None:
            env = environment.current()
            if env.is_client:
                raise RuntimeError(
                    f"MPICommandServer cannot be created on rank {env.rank}: it is the client rank "
                    f"(the top rank, N-1). Servers are ranks {protocol.format_ranks(env.server_ranks)}.")
            cls._instance = super().__new__(cls)
            cls._instance._setup(env)
        return cls._instance

    def _setup(self, env: environment.MPIEnvironment) -> None:
        self.env = env
        self._framework, self._client = env.framework, env.client_rank  # read on every reply
        self._filename = f"<server {env.rank}>"
        self.worlds = usercomm.worlds
        # `__name__` is "__main__", so a pasted program's `if __name__ == "__main__":` runs.
        self.namespace: dict[str, Any] = {
            "__name__": "__main__", "__builtins__": __builtins__,
            "comm": self.worlds.servers, "rank": env.rank, "size": env.servers.Get_size(),
            "MPI": transport.MPI,
        }
        self._current: tuple[int, str, float] | None = None  # (id, command, start time)
        self._world_group: Any = None  # COMM_WORLD's group, made on the first stack report
        self._armed = False  # True only while user code runs: SIGINT may raise then
        self._in_body = False  # True while a request's body runs (its preparation included)
        self._interrupt_for: int | None = None  # the request an interrupt was sent for
        # Requests sent ahead that the client takes back before they start (claims.py).
        self.claims = Claims(lambda ids: self.send_event(protocol.RELEASED, ids))
        self._serving = False
        self._main = threading.main_thread().ident
        self.capture = OutputCapture(self._send_stream)
        self.fd_capture: FdCapture | None = None  # started by configure()
        self._runners = {protocol.COMMAND: self._run_command, protocol.PUSH: self._push,
                         protocol.PULL: self._pull, protocol.CELL: self._run_cell,
                         protocol.CALLS: self._run_calls, protocol.REBUILD: self._rebuild}
        self.sources = SourceKeeper()
        self.broadcasts = broadcast.Receiver(env.framework, env.bcast, env.client_rank)
        self._codes = BoundedCache(*CODE_CACHE)
        self._functions = BoundedCache(*CODE_CACHE)  # a view's pickled function -> the function
        self.cells: Any = None  # made on the first cell request (cell_runner)
        # Frames of these files are cut from user tracebacks (output.py: input() raising on a
        # server; the cell runner's file is added when it is made).
        self._framework_files = {__file__, sys.modules[NoInput.__module__].__file__}
        self.control = ControlThread(self, self.capture.flush_if_old)

    # -- messages to the client ----------------------------------------------------------
    def send_event(self, kind: str, payload: Any) -> None:
        transport.send(self._framework, (kind, payload), self._client, Tag.EVENT)

    def _send_stream(self, request_id: int | None, name: str, text: str) -> None:
        self.send_event(protocol.STREAM, (request_id, name, text))

    def _send_display(self, data: dict, metadata: dict, transient: dict | None, update: bool) -> None:
        current = self._current
        self.capture.flush()  # output printed before a display stays before it
        self.send_event(protocol.DISPLAY, (current[0] if current else None, data, metadata,
                                           transient, update))

    def stack(self) -> dict[str, Any]:
        """Where the main thread is: its stack (user frames only) and what its innermost frame
        is doing (stuck.describe: an MPI call, C code, Python), for a stuck-rank report."""
        frame = sys._current_frames().get(self._main)
        if frame is None or self._current is None:
            return {"stack": "", "doing": None, "command_id": None}
        self._show_source(self._current[1])
        frames = traceback.extract_stack(frame)
        starts = [i for i, f in enumerate(frames)
                  if f.filename.startswith((self._filename[:-1], "<px-cell-"))]
        try:
            if self._world_group is None:
                self._world_group = self.env.world.Get_group()
            doing = stuck.describe(frame, self._world_group, transport.MPI)
        except Exception:  # the stack itself is still worth sending
            log.exception("could not tell what the main thread is doing")
            doing = {"kind": "unknown", "call": "", "where": ""}
        return {"stack": "".join(traceback.format_list(frames[starts[0]:] if starts else frames)),
                "doing": doing, "command_id": self._current[0]}

    def status(self) -> dict[str, Any]:
        current = self._current
        busy = current is not None
        return {"rank": self.env.rank, "host": self.env.host, "pid": os.getpid(), "busy": busy,
                "command": current[1] if busy else None, "command_id": current[0] if busy else None,
                "command_start_time": current[2] if busy else None}

    def configure(self, config: dict) -> None:
        """Apply the client's start-up settings (log level, malloc thresholds, fd capture)."""
        if config.get("keep_freed_memory"):
            memory.keep_freed_memory()
        if config.get("capture_fd_output") and self.fd_capture is None:
            self.fd_capture = FdCapture(self.capture)
            self.fd_capture.start()
            # An abort's message must reach the job's stderr, not a pipe nobody reads after it.
            usercomm.before_abort.append(self.fd_capture.stop)
            faulthandler.enable(self.fd_capture.originals[2])  # crash reports still reach the log
        logs.install_forwarding(lambda record: self.send_event(protocol.LOG, record),
                                config.get("log_level", logging.WARNING))

    # -- the serve loop ------------------------------------------------------------------
    def serve(self) -> None:
        """Serve until the client says stop; then say STOPPED."""
        logs.install_origin(self.env.origin)
        faulthandler.enable(sys.__stderr__)  # a crash in C code still prints the Python stack
        signal.signal(signal.SIGINT, self._on_sigint)
        sys.stdout = RemoteStream("stdout", self.capture)
        sys.stderr = RemoteStream("stderr", self.capture)
        sys.stdin = NoInput()
        _stdin_from_devnull()  # C code and child processes reading fd 0 get end-of-file
        self._serving = True
        self.control.start()
        comm, client, stopping = self.env.framework, self.env.client_rank, self.control.stopping
        status = transport.MPI.Status()
        # Busy-poll the first 20 us when every rank here has a core (as the client's waits do).
        # After a second without requests, wake every 20 ms (each wake-up costs 0.1-0.2 ms
        # of CPU here, so 10 ms kept an idle server at 1.5% of a core): the first command
        # after a pause starts up to 20 ms later, which nobody at a notebook notices.
        backoff = transport.Backoff(hot=0.0 if self.env.oversubscribed else 20e-6, idle_cap=20e-3)
        probe = functools.partial(comm.Iprobe, client, Tag.REQUEST)
        try:
            while not stopping.is_set():
                try:
                    msg = comm.improbe(client, Tag.REQUEST, status)
                    if msg is None:
                        if self.broadcasts.poll():  # idle: this thread joins a broadcast at once
                            backoff.reset()
                        else:
                            backoff.wait(probe)
                        continue
                except transport.MPI.Exception as exc:  # a rank died (Open MPI's ULFM)
                    transport.acknowledge(comm, exc)
                    continue
                try:
                    request = transport.receive(comm, msg, status)
                except transport.DecodeError as exc:
                    self._refuse(exc)
                else:
                    self.handle(request)
                    if comm is not self.env.framework:  # the world was rebuilt (respawn.py)
                        comm = self.env.framework
                        probe = functools.partial(comm.Iprobe, client, Tag.REQUEST)
                backoff.reset()
        finally:
            sys.stdout, sys.stderr, sys.stdin = sys.__stdout__, sys.__stderr__, sys.__stdin__
            if self.fd_capture is not None:
                self.fd_capture.stop()
            self._serving = False
            self.send_event(protocol.STOPPED, None)

    def is_serving(self) -> bool:
        return self._serving

    def poll_broadcasts(self) -> bool:
        """Join a broadcast the client has announced, from whichever thread is free."""
        return self.broadcasts.poll()

    def handle(self, request: tuple) -> None:
        """Run one request and send its reply (exactly one), unless the control thread gave
        it back to the client before it started (claims.py: then it is not run at all)."""
        kind, request_id, command, mode, payload = request
        if not self.claims.start(request_id):  # given back to the client (it was told)
            return
        reply = self._runners[kind](request_id, command, mode, payload)
        try:
            encoded = transport.encode(tuple(reply), plain=type(reply.ret) in transport.PLAIN)
        except Exception as exc:  # the return value cannot travel back
            encoded = self._unsendable(kind, reply, exc)
        transport.send_encoded(self._framework, encoded, self._client, Tag.RESPONSE)
        self.claims.done(request_id)

    def _unsendable(self, kind: str, reply: Reply, exc: Exception) -> Any:
        """The encoded reply for a result that cannot be pickled."""
        ret = reply.ret
        if kind == protocol.CELL and isinstance(ret, dict) and ret.get("value") is not None:
            # A cell's value rides along for an AsyncResult's get(); its Out[] (a mime bundle)
            # goes without it, and get() gives None for this rank.
            try:
                return transport.encode(tuple(reply._replace(ret={**ret, "value": None})))
            except Exception as again:
                exc = again
        text = (f"{type(exc).__name__}: the result of command {reply.request_id} on server "
                f"{self.env.rank} (a {type(ret).__name__}) cannot be sent to the client: "
                f"{exc}. Keep it on the server (assign it to a variable) or return a picklable "
                f"value.\n")
        return transport.encode(tuple(reply._replace(ret=None, successful=False, traceback=text)))

    def _refuse(self, exc: transport.DecodeError) -> None:
        """Answer a request that cannot be unpickled here. Its id is inside it, so the
        reply carries None: the client knows which request this server is running."""
        # No rank in the text (the response says which server): identical errors merge.
        text = (f"DecodeError: the request could not be unpickled on the server: {exc}. "
                f"Values sent to the servers must be importable there (the same modules, "
                f"installed in the same environment).\n")
        transport.send(self.env.framework, tuple(Reply(None, traceback=text)),
                       self.env.client_rank, Tag.RESPONSE)

    def _run_command(self, request_id: int, command: str, mode: str, params: dict | None) -> Reply:
        return self._run(request_id, command, self._execute, (command, mode), params)

    def _run_cell(self, request_id: int, source: str, mode: str, options: dict) -> Reply:
        return self._run(request_id, source, self._execute_cell, (source, options), cell=options)

    def _run_calls(self, request_id: int, label: str, mode: str, payload: tuple[bytes, list]) -> Reply:
        """A view's task: a pickled function called on each (args, kwargs) of `payload`."""
        return self._run(request_id, label, self._execute_calls, payload)

    def _run(self, request_id: int, command: str, body: Callable, args: tuple, params: dict | None = None,
             cell: dict | None = None) -> Reply:
        """Run `body(*args)` for a request (a command, a %%px cell with `cell` options, a
        view's task): parameters, output capture, the reply."""
        namespace = self.namespace
        if params:
            saved = {k: namespace[k] for k in params if k in namespace}
            namespace.update(params)
        start = time.time()
        self._current = (request_id, command, start)
        self.capture.begin(request_id, not cell or cell.get("keep_output", True))
        ret, ok, tb = None, True, None
        local = bool(cell and cell.get("local"))
        try:
            self._in_body = True
            if local:
                self.worlds.select(True)
            ret = body(*args)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt are results too
            self._in_body = False
            ok, tb = False, self._format_traceback(exc, command, cell is not None)
        finally:
            self._in_body = False
            self.worlds.select(False)  # also undoes a user's own MPI.COMM_WORLD = ...
            if params:  # parameters live for one command only (guide 5.4)
                for key in params:
                    namespace.pop(key, None)
                namespace.update(saved)
            self._current = None
        if self.fd_capture is not None:
            self.fd_capture.drain()
        stdout, stderr = self.capture.end()
        return as_reply((request_id, ret, ok, tb, start, time.time(), stdout, stderr))

    def _execute(self, command: str, mode: str) -> Any:
        code = self._codes.get(command)  # the mode follows from the text (protocol.command_mode)
        if code is None:
            code = compile(command, self._source_name(command), mode)
            self._codes.put(command, code, len(command))
        self._arm()
        try:
            return eval(code, self.namespace)
        finally:
            self._armed = False

    def _execute_calls(self, blob: bytes, calls: list[tuple[tuple, dict]]) -> list:
        function = self._functions.get(blob)
        if function is None:
            function = _interactive(transport.loads_function(blob), self.namespace)
            self._functions.put(blob, function, len(blob))
        self._arm()
        try:
            return [function(*args, **kwargs) for args, kwargs in calls]
        finally:
            self._armed = False

    def _cell_runner(self) -> Any:
        if self.cells is None:
            make = type(self).cell_runner  # a class attribute: not bound as a method
            if make is None:
                raise RuntimeError("this server has no cell runner: %%px cells need the Jupyter layer "
                                   "(start the job with python -m mpi_kernel)")
            self.cells = make(self.namespace, self._send_display, self.sources)
            self._framework_files.add(sys.modules[type(self.cells).__module__].__file__)
        return self.cells

    def _execute_cell(self, source: str, options: dict) -> Any:
        body, last = self._cell_runner().compile(source)
        self._arm()
        try:
            value = self.cells.run(body, last)
        finally:
            self._armed = False
        return self.cells.result(value, options.get("value", False))

    def _source_name(self, command: str) -> str:
        """The file name a command is compiled under.

        A function or class can run long after the command that defined it, so such
        commands get a name of their own, kept in linecache, and a later traceback
        through them shows their lines. Other commands share one name whose lines are
        filled in when needed: a script may send millions of distinct commands.
        """
        if "def " not in command and "class " not in command and "lambda" not in command:
            return self._filename
        name = f"<server {self.env.rank} command-{source_hash(command)}>"
        self.sources.keep(name, command)
        return name

    def _show_source(self, command: str) -> None:
        """Let tracebacks show the lines of the current command (cells have their own names)."""
        linecache.cache[self._filename] = (len(command), None, command.splitlines(True), self._filename)

    def _format_traceback(self, exc: BaseException, source: str, cell: bool) -> str:
        if self.control.stopping.is_set():
            # The services stop: no IPython formatting, which would import IPython again
            # when the stop interrupted its import (a kernel shut down as it started), and
            # at 16 ranks on 2 cores outlast the stop's grace.
            return f"{type(exc).__name__}: interrupted by stop_services()\n"
        self._show_source(source)
        if cell and self.cells is not None:
            try:
                return self.cells.traceback(exc, _user_frames(exc, self._framework_files))
            except Exception:  # IPython itself failed (an interrupt while it was importing)
                log.exception("IPython could not format a traceback; plain Python's follows")
        return "".join(traceback.format_exception(type(exc), exc, _user_frames(exc, self._framework_files)))

    def _rebuild(self, request_id: int, command: str, mode: str, dead: list[int]) -> Reply:
        """Join the client and the other survivors in starting replacements for `dead`, then
        serve over the rebuilt world (the reply already goes there)."""
        try:
            self.rebind(respawn.respawn(self.env, dead))
        except Exception as exc:
            return Reply(request_id, traceback="".join(traceback.format_exception(exc)))
        return Reply(request_id, successful=True)

    def rebind(self, env: environment.MPIEnvironment) -> None:
        """Use the communicators of `env` from now on (the world was rebuilt)."""
        self.env = env
        self._framework = env.framework
        self.worlds = usercomm.worlds
        self.namespace.update(comm=self.worlds.servers, size=env.servers.Get_size())
        self.broadcasts = broadcast.Receiver(env.framework, env.bcast, env.client_rank)
        self._world_group = None

    def _push(self, request_id: int, command: str, mode: str, variables: Any) -> Reply:
        if isinstance(variables, protocol.Staged):  # the value came by broadcast
            variables = self.broadcasts.take(variables)
        self.namespace.update(variables)
        return Reply(request_id, successful=True)

    def _pull(self, request_id: int, command: str, mode: str, names: list[str]) -> Reply:
        missing = [n for n in names if n not in self.namespace]
        if missing:
            return Reply(request_id, traceback=(
                f"NameError: {', '.join(map(repr, missing))} not defined on the server\n"))
        return Reply(request_id, [self.namespace[n] for n in names], True)

    # -- interrupts ----------------------------------------------------------------------
    def interrupt(self, request_id: int | list[int] | None) -> None:
        """Called by the control thread: interrupt the running command if it is `request_id`
        (or one of a list of them: a stop's, which may have started since the client sent
        it; None: whatever runs)."""
        current = self._current
        if current is None:
            return
        if request_id is None or current[0] == request_id or (
                isinstance(request_id, list) and current[0] in request_id):
            self._interrupt_for = current[0]
            pthread_interrupt(self._main)

    def give_back(self, request_ids: list[int]) -> list[int]:
        """Called by the control thread: give these requests sent ahead back to the client
        unless the main thread has taken them (claims.py)."""
        return self.claims.give_back(request_ids)

    def _interrupted(self) -> bool:
        """True once for the request an interrupt was sent for (one KeyboardInterrupt each)."""
        current = self._current
        if current is None or current[0] != self._interrupt_for:
            return False
        self._interrupt_for = None
        self._armed = False
        return True

    def _arm(self) -> None:
        """User code starts. An interrupt that came while the request was being prepared
        (compiled, unpickled, IPython loaded) takes effect now instead of being lost."""
        self._armed = True
        if self._interrupt_for is not None and self._interrupted():
            raise KeyboardInterrupt

    def _on_sigint(self, signum: int, frame: Any) -> None:
        # Only inside user code: elsewhere the interrupt waits for _arm (or for nothing,
        # if its request has ended). When the services stop, the preparation is cut short
        # too: loading IPython for a first cell takes seconds on shared cores, longer than
        # the stop's grace, and what it leaves half-imported no longer matters.
        armed = self._armed or (self._in_body and self.control.stopping.is_set())
        if armed and self._interrupted():
            raise KeyboardInterrupt
