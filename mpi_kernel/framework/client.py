"""MPICommandClient: the top rank's API to the servers (the mpi4casa guide, 5.3-5.7;
docs/command-framework.md).

The facade: configuration, the singleton, the life cycle and the guide's API, plus what
the kernel and the views need (cells, calls, waits, interrupts; variables in variables.py,
a mixin). The work is done by the pump (pump.py: sending, the fast path, receiving,
waiting, the service thread), which keeps the request book (requests.py: the records and
the one policy of where requests go); restarts are respawn.py's. Calls go one way:
here -> pump -> book.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from traitlets import Bool, Enum, Float, Int, default
from traitlets.config import Configurable

from . import broadcast, environment, logs, memory, protocol, respawn, transport
from .monitor import MonitorClient
from .pump import Pump, StreamCallback
from .stopping import Stop
from .variables import Variables

log = logging.getLogger("mpi_kernel.client")


class MPICommandClient(Variables, Configurable):
    """The one client of the process: `MPICommandClient()` always returns it."""

    ping_interval = Float(1.0, help="Seconds between monitor pings to each server.").tag(config=True)
    server_timeout = Float(30.0, help="Seconds without an answer to a ping before a server "
                                      "is marked 'timeout'.").tag(config=True)
    start_timeout = Float(30.0, help="Seconds to wait for the servers in start_services().").tag(config=True)
    stop_timeout = Float(5.0, help="Seconds to wait for the servers in stop_services().").tag(config=True)
    log_level = Int(logging.WARNING, help="Level of the server logs forwarded to the client.").tag(config=True)
    keep_freed_memory = Bool(help="Set glibc's malloc thresholds on every rank so arrays received "
                                  "again and again reuse mapped memory instead of page-faulting; up to "
                                  "64 MiB of freed memory per rank stays mapped (mpi_kernel.memory). "
                                  "Default: on, unless MPI_KERNEL_KEEP_FREED_MEMORY=0.").tag(config=True)
    broadcast = Enum(broadcast.MODES, "auto", help="How push() sends a value to many servers. auto: by "
                     "one MPI broadcast to the servers on other hosts than the client (once the "
                     "N - 2 copies it saves come to 4 MB), directly to those beside it; always: by "
                     "broadcast to all (slower on one host); never: to each directly.").tag(config=True)
    capture_fd_output = Bool(True, help="Capture what C code and child processes write to the servers' "
                                        "descriptors 1 and 2, like print() output.").tag(config=True)

    @default("keep_freed_memory")
    def _keep_freed_memory_default(self) -> bool:
        # An environment variable, so a kernelspec (install --env) can switch it off too.
        return os.environ.get("MPI_KERNEL_KEEP_FREED_MEMORY", "1") != "0"

    _instance: "MPICommandClient | None" = None
    _created = threading.Lock()

    def __new__(cls, *args: Any, **kwargs: Any) -> "MPICommandClient":
        with cls._created:
            if cls._instance is None:
                env = environment.current()
                if not env.is_client:
                    raise RuntimeError(
                        f"MPICommandClient cannot be created on server rank {env.rank}: only the top "
                        f"rank ({env.client_rank}) is the client. On servers, use the command "
                        f"namespace (comm, rank, size) directly.")
                instance = super().__new__(cls)
                instance._env = env
                cls._instance = instance
        return cls._instance

    def __init__(self, **kwargs: Any) -> None:
        if getattr(self, "_initialised", False):
            for name, value in kwargs.items():  # later calls may still adjust settings
                setattr(self, name, value)
            return
        super().__init__(**kwargs)
        env = self._env
        self._servers = env.server_ranks
        self._state = "created"  # -> "running" -> "stopped"
        self._monitor = MonitorClient(self._servers, self.ping_interval, self.server_timeout)
        self._pump = Pump(env.framework, self._servers, self._monitor, env.cores, env.oversubscribed)
        # The hot path reads these on every call: kept as attributes, not looked up through the pump.
        self._lock, self._book = self._pump.lock, self._pump.book
        self._broadcasts = broadcast.Broadcaster(env.framework, env.bcast, env.client_rank)
        self._unconfirmed: list[int] = []  # servers that did not confirm the stop
        self._respawned: set[int] = set()  # servers whose process is a replacement (respawn.py)
        self.observe(self._observe_monitor, names=["ping_interval", "server_timeout"])
        logs.install_origin(env.origin)
        atexit.register(self._at_exit)
        self._initialised = True

    def _observe_monitor(self, change: dict) -> None:
        setattr(self._monitor, change["name"], change["new"])

    @property
    def stream_callback(self) -> StreamCallback | None:
        """Called as (server, request_id, stream_name, text) for live output."""
        return self._pump.stream_callback

    @stream_callback.setter
    def stream_callback(self, callback: StreamCallback | None) -> None:
        self._pump.stream_callback = callback

    @property
    def display_callback(self) -> Callable[..., None] | None:
        """Called as (server, request_id, data, metadata, transient, update) for display data."""
        return self._pump.display_callback

    @display_callback.setter
    def display_callback(self, callback: Callable[..., None] | None) -> None:
        self._pump.display_callback = callback

    @property
    def state(self) -> str:
        """"created", "running" (after start_services) or "stopped" (after stop_services)."""
        return self._state

    # -- life cycle (guide 5.3) ----------------------------------------------------------
    def start_services(self) -> None:
        """Start the servers' services and the client's service thread."""
        with self._lock:
            if self._state == "running":
                return
            if self._state == "stopped":
                raise RuntimeError("the services were stopped and the servers have exited; "
                                   "they cannot be started again in this job")
            log.info("MPI enabled at host %s with rank %d as MPIClient using %s", self._env.host,
                     self._env.rank, self._env.library)
            if self.keep_freed_memory:
                memory.keep_freed_memory()
            for server in self._servers:
                self._pump.control(server, protocol.START, self._start_config())
        hello = self._pump.hello
        missing = self._pump.wait_until(lambda: set(self._servers) - hello, self.start_timeout)
        if missing:
            raise RuntimeError(
                f"servers {protocol.format_ranks(sorted(missing))} did not answer within "
                f"{self.start_timeout:g} s. Were all ranks started with `python -m mpi_kernel`?")
        with self._lock:
            self._state = "running"
            self._pump.monitoring = True
            self._pump.start_service()
        log.info("all services started on servers %s", protocol.format_ranks(self._servers))

    def _start_config(self) -> dict:
        return {"log_level": self.log_level, "keep_freed_memory": self.keep_freed_memory,
                "capture_fd_output": self.capture_fd_output}

    def stop_services(self) -> list[int]:
        """Stop the servers (they exit) and the client's services. Safe to call twice (the
        second call returns what the first did).

        Returns the servers that did not confirm the stop within `stop_timeout`: those are
        stuck (in C, or in a collective), and the job can only end by MPI_Abort.
        """
        with self._lock:
            if self._state == "stopped":  # the caller that ends the job must still hear of them
                return list(self._unconfirmed)
            pending = self._book.unanswered_ids()
            if pending:
                log.warning("stopping with %d requests unanswered (ids %s)", len(pending),
                            protocol.format_ranks(pending))
            self._state = "stopped"
            self._pump.monitoring = False
            live = [r for r in self._servers if self._monitor.table[r].dead is None]
            for server in live:
                self._pump.control(server, protocol.STOP, self.stop_timeout / 2)
        stopped = self._pump.stopped
        missing = self._pump.wait_until(lambda: set(live) - stopped, self.stop_timeout)
        with self._lock:  # nothing answers them now: a wait for them (another thread's) ends
            self._book.stop_all()
        self._pump.stop_service()
        self._unconfirmed = sorted(missing)
        if missing:
            log.error("servers %s did not confirm the stop within %g s",
                      protocol.format_ranks(self._unconfirmed), self.stop_timeout)
        log.info("all services stopped")
        return list(self._unconfirmed)

    def _at_exit(self) -> None:
        if self._state == "running":
            self.stop_services()

    # -- commands (guide 5.4) ------------------------------------------------------------
    def push_command_request(self, command: str, block: bool = False, target_server: Any = None,
                             parameters: dict | None = None) -> list:
        """Queue `command` (eval if it is an expression, else exec) for the target servers.

        Returns the request ids, or with block=True the response dicts.
        """
        mode = protocol.command_mode(command)
        parameters = protocol.check_parameters(parameters)
        if not block:
            return self._submit(protocol.COMMAND, command, mode, parameters, parameters, target_server)
        ids = self._request(protocol.COMMAND, command, mode, parameters, parameters, target_server)
        responses = self._book.responses
        return [responses[i] for i in ids]

    def _request(self, kind: str, command: str, mode: str, parameters: Any, payload: Any,
                 target: Any) -> list[int]:
        """A blocking request: its ids, once all are answered (the responses are in the book)."""
        self._require_running()
        return self._pump.request(kind, command, mode, parameters, payload,
                                  protocol.check_targets(target, self._servers))

    def get_command_response(self, command_request_id_list: Iterable[int], block: bool = False,
                             verbose: bool = True, timeout: float | None = None) -> list[dict]:
        """Responses for the given ids, in that order (guide 5.4).

        Non-blocking returns those available (a timed-out server's requests have a synthetic
        timeout response until the real one arrives). Blocking waits for all of them; the
        requests of a server that is in timeout when they are retrieved count as answered by
        their timeout response. With `timeout` it raises TimeoutError naming the ids still pending.
        """
        ids = self._book.check_ids(command_request_id_list)
        if block:
            self._pump.wait_for(ids, timeout)
        else:
            with self._lock, transport.DeferredSigint():
                self._pump.pump()
        with self._lock:
            responses = self._book.responses
            if verbose and not block:
                for i in ids:
                    if i not in responses:
                        req = self._book.requests[i]
                        log.info("command request with id# %d %s, response pending ...", i,
                                 f"assigned to server n# {req['server']}" if req["server"] is not None
                                 else "holding queue")
            return [responses[i] for i in ids if i in responses]

    def get_command_request_list(self) -> dict[int, dict]:
        """All requests by id: command, mode, parameters, server, status."""
        with self._lock:
            return self._book.request_list()

    def get_command_response_list(self) -> dict[int, dict]:
        """All responses received so far, by id."""
        with self._lock:
            return dict(self._book.responses)

    def get_server_status(self, server: int | None = None) -> dict:
        """The monitor's view: per server rank, host, pid, busy, command, timeout, state."""
        with self._lock:
            if server is not None:
                (server,) = protocol.check_targets(server, self._servers)
                return self._status_of(server)
            return {r: self._status_of(r) for r in self._servers}

    def _status_of(self, rank: int) -> dict:
        # Busy/idle comes from what the client has in flight (a server runs only what it
        # was sent, and this is current, unlike the last pong); timeout from the monitor.
        status = self._monitor.table[rank].as_dict()
        request = self._book.running(rank)
        started = request.get("sent_at") if request else None
        status.update(busy=request is not None, command=request["command"] if request else None,
                      command_id=request["id"] if request else None, command_start_time=started,
                      elapsed=time.time() - started if started else None)
        if not status["timeout"]:
            status["state"] = protocol.BUSY if request is not None else protocol.IDLE
        return status

    def execute_cell(self, source: str, targets: Any = None, want_value: bool = False,
                     local: bool = False, keep_output: bool = True) -> list[int]:
        """Queue an IPython-style cell (the %%px magic's request); return the request ids.

        Its response's `ret` is None or {"data": mime bundle, "metadata": ..., "value": ...}
        for the last expression (value only with want_value); errors have IPython-style
        tracebacks. `targets` as in push_command_request (None: the first idle server).
        With `local` (a %%px --local cell, which the client runs too) MPI.COMM_WORLD is the
        whole job's world on the servers; else it is the servers' own. Without `keep_output`
        the responses' stdout and stderr are empty: the output only comes as it is streamed.
        """
        if not isinstance(source, str):
            raise TypeError(f"cell source must be a str, not {type(source).__name__}")
        with transport.DeferredSigint():
            return self._submit(protocol.CELL, source, protocol.CELL, None,
                                {"value": want_value, "local": local, "keep_output": keep_output},
                                targets)

    def call(self, function_blob: bytes, tasks: list[tuple[int | None, list[tuple[tuple, dict]]]],
             label: str = "<call>") -> list[int]:
        """Queue a view's tasks, one request each, together: (server, or None for the first
        idle one; the (args, kwargs) to call the pickled function on, from
        transport.dumps_function). Each response's `ret` is the list of its calls' results."""
        self._require_running()
        ranks = sorted({rank for rank, _ in tasks if rank is not None})
        if ranks:
            protocol.check_targets(ranks, self._servers)
        with transport.DeferredSigint():
            return self._pump.queue(protocol.CALLS, label, protocol.CALLS, None,
                                    [(rank, (function_blob, calls)) for rank, calls in tasks])

    def wait(self, ids: Iterable[int], timeout: float | None = None) -> bool:
        """Wait up to `timeout` s for the responses of `ids`; True if all have come."""
        return not self._pump.wait_responses(self._book.check_ids(ids), timeout)

    def forget(self, ids: Iterable[int]) -> None:
        """Drop the records of these requests; a response still to come is dropped when it
        arrives. (The guide keeps every record for the life of the client; the magics forget
        theirs once shown, so long sessions do not grow.)"""
        with self._lock:
            self._book.forget(ids)

    def queued(self, ids: Iterable[int]) -> dict[int, int | None]:
        """{request id: its server (None: any)} for those of `ids` not sent yet: they wait for
        a busy server (or, with None, for any to be free)."""
        with self._lock:
            return self._book.queued(ids)

    def timed_out(self) -> list[int]:
        """The servers in timeout now, after taking the messages that have come (a server
        that answers again has a pong waiting, and nobody may have pumped since)."""
        with self._lock, transport.DeferredSigint():
            if self._state == "running":
                self._pump.pump()
            return [rank for rank, status in self._monitor.table.items()
                    if status.timed_out and status.dead is None]

    # -- deaths ------------------------------------------------------------------------------
    def server_died(self, rank: int, reason: str, process: tuple[str, int] | None = None) -> list[int]:
        """Record that server `rank`'s process ended (the supervisor's guards see it first):
        its requests fail with `reason`, it gets no more work, and the job goes on with the
        survivors. Returns the ids of the requests that failed. With `process` (host, pid), a
        report about a process already counted dead (one ended to be replaced, and maybe
        replaced by now) is ignored."""
        (rank,) = protocol.check_targets(rank, self._servers)
        with self._lock:
            if process is not None and tuple(process) in self._pump.ended:
                return []
            return self._pump.server_died(rank, reason)

    def dead(self) -> dict[int, str]:
        """{server rank: why it ended} of the servers that died."""
        with self._lock:
            return self._monitor.dead()

    def restart_dead(self, end_busy: bool = False) -> list[int]:
        """Start a replacement for each dead server, with its rank number and an empty
        namespace, and rebuild the servers' world so that it has N-1 ranks again
        (respawn.py). Every live server must be idle; with `end_busy`, all queued work is
        cancelled and those running something are ended and replaced too (a collective with
        a dead rank never returns under MPICH, and Stop cannot end it). Returns the ranks
        started anew."""
        self._require_running()
        return respawn.restart(self, end_busy)

    def rebound(self, env: environment.MPIEnvironment, replaced: list[int]) -> None:
        """Use the rebuilt world's communicators (respawn.restart); the replaced servers
        start afresh. Call with the lock held."""
        self._env = env
        self._respawned.update(replaced)
        self._pump.rebind(env.framework, replaced)
        self._broadcasts = broadcast.Broadcaster(env.framework, env.bcast, env.client_rank)

    def live_servers(self) -> list[int]:
        """The server ranks whose processes still run."""
        with self._lock:
            return [r for r in self._servers if self._monitor.table[r].dead is None]

    def unanswered(self, ids: Iterable[int]) -> dict[int, int | None]:
        """{request id: assigned server (None while queued for any server)} for ids without a response."""
        with self._lock:
            return self._book.unanswered(ids)

    def servers(self) -> list[int]:
        """The server ranks."""
        return list(self._servers)

    def stacks(self, ranks: list[int], timeout: float = 1.0) -> dict[int, dict | None]:
        """Where the given servers' running commands are now: {rank: {"stack": formatted
        stack, "doing": stuck.describe's report, "command_id": ...}}, or None for a server
        that did not answer within `timeout` (its main thread holds the GIL)."""
        stacks = self._pump.stacks
        with self._lock:
            for rank in ranks:
                stacks.pop(rank, None)
                self._pump.control(rank, protocol.STACK, None)
        self._pump.wait_until(lambda: [r for r in ranks if r not in stacks], timeout)
        with self._lock:
            return {r: stacks.get(r) for r in ranks}

    # -- interrupts ------------------------------------------------------------------------
    def interrupt(self, targets: Any = None, ids: Iterable[int] | None = None) -> list[int]:
        """Raise KeyboardInterrupt in the running command of the target servers (default: all
        busy); with `ids`, only where one of those runs. Queued requests are kept. Returns
        the servers that were sent the interrupt.

        Each is sent every request it holds (the running one and those sent ahead): it may
        have started the next one before the client knows, and that one is interrupted too.
        """
        with self._lock:
            ranks = self._servers if targets is None else protocol.check_targets(targets, self._servers)
            held = self._book.holding(ids)
            busy = [s for s in ranks if s in held]
            for server in busy:
                self._pump.control(server, protocol.INTERRUPT, held[server])
        return busy

    def cancel_queued(self, ids: Iterable[int] | None = None) -> list[int]:
        """Cancel requests that are still queued (default: all); they never run, and each gets
        an unsuccessful response saying so. Returns their ids. Those a task farm sent ahead to
        a busy server (requests.AHEAD) are taken back unless it has started them: their
        cancelled responses come once the server confirms, within a moment, not after the work
        ahead of them. Running requests are not touched (interrupt() stops those)."""
        with self._lock:
            ids = None if ids is None else list(ids)
            for server, ahead in self._book.cancel_ahead(ids).items():
                self._pump.control(server, protocol.RECALL, ahead)
            return self._book.cancel_queued(ids)

    def stop(self, ids: Iterable[int] | None = None) -> Stop:
        """Stop requests (default: all): cancel those still queued, then interrupt the
        servers running the others. The one stop policy of Stop buttons, --timeout,
        AsyncResult.abort and the kernel's interrupt (stopping.py)."""
        stop = Stop(self, ids)
        stop.cancel()
        stop.interrupt()
        return stop

    @contextlib.contextmanager
    def bare_channel(self) -> Iterator[tuple[Any, Callable[[], int]]]:
        """A benchmark hook, not for user code: (the framework communicator, the next
        request id) with the client's lock held, so nothing else receives meanwhile. It lets
        a bare loop measure the servers' share of a round trip."""
        with self._lock:
            yield self._pump.comm, self._pump.ids.__next__

    # -- internals -------------------------------------------------------------------------
    def _require_running(self) -> None:
        if self._state == "running":
            return
        if self._state == "created":
            raise RuntimeError("the client services are not started: call start_services() first")
        if self._state == "stopped":
            raise RuntimeError("the client services were stopped (stop_services()); the servers have "
                               "exited and cannot take commands in this job")

    def _submit(self, kind: str, command: str, mode: str, parameters: Any, payload: Any,
                target: Any) -> list[int]:
        """Validate, pickle and queue one request per target; send what can go now."""
        self._require_running()
        ranks = protocol.check_targets(target, self._servers)
        return self._pump.queue(kind, command, mode, parameters, [(rank, payload) for rank in ranks or [None]])
