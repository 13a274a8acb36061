"""The server's control thread: start, ping, interrupt, stop and stack requests, and
stream flushing (the client's side of these is monitor.py and client.py).

It runs beside the server's main thread, so it answers pings while a command runs
(unless the command holds the GIL, which is exactly what a timeout reports). It knows
the server only through the small `Served` interface below, so server.py imports this
module and not the other way round.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Protocol

from . import protocol, transport
from . import environment
from .environment import MPIEnvironment, abort
from .protocol import Tag

log = logging.getLogger("mpi_kernel.control")


class Served(Protocol):
    """What the control thread needs of MPICommandServer."""

    env: MPIEnvironment

    def send_event(self, kind: str, payload: Any) -> None: ...
    def status(self) -> dict[str, Any]: ...
    def configure(self, config: dict) -> None: ...
    def interrupt(self, request_id: int | list[int] | None) -> None: ...
    def give_back(self, request_ids: list[int]) -> list[int]: ...
    def stack(self) -> dict[str, Any]: ...
    def is_serving(self) -> bool: ...
    def poll_broadcasts(self) -> bool: ...


class ControlThread:
    """Handles the client's CONTROL messages, one handler per kind."""

    def __init__(self, server: Served, flush: Callable[[], None]) -> None:
        self.server = server
        self.flush = flush
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mpi-kernel-control", daemon=True)
        self._handlers: dict[str, Callable[[Any], None]] = {
            protocol.PING: self._ping, protocol.START: self._start, protocol.INTERRUPT: server.interrupt,
            protocol.STOP: self._stop, protocol.STACK: self._stack, protocol.RECALL: server.give_back,
            protocol.DEATH: environment.lost_ranks.add, protocol.EXIT: self._exit,
        }

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        server = self.server
        status = transport.MPI.Status()
        # Pings and interrupts are not latency-bound: a 50 ms cap keeps idle CPU low.
        backoff = transport.Backoff(spin=0.0, start=1e-3, warm=0.0, cap=50e-3, idle_cap=50e-3)
        while not self.stopping.is_set():
            self.flush()
            env = server.env  # read each time: the world may have been rebuilt (respawn.py)
            try:
                got, message = transport.try_receive(env.framework, env.client_rank, Tag.CONTROL, status)
                if not got:
                    # A broadcast announced while the main thread runs user code is joined here.
                    if server.poll_broadcasts():
                        backoff.reset()
                    else:
                        backoff.wait()
                    continue
            except transport.MPI.Exception as exc:  # a rank died (Open MPI's ULFM)
                transport.acknowledge(env.framework, exc)
                continue
            backoff.reset()
            kind, arg = message
            try:
                self._handlers[kind](arg)
            except Exception:
                log.exception("control thread failed to handle %r", kind)

    def _ping(self, _: Any) -> None:
        self.server.send_event(protocol.PONG, self.server.status())

    def _start(self, config: dict) -> None:
        self.server.configure(config)
        self.server.send_event(protocol.HELLO, self.server.status())

    def _stack(self, _: Any) -> None:
        self.server.send_event(protocol.STACK, self.server.stack())

    def _exit(self, code: int) -> None:
        """End this process now, whatever the main thread is in (a collective that never
        returns): the client replaces it (respawn.py)."""
        log.warning("server %d ends at the client's request (it is to be replaced)", self.server.env.rank)
        os._exit(code)

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
            log.error("server %d did not stop within %g s; aborting the job", self.server.env.rank, grace)
            abort(1)


def pthread_interrupt(thread_id: int) -> None:
    """Raise KeyboardInterrupt in `thread_id` (the main thread) via SIGINT."""
    signal.pthread_kill(thread_id, signal.SIGINT)
