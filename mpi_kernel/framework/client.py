"""MPICommandClient: the top rank's API to the servers (the mpi4casa guide, 5.3-5.7).

One lock guards the client's state and the receiving side of the framework
communicator. Whoever holds it "pumps": receives every waiting message, records
responses, hands out queued requests to idle servers and runs the monitor.
A background service thread pumps when nobody else does; a blocking call pumps
itself, which is what keeps a round trip near the raw MPI latency.
"""
from __future__ import annotations

import atexit
import collections
import itertools
import logging
import os
import threading
import time
from typing import Any, Callable, Iterable

from traitlets import Bool, Enum, Float, Int, default
from traitlets.config import Configurable

from ..errors import ServerError
from . import broadcast, environment, logs, memory, partition, protocol, transport
from .monitor import MonitorClient
from .protocol import Tag

log = logging.getLogger("mpi_kernel.client")
ANY_SOURCE, ANY_TAG = transport.MPI.ANY_SOURCE, transport.MPI.ANY_TAG
# The service thread leaves the pumping to a thread that waited this recently (seconds).
SERVICE_GRACE = 5e-3
StreamCallback = Callable[[int, "int | None", str, str], None]


def _unpicklable(command: str, exc: Exception, which: str = "") -> TypeError:
    """The error for a request whose value cannot be pickled (nothing has been sent)."""
    return TypeError(f"cannot send {command!r}{which} to the servers: a value in it cannot be "
                     f"pickled ({type(exc).__name__}: {exc})")


class MPICommandClient(Configurable):
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
        self._comm = env.framework
        self._servers = env.server_ranks
        self._lock = threading.RLock()
        self._state = "created"  # -> "running" -> "stopped"
        self._ids = itertools.count(1)
        self._requests: dict[int, dict] = {}
        self._responses: dict[int, dict] = {}
        self._queues: dict[int, collections.deque[int]] = {s: collections.deque() for s in self._servers}
        self._any_queue: collections.deque[int] = collections.deque()
        self._inflight: dict[int, int | None] = {s: None for s in self._servers}
        self._encoded: dict[int, tuple[bytes, list]] = {}  # queued requests, pickled at push time
        self._sends: list = []  # Isend/Ibcast requests of out-of-band buffers still in progress
        self._broadcasts = broadcast.Broadcaster(env.framework, env.bcast, env.client_rank)
        self._status = transport.MPI.Status()
        self._monitor = MonitorClient(self._servers, self.ping_interval, self.server_timeout)
        self._next_tick = 0.0
        self._hello: set[int] = set()
        self._stopped: set[int] = set()
        self._unconfirmed: list[int] = []  # servers that did not confirm the stop
        self._service: threading.Thread | None = None
        self._halt = threading.Event()
        self._waiters = 0  # threads inside _wait_until, pumping themselves
        self._waited_at = 0.0  # when the last of them left (monotonic)
        self._per_thread = threading.local()
        self._cores = env.cores  # read once: a syscall, and waits ask on every call
        self._oversubscribed = env.oversubscribed
        self._stacks: dict[int, dict] = {}
        # Called as (server, request_id, stream_name, text) for live output.
        self.stream_callback: StreamCallback | None = None
        # Called as (server, request_id, data, metadata, transient, update) for display data.
        self.display_callback: Callable[..., None] | None = None
        self.observe(self._observe_monitor, names=["ping_interval", "server_timeout"])
        logs.install_origin(env.origin)
        atexit.register(self._at_exit)
        self._initialised = True

    def _observe_monitor(self, change: dict) -> None:
        setattr(self._monitor, change["name"], change["new"])

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
                self._control(server, protocol.START, {"log_level": self.log_level,
                                                       "keep_freed_memory": self.keep_freed_memory,
                                                       "capture_fd_output": self.capture_fd_output})
        missing = self._wait_until(lambda: set(self._servers) - self._hello, self.start_timeout)
        if missing:
            raise RuntimeError(
                f"servers {protocol.format_ranks(sorted(missing))} did not answer within "
                f"{self.start_timeout:g} s. Were all ranks started with `python -m mpi_kernel`?")
        with self._lock:
            self._state = "running"
            self._service = threading.Thread(target=self._service_loop, name="mpi-kernel-client",
                                             daemon=True)
            self._service.start()
        log.info("all services started on servers %s", protocol.format_ranks(self._servers))

    def stop_services(self) -> list[int]:
        """Stop the servers (they exit) and the client's services. Safe to call twice (the
        second call returns what the first did).

        Returns the servers that did not confirm the stop within `stop_timeout`: those are
        stuck (in C, or in a collective), and the job can only end by MPI_Abort.
        """
        with self._lock:
            if self._state == "stopped":  # the caller that ends the job must still hear of them
                return list(self._unconfirmed)
            pending = [i for i, r in self._requests.items()
                       if i not in self._responses and "forgotten" not in r]
            if pending:
                log.warning("stopping with %d requests unanswered (ids %s)", len(pending),
                            protocol.format_ranks(pending))
            self._state = "stopped"
            for server in self._servers:
                self._control(server, protocol.STOP, self.stop_timeout / 2)
        missing = self._wait_until(lambda: set(self._servers) - self._stopped, self.stop_timeout)
        with self._lock:  # nothing answers them now: a wait for them (another thread's) ends
            for request_id, request in self._requests.items():
                if request_id not in self._responses and "forgotten" not in request:
                    self._responses[request_id] = protocol.stopped_response(request)
                    request["status"] = protocol.RESPONSE_RECEIVED
        self._halt.set()
        if self._service is not None and self._service is not threading.current_thread():
            self._service.join(timeout=2)
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
        ids = self._submit(protocol.COMMAND, command, mode, parameters, parameters, target_server)
        if not block:
            return ids
        self._wait_for(ids, None)
        with self._lock:
            return [self._responses[i] for i in ids]

    def get_command_response(self, command_request_id_list: Iterable[int], block: bool = False,
                             verbose: bool = True, timeout: float | None = None) -> list[dict]:
        """Responses for the given ids, in that order (guide 5.4).

        Non-blocking returns those available (a timed-out server's requests have a synthetic
        timeout response until the real one arrives). Blocking waits for all of them; the
        requests of a server that is in timeout when they are retrieved count as answered by
        their timeout response. With `timeout` it raises TimeoutError naming the ids still pending.
        """
        ids = self._check_ids(command_request_id_list)
        if block:
            self._wait_for(ids, timeout)
        else:
            with self._lock, transport.DeferredSigint():
                self._pump()
        with self._lock:
            if verbose and not block:
                for i in ids:
                    if i not in self._responses:
                        req = self._requests[i]
                        log.info("command request with id# %d %s, response pending ...", i,
                                 f"assigned to server n# {req['server']}" if req["server"] is not None
                                 else "holding queue")
            return [self._responses[i] for i in ids if i in self._responses]

    def get_command_request_list(self) -> dict[int, dict]:
        """All requests by id: command, mode, parameters, server, status."""
        with self._lock:
            return {i: {k: v for k, v in r.items() if k not in ("kind", "sent_at")}
                    for i, r in self._requests.items() if "forgotten" not in r}

    def get_command_response_list(self) -> dict[int, dict]:
        """All responses received so far, by id."""
        with self._lock:
            return dict(self._responses)

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
        request_id = self._inflight[rank]
        request = self._requests.get(request_id) if request_id is not None else None
        started = request.get("sent_at") if request else None
        status.update(busy=request is not None, command=request["command"] if request else None,
                      command_id=request_id, command_start_time=started,
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
            return self._queue(protocol.CALLS, label, protocol.CALLS, None,
                               [(rank, (function_blob, calls)) for rank, calls in tasks])

    def wait(self, ids: Iterable[int], timeout: float | None = None) -> bool:
        """Wait up to `timeout` s for the responses of `ids`; True if all have come."""
        return not self._wait_responses(self._check_ids(ids), timeout)

    def forget(self, ids: Iterable[int]) -> None:
        """Drop the records of these requests; a response still to come is dropped when it
        arrives. (The guide keeps every record for the life of the client; the magics forget
        theirs once shown, so long sessions do not grow.)"""
        with self._lock:
            for i in ids:
                if i in self._responses:
                    del self._responses[i]
                    self._requests.pop(i, None)
                elif i in self._requests:
                    self._requests[i]["forgotten"] = True

    def queued(self, ids: Iterable[int]) -> dict[int, int | None]:
        """{request id: its server (None: any)} for those of `ids` not sent yet: they wait for
        a busy server (or, with None, for any to be free)."""
        with self._lock:
            return {i: self._requests[i]["server"] for i in ids if i in self._encoded}

    def timed_out(self) -> list[int]:
        """The servers in timeout now, after taking the messages that have come (a server
        that answers again has a pong waiting, and nobody may have pumped since)."""
        with self._lock, transport.DeferredSigint():
            if self._state == "running":
                self._pump()
            return [rank for rank, status in self._monitor.table.items() if status.timed_out]

    def unanswered(self, ids: Iterable[int]) -> dict[int, int | None]:
        """{request id: assigned server (None while queued for any server)} for ids without a response."""
        with self._lock:
            return {i: self._requests[i]["server"] for i in ids if i not in self._responses}

    def servers(self) -> list[int]:
        """The server ranks."""
        return list(self._servers)

    def stacks(self, ranks: list[int], timeout: float = 1.0) -> dict[int, dict | None]:
        """Where the given servers' running commands are now: {rank: {"stack": formatted
        stack, "doing": stuck.describe's report, "command_id": ...}}, or None for a server
        that did not answer within `timeout` (its main thread holds the GIL)."""
        with self._lock:
            for rank in ranks:
                self._stacks.pop(rank, None)
                self._control(rank, protocol.STACK, None)
        self._wait_until(lambda: [r for r in ranks if r not in self._stacks], timeout)
        with self._lock:
            return {r: self._stacks.get(r) for r in ranks}

    # -- variables ------------------------------------------------------------------------
    def push(self, variables: dict, targets: Any = None) -> None:
        """Set variables in the servers' namespaces (default: all servers); they persist."""
        if not isinstance(variables, dict):
            raise TypeError(f"push() takes a dict of names to values, not {type(variables).__name__}")
        if not variables:
            return
        names = protocol.check_names(list(variables), "push")
        label = f"<push {', '.join(names)}>"
        ranks = sorted(set(protocol.check_targets(targets, self._servers) or self._servers))
        self._require_running()
        with self._lock:
            table = self._monitor.table
            healthy = broadcast.healthy(ranks, table, time.monotonic())
            group = broadcast.candidates(self.broadcast, healthy, {r: table[r].host for r in healthy},
                                         self._env.host)
        if len(group) >= 2:  # only then is the value's size worth knowing (pickled once here)
            try:
                parts = transport.pickle_parts(variables)
            except Exception as exc:
                raise _unpicklable(label, exc) from exc
            if broadcast.worthwhile(self.broadcast, group, len(parts[0]) + sum(b.nbytes for b in parts[1])):
                self._collect(self._push_by_broadcast(label, variables, parts, group, ranks), label)
                return
        self._run_internal(protocol.PUSH, label, variables, ranks)  # per-server sends are quicker

    def _push_by_broadcast(self, label: str, variables: dict, parts: tuple[bytes, list],
                           group: list[int], ranks: list[int]) -> list[int]:
        """Broadcast the value to `group`, then queue a push per target that takes it from
        there (the others get the value itself); the request ids (broadcast.py explains)."""
        with transport.DeferredSigint():  # the requests must be kept, whatever comes
            bid, requests = self._broadcasts.start(group, parts)
            with self._lock:
                self._sends.extend(requests)
        items = [(rank, protocol.Staged(bid) if rank in group else variables) for rank in ranks]
        return self._queue(protocol.PUSH, label, protocol.PUSH, None, items)

    def pull(self, names: str | list[str], targets: Any = None) -> dict[int, Any]:
        """Fetch variables from servers: {rank: value} (a list of values if `names` is a list)."""
        wanted = protocol.check_names(names, "pull")
        values = self._run_internal(protocol.PULL, f"<pull {', '.join(wanted)}>", wanted, targets)
        return {rank: v[0] if isinstance(names, str) else v for rank, v in values.items()}

    def scatter(self, name: str, sequence: Any, targets: Any = None) -> None:
        """Split `sequence` into contiguous parts, one per target server in rank order (sizes
        as numpy.array_split gives), and set `name` to its part on each (default: all servers)."""
        protocol.check_names(name, "scatter")
        ranks = sorted(set(protocol.check_targets(targets, self._servers) or self._servers))
        label = f"<scatter {name}>"
        ids = [i for rank, part in zip(ranks, partition.split(sequence, len(ranks)))
               for i in self._submit(protocol.PUSH, label, protocol.PUSH, None, {name: part}, [rank])]
        self._collect(ids, label)

    def gather(self, name: str, targets: Any = None) -> Any:
        """`name` from the target servers, joined in rank order: arrays concatenated, lists
        joined (the inverse of scatter)."""
        values = self.pull(name, targets)
        return partition.join([values[rank] for rank in sorted(values)])

    def _run_internal(self, kind: str, label: str, payload: Any, targets: Any) -> dict[int, Any]:
        ids = self._submit(kind, label, kind, None, payload, self._servers if targets is None else targets)
        return self._collect(ids, label)

    def _collect(self, ids: list[int], label: str) -> dict[int, Any]:
        """Wait for internal requests; drop their records; {server: ret}, or raise the first failure."""
        self._wait_for(ids, None)
        with self._lock:
            responses = [self._responses.pop(i) for i in ids]
            for i in ids:
                self._requests.pop(i)
        failed = [r for r in responses if not r["successful"]]
        if failed:
            raise ServerError(f"{label} failed on server {failed[0]['server']}:\n{failed[0]['traceback']}", failed)
        return {r["server"]: r["ret"] for r in responses}

    # -- interrupts ------------------------------------------------------------------------
    def interrupt(self, targets: Any = None) -> list[int]:
        """Raise KeyboardInterrupt in the running command of the target servers (default: all busy).

        Queued requests are kept. Returns the servers that were running something.
        """
        with self._lock:
            ranks = self._servers if targets is None else protocol.check_targets(targets, self._servers)
            busy = [s for s in ranks if self._inflight[s] is not None]
            for server in busy:
                self._control(server, protocol.INTERRUPT, self._inflight[server])
        return busy

    def cancel_queued(self, ids: Iterable[int] | None = None) -> list[int]:
        """Cancel requests that are still queued (default: all); they never run, and each gets
        an unsuccessful response saying so. Returns their ids. Sent requests are not touched
        (interrupt() stops those)."""
        with self._lock:
            queued = list(self._encoded) if ids is None else [i for i in ids if i in self._encoded]
            for request_id in queued:
                request = self._requests[request_id]
                del self._encoded[request_id]
                queue = self._any_queue if request["server"] is None else self._queues[request["server"]]
                queue.remove(request_id)
                self._responses[request_id] = protocol.cancelled_response(request)
                request["status"] = protocol.RESPONSE_RECEIVED
        return queued

    # -- internals: queueing ---------------------------------------------------------------
    def _control(self, server: int, kind: str, arg: Any) -> None:
        """A message for the server's monitor thread (the mirror of MPICommandServer.send_event)."""
        transport.send(self._comm, (kind, arg), server, Tag.CONTROL)

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
        return self._queue(kind, command, mode, parameters, [(rank, payload) for rank in ranks or [None]])

    def _queue(self, kind: str, command: str, mode: str, parameters: Any,
               items: list[tuple[int | None, Any]]) -> list[int]:
        """Queue a request per (server or None for any, payload): all pickled before any is
        queued, so a value that cannot be pickled loses nothing; then send what can go."""
        with self._lock, transport.DeferredSigint():
            table, counter = self._monitor.table, self._ids
            messages = []  # nothing is queued before all are pickled and checked
            for n, (rank, payload) in enumerate(items):
                if rank is not None and table[rank].timed_out:
                    self._pump()  # a pong may be waiting: take it before refusing the target
                    if table[rank].timed_out:
                        raise RuntimeError(f"server {rank} is in timeout (it has not answered the "
                                           f"monitor for {self.server_timeout:g} s); choose another target")
                request = protocol.make_request(kind, next(counter), command, mode, payload)
                try:
                    messages.append((rank, request[1], transport.encode(request, plain=payload is None)))
                except Exception as exc:
                    per_task = len({id(payload) for _, payload in items}) > 1  # name the failing task
                    raise _unpicklable(command, exc, f" (task {n})" if per_task else "") from exc
            anyone = False
            encoded, requests, queues = self._encoded, self._requests, self._queues
            for rank, request_id, message in messages:
                encoded[request_id] = message
                requests[request_id] = {"kind": kind, "id": request_id, "command": command,
                                        "mode": mode, "parameters": parameters, "server": rank,
                                        "status": protocol.HOLDING_QUEUE}
                if rank is None:
                    anyone = True
                    self._any_queue.append(request_id)
                else:
                    queues[rank].append(request_id)
            self._dispatch(self._servers if anyone else [rank for rank, _ in items])
        return [request_id for _, request_id, _ in messages]

    def _dispatch(self, servers: Iterable[int]) -> None:
        """Send the next queued request to each of `servers` that is idle and responsive.

        Only the servers whose state changed are passed (those just given work, those that
        just answered): looking at all of them after each response made a fan-out's cost
        grow with the square of its size.
        """
        encoded = self._encoded
        if not encoded:  # it holds exactly the queued requests
            return
        inflight, table, queues, comm = self._inflight, self._monitor.table, self._queues, self._comm
        for server in servers:
            if inflight[server] is not None or table[server].timed_out:
                continue
            queue = queues[server] or self._any_queue
            if not queue:
                continue
            request_id = queue.popleft()
            request = self._requests[request_id]
            sends = transport.send_encoded(comm, encoded.pop(request_id), server, Tag.REQUEST, wait=False)
            if sends:
                self._sends.extend(sends)
            inflight[server] = request_id
            request["server"], request["status"], request["sent_at"] = server, protocol.REQUEST_SENT, time.time()

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        if isinstance(ids, int) and not isinstance(ids, bool):
            ids = [ids]
        ids = list(ids)
        unknown = [i for i in ids if i not in self._requests]
        if unknown:
            raise KeyError(f"unknown command request ids {unknown}; known ids are "
                           f"{protocol.format_ranks(list(self._requests)) or 'none'}")
        return ids

    # -- internals: receiving -------------------------------------------------------------
    def _pump(self) -> bool:
        """Receive all waiting messages, dispatch queued requests, run the monitor.

        Call with the lock held. Returns True if anything arrived.
        """
        got_any = False
        answered: list[int] = []  # servers that may take their next request now
        status, comm = self._status, self._comm
        # Callers on the main thread hold a DeferredSigint, so a matched message is never lost.
        while (msg := comm.improbe(ANY_SOURCE, ANY_TAG, status)):
            got_any = True
            source, tag = status.Get_source(), status.Get_tag()
            try:
                message = transport.receive(comm, msg, status)
            except transport.DecodeError as exc:
                message = self._undecodable(source, tag, exc)
            if message is None:
                continue
            if tag == Tag.RESPONSE:
                self._on_response(source, message)
                answered.append(source)
            elif tag == Tag.EVENT:
                self._on_event(source, *message)
            else:
                log.error("unexpected message with tag %d from rank %d dropped", tag, source)
        if answered:
            self._dispatch(answered)
        if self._sends and transport.complete(self._sends, 1e-3):
            self._sends = []  # the buffers they kept alive may go now
        now = time.monotonic()
        if self._state == "running" and now >= self._next_tick:
            self._next_tick = now + 0.01
            self._run_monitor(now)
        return got_any

    def _undecodable(self, server: int, tag: int, exc: transport.DecodeError) -> tuple | None:
        """A failed reply in place of a response the client cannot unpickle; events are dropped."""
        if tag != Tag.RESPONSE:
            log.error("a message from rank %d could not be unpickled and was dropped: %s", server, exc)
            return None
        text = (f"DecodeError: the result from server {server} could not be unpickled on the client: "
                f"{exc}. Import the module that defines it in the client (the notebook), or keep the "
                f"value on the server.\n")
        return protocol.make_reply(None, traceback=text)

    def _on_response(self, server: int, reply: tuple) -> None:
        # A reply without an id answers the request the server was running (see _undecodable
        # and MPICommandServer._refuse): each server has at most one in flight.
        inflight = self._inflight
        request_id = inflight[server] if reply[0] is None else reply[0]
        if inflight[server] == request_id:
            inflight[server] = None
        request = self._requests.get(request_id)
        if request is None or "forgotten" in request:  # the server is free again all the same
            log.info("response to forgotten request %d from server %d dropped", request_id, server)
            self._requests.pop(request_id, None)
            return
        response = protocol.response_from_reply(request, server, reply)
        request["status"] = protocol.RESPONSE_RECEIVED
        self._responses[request_id] = response
        if not response["successful"]:  # (no debug line for a success: this is the hot path)
            log.info("command request with id %d failed in server n# %d with traceback %s",
                     request_id, server, response["traceback"])

    def _on_event(self, server: int, kind: str, payload: Any) -> None:
        now = time.monotonic()
        if kind == protocol.STREAM:
            if self.stream_callback is not None:
                request_id, name, text = payload
                try:
                    self.stream_callback(server, request_id, name, text)
                except Exception:
                    log.exception("stream callback failed")
        elif kind == protocol.DISPLAY:
            if self.display_callback is not None:
                try:
                    self.display_callback(server, *payload)
                except Exception:
                    log.exception("display callback failed")
        elif kind == protocol.STACK:
            self._stacks[server] = payload
        elif kind == protocol.LOG:
            logs.reemit(payload)
        elif kind in (protocol.PONG, protocol.HELLO):
            if kind == protocol.HELLO:
                self._hello.add(server)
                log.info("server with rank %d started at %s with PID %d", server, payload["host"],
                         payload["pid"])
            if self._monitor.answered(server, payload, now):
                log.warning("server %d answers again after a timeout", server)
                self._dispatch([server])
        elif kind == protocol.STOPPED:
            self._stopped.add(server)

    def _run_monitor(self, now: float) -> None:
        for server in self._monitor.due(now):
            self._control(server, protocol.PING, None)
            self._monitor.pinged(server, now)
        for server in self._monitor.expired(now):
            self._on_timeout(server)

    def _on_timeout(self, server: int) -> None:
        """Give the server's pending requests synthetic timeout responses (kept queued)."""
        pending = [i for i, r in self._requests.items()
                   if r["status"] in (protocol.REQUEST_SENT, protocol.HOLDING_QUEUE)
                   and (r["server"] == server or i == self._inflight[server])]
        log.warning("server %d timed out (no answer for %g s); %d pending requests marked timeout",
                    server, self.server_timeout, len(pending))
        for request_id in pending:
            request = self._requests[request_id]
            request["status"] = protocol.TIMEOUT
            self._responses[request_id] = protocol.timeout_response(request, server, self.server_timeout)

    # -- internals: waiting --------------------------------------------------------------
    def _wait_responses(self, ids: list[int], timeout: float | None) -> list[int]:
        """Wait for the responses of `ids`; return the ids still without one.

        A synthetic timeout response counts only while its server is in timeout: once the
        server answers again, the wait goes on for the real response (guide 5.4).
        """
        remaining = collections.deque(ids)
        provisional: set[int] = set()  # settled by a timeout response: their server may recover

        def pending() -> collections.deque:
            # Responses come back roughly in order: checking from the front keeps each
            # check O(1) even when thousands of ids are awaited.
            while remaining and self._settled(remaining[0]):
                request_id = remaining.popleft()
                if self._responses[request_id]["status"] == protocol.TIMEOUT:
                    provisional.add(request_id)
            if not remaining and provisional:
                remaining.extend(i for i in provisional if not self._settled(i))
            return remaining

        if not self._wait_until(pending, timeout):
            return []
        with self._lock:
            return [i for i in ids if not self._settled(i)]

    def _settled(self, request_id: int) -> bool:
        response = self._responses.get(request_id)
        if response is None:
            return False
        return response["status"] != protocol.TIMEOUT or self._monitor.table[response["server"]].timed_out

    def _wait_for(self, ids: list[int], timeout: float | None) -> None:
        """Wait for the responses of `ids`; TimeoutError naming those that did not come."""
        missing = self._wait_responses(ids, timeout)
        if missing:
            with self._lock:
                where = ", ".join(f"{i} (server {self._requests[i]['server']}, "
                                  f"{self._requests[i]['status']})" for i in missing)
            raise TimeoutError(f"no response within {timeout:g} s for command request ids {where}")

    def _wait_until(self, pending: Callable[[], Any], timeout: float | None) -> Any:
        """Pump until `pending()` is empty or `timeout` passes; return what is still pending.

        A polling loop (transport.Backoff), so Ctrl-C and timeouts always work.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = self._backoff()
        with transport.DeferredSigint() as sigint:
            self._waiters += 1  # keeps the service thread from competing for the lock
            try:
                with self._lock:
                    left = pending()
                # Wait first, then pump: right after a request is sent its answer is not
                # there yet, and a pump that finds nothing was a tenth of a round trip. A wait
                # whose time is up still pumps once (timeout=0 asks what has come).
                while left:
                    if deadline is None or time.monotonic() <= deadline:
                        sigint.check()  # Ctrl-C surfaces here, with the state consistent
                        backoff.wait(self._comm.Iprobe)  # returns as soon as a message waits
                    with self._lock:
                        if self._pump():
                            backoff.reset()
                        left = pending()
                    if deadline is not None and time.monotonic() > deadline:
                        break
                return left
            finally:
                self._waiters -= 1
                self._waited_at = time.monotonic()

    def _backoff(self) -> transport.Backoff:
        """This thread's wait strategy, reset (kept per thread: making one on every wait
        was a tenth of a round trip's client time)."""
        backoff = getattr(self._per_thread, "backoff", None)
        if backoff is None:
            backoff = self._per_thread.backoff = transport.Backoff()
        backoff.reset()
        backoff.hot = self._hot_poll()
        return backoff

    def _hot_poll(self) -> float:
        """How long a wait may busy-poll before it yields: 20 us (round trip -10%) when the
        client and the servers it waits for each have a core; else 0, since on an
        oversubscribed host it starves the servers (fan-out measured 2x slower)."""
        if not self._oversubscribed:
            return 20e-6
        busy = len(self._inflight) - list(self._inflight.values()).count(None)
        return 20e-6 if busy + 1 <= self._cores else 0.0

    def _service_loop(self) -> None:
        """Pump while nobody else does (non-blocking requests, a notebook between cells).

        It keeps out of the way of a thread that waits and pumps itself, or did so within
        the last SERVICE_GRACE: each wake-up of this thread takes the GIL from that one at
        its next MPI call, and yield-spinning here made a loop of round trips 25% slower.
        """
        busy = transport.Backoff()
        # With nothing in flight only pongs and logs arrive: a long cap keeps idle CPU low.
        idle = transport.Backoff(spin=0.0, start=1e-3, warm=0.0, cap=20e-3, idle_cap=20e-3)
        while not self._halt.is_set():
            active = False
            others = self._waiters or time.monotonic() - self._waited_at < SERVICE_GRACE
            if not others and self._lock.acquire(blocking=False):
                try:
                    active = self._pump()
                except Exception:
                    log.exception("client service thread error")
                finally:
                    self._lock.release()
            if active:
                busy.reset()
                idle.reset()
            elif others or all(v is None for v in self._inflight.values()):
                idle.wait()
            else:
                busy.wait()
