"""The monitor: the client pings servers; a server service thread answers.

The timeout decision is a pure function of (when the outstanding ping was sent,
now, the limit), so it is unit-tested without MPI. Only one ping per server is
outstanding at a time, and the client drains every waiting answer before it
decides, so a client that was itself stalled (heavy work holding the GIL) never
marks a server that did answer in time.
"""
from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from . import protocol
from .protocol import Tag

if TYPE_CHECKING:  # pragma: no cover
    from .server import MPICommandServer

log = logging.getLogger("mpi_kernel.monitor")


def is_timed_out(ping_sent_at: float | None, now: float, timeout: float) -> bool:
    """A server times out when its outstanding ping is older than `timeout` seconds."""
    return ping_sent_at is not None and now - ping_sent_at > timeout


@dataclasses.dataclass
class ServerStatus:
    """What the client knows about one server (the guide's status, plus timing)."""

    rank: int
    host: str = ""
    pid: int = 0
    busy: bool = False
    command: str | None = None
    command_id: int | None = None
    command_start_time: float | None = None
    timeout: bool = False
    ping_sent_at: float | None = None   # monotonic time of the outstanding ping
    last_ping_at: float = 0.0
    last_pong_at: float | None = None   # monotonic time of the last answer

    @property
    def state(self) -> str:
        if self.timeout:
            return protocol.TIMEOUT
        return protocol.BUSY if self.busy else protocol.IDLE

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("rank", "host", "pid", "busy", "command", "command_id",
                                           "command_start_time", "timeout")}
        d["state"] = self.state
        d["elapsed"] = (time.time() - self.command_start_time) if self.command_start_time else None
        return d


class MonitorClient:
    """Client side: decides when to ping and which servers have timed out."""

    def __init__(self, ranks: list[int], ping_interval: float, server_timeout: float) -> None:
        self.table = {r: ServerStatus(r) for r in ranks}
        self.ping_interval = ping_interval
        self.server_timeout = server_timeout

    def due(self, now: float) -> list[int]:
        """Servers to ping now: none outstanding and the interval has passed."""
        return [s.rank for s in self.table.values()
                if s.ping_sent_at is None and now - s.last_ping_at >= self.ping_interval]

    def pinged(self, rank: int, now: float) -> None:
        status = self.table[rank]
        status.ping_sent_at = status.last_ping_at = now

    def answered(self, rank: int, info: dict, now: float) -> bool:
        """Record a pong or hello; return True if the server was in timeout (recovered)."""
        status = self.table[rank]
        for key in ("host", "pid", "busy", "command", "command_id", "command_start_time"):
            if key in info:
                setattr(status, key, info[key])
        status.ping_sent_at = None
        status.last_pong_at = now
        recovered, status.timeout = status.timeout, False
        return recovered

    def expired(self, now: float) -> list[int]:
        """Mark and return the servers that have just timed out."""
        newly = []
        for status in self.table.values():
            if not status.timeout and is_timed_out(status.ping_sent_at, now, self.server_timeout):
                status.timeout = True
                newly.append(status.rank)
        return newly


class MonitorServer:
    """Server side service thread: start/ping/interrupt/stop, and stream flushing.

    It runs beside the main thread, so it answers pings while a command runs
    (unless the command holds the GIL, which is exactly what a timeout reports).
    """

    def __init__(self, server: "MPICommandServer", flush: Callable[[], None]) -> None:
        self.server = server
        self.flush = flush
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mpi-kernel-monitor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        from . import transport  # local: keeps this module importable without MPI
        env = self.server.env
        status = transport.MPI.Status()
        # Pings and interrupts are not latency-bound: a 50 ms cap keeps idle CPU low.
        backoff = transport.Backoff(spin=0.0, start=1e-3, warm=0.0, cap=50e-3, idle_cap=50e-3)
        while not self.stopping.is_set():
            self.flush()
            got, message = transport.try_receive(env.framework, env.client_rank, Tag.CONTROL, status)
            if not got:
                # A broadcast announced while the main thread runs user code is joined here.
                if self.server.broadcasts.poll():
                    backoff.reset()
                else:
                    backoff.wait()
                continue
            backoff.reset()
            try:
                self._handle(*message)
            except Exception:
                log.exception("monitor service failed to handle %r", message[0])

    def _handle(self, kind: str, arg: Any) -> None:
        if kind == protocol.PING:
            self.server.send_event(protocol.PONG, self.server.status())
        elif kind == protocol.START:
            self.server.configure(arg)
            self.server.send_event(protocol.HELLO, self.server.status())
        elif kind == protocol.INTERRUPT:
            self.server.interrupt(arg)
        elif kind == protocol.STOP:
            self._stop(arg)
        elif kind == protocol.STACK:
            self.server.send_event(protocol.STACK, self.server.stack())

    def _stop(self, grace: float) -> None:
        """Ask the main thread to leave its loop (it then says STOPPED); enforce `grace`."""
        self.stopping.set()
        self.server.interrupt(None)  # a running command ends with KeyboardInterrupt
        deadline = time.monotonic() + grace
        while self.server.is_serving() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.server.is_serving():
            # The main thread is stuck in C (e.g. a collective the client never joins). Only
            # MPI_Abort ends such a job on every host; an exit would leave other hosts' ranks
            # waiting for ever (hydra does not end them).
            log.error("server %d did not stop within %g s; aborting the job",
                      self.server.env.rank, grace)
            from .environment import abort
            abort(1)


def pthread_interrupt(thread_id: int) -> None:
    """Raise KeyboardInterrupt in `thread_id` (the main thread) via SIGINT."""
    signal.pthread_kill(thread_id, signal.SIGINT)
