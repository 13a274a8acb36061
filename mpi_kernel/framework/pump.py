"""The client's engine: queue and send requests, receive and route every message, run
the monitor, wait, and the service thread.

One lock (the client's) guards the request book and the receiving side of the framework
communicator. Whoever holds it "pumps": receives every waiting message, records
responses in the book, hands queued requests to free servers and runs the monitor. The
service thread pumps when nobody else does; a blocking call pumps itself, which is what
keeps a round trip near the raw MPI latency. Calls go one way: client.py -> here ->
requests.py (the book) and monitor.py.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
import time
from typing import Any, Callable, Iterable

from ..errors import DeadServerError
from . import environment, logs, protocol, transport
from .monitor import MonitorClient
from .protocol import Reply, Tag
from .requests import RequestBook

log = logging.getLogger("mpi_kernel.client")
ANY_SOURCE, ANY_TAG = transport.MPI.ANY_SOURCE, transport.MPI.ANY_TAG
# The service thread leaves the pumping to a thread that waited this recently (seconds).
SERVICE_GRACE = 5e-3
# The fast path probes directly this long (seconds) before the general wait takes over: the
# spin phase of transport.Backoff, after which a wait sleeps anyway.
QUICK_WAIT = 1e-3
StreamCallback = Callable[[int, "int | None", str, str], None]


def unpicklable(command: str, exc: Exception, which: str = "") -> TypeError:
    """The error for a request whose value cannot be pickled (nothing has been sent)."""
    return TypeError(f"cannot send {command!r}{which} to the servers: a value in it cannot be "
                     f"pickled ({type(exc).__name__}: {exc})")


class Pump:
    def __init__(self, comm: Any, servers: list[int], monitor: MonitorClient, cores: int,
                 oversubscribed: bool) -> None:
        self.comm = comm
        self.servers = servers
        self.monitor = monitor
        self.book = RequestBook(servers)
        self.lock = threading.RLock()
        self.ids = itertools.count(1)
        self.monitoring = False  # the monitor pings only while the services run
        # Isend/Ibcast requests of out-of-band buffers still in progress, by destination (None:
        # a broadcast's); those to a rank that died never end, and are kept in `abandoned`
        # (MPI may still hold their buffers).
        self.sends: dict[int | None, list] = {}
        self.abandoned: list = []
        self.hello: set[int] = set()
        self.ended: set[tuple[str, int]] = set()  # (host, pid) of servers counted dead: a late
                                                  # report about one is old news
        self.stopped: set[int] = set()
        self.stacks: dict[int, dict] = {}
        # Called as (server, request_id, stream_name, text) for live output.
        self.stream_callback: StreamCallback | None = None
        # Called as (server, request_id, data, metadata, transient, update) for display data.
        self.display_callback: Callable[..., None] | None = None
        self._status = transport.MPI.Status()
        self._next_tick = 0.0
        self._cores = cores  # read once: a syscall, and waits ask on every call
        self._oversubscribed = oversubscribed
        self._service: threading.Thread | None = None
        self._halt = threading.Event()
        self._waiters = 0  # threads inside a wait, pumping themselves (changed under _counting)
        self._counting = threading.Lock()
        self._waited_at = 0.0  # when the last of them left (monotonic)
        self._per_thread = threading.local()

    # -- sending ---------------------------------------------------------------------------
    def control(self, server: int, kind: str, arg: Any) -> None:
        """A message for the server's control thread (the mirror of MPICommandServer.send_event).
        To a server that died (Open MPI's ULFM says so) it is dropped: its death is reported."""
        try:
            transport.send(self.comm, (kind, arg), server, Tag.CONTROL)
        except transport.MPI.Exception as exc:
            transport.acknowledge(self.comm, exc)

    def queue(self, kind: str, command: str, mode: str, parameters: Any,
              items: list[tuple[int | None, Any]]) -> list[int]:
        """Queue a request per (server or None for any, payload): all pickled before any is
        queued, so a value that cannot be pickled loses nothing; then send what can go."""
        with self.lock, transport.DeferredSigint():
            table, counter = self.monitor.table, self.ids
            messages = []  # nothing is queued before all are pickled and checked
            anyone = False
            for n, (rank, payload) in enumerate(items):
                if rank is None:
                    anyone = True
                elif table[rank].timed_out:
                    if table[rank].dead is not None:
                        raise DeadServerError(rank, table[rank].dead)
                    self.pump()  # a pong may be waiting: take it before refusing the target
                    if table[rank].timed_out:
                        raise RuntimeError(f"server {rank} is in timeout (it has not answered the monitor "
                                           f"for {self.monitor.server_timeout:g} s); choose another target")
                request = protocol.make_request(kind, next(counter), command, mode, payload)
                try:
                    messages.append((rank, request[1], transport.encode(request, plain=payload is None)))
                except Exception as exc:
                    per_task = len({id(payload) for _, payload in items}) > 1  # name the failing task
                    raise unpicklable(command, exc, f" (task {n})" if per_task else "") from exc
            add = self.book.add
            for rank, request_id, message in messages:
                add(kind, request_id, command, mode, parameters, rank, message)
            # Free servers are the book's to find (assign); a batch for any server (a map)
            # also looks at every busy one, once, for room to send ahead: not each single
            # request, which at 2,048 ranks would cost a pass over all of them.
            self.dispatch(self.servers if anyone and len(items) > 1 else [r for r, _ in items if r is not None])
        return [request_id for _, request_id, _ in messages]

    def dispatch(self, servers: Iterable[int]) -> None:
        """Send what the book's policy assigns now (RequestBook.assign), given the servers
        whose state changed (those just given work, those that just answered)."""
        if self.book.encoded:  # it holds exactly the queued requests
            for server, _, message in self.book.assign(servers, time.time()):
                self._send(server, message)  # (one to a server that died fails with its death)

    def _send(self, server: int, message: tuple[bytes, list]) -> bool:
        """Send a pickled request; False if `server` died (ULFM says so: its death report
        fails the request). Large buffers go on in the background (`sends`)."""
        try:
            sends = transport.send_encoded(self.comm, message, server, Tag.REQUEST, wait=False)
        except transport.MPI.Exception as exc:
            transport.acknowledge(self.comm, exc)
            return False
        if sends:
            self.sends.setdefault(server, []).extend(sends)
        return True

    # -- receiving -------------------------------------------------------------------------
    def pump(self) -> bool:
        """Receive all waiting messages, dispatch queued requests, run the monitor.

        Call with the lock held. Returns True if anything arrived.
        """
        answered: list[int] = []  # servers that may take their next request now
        got_any = self.receive_all(answered)
        if answered:
            self.dispatch(answered)
        if self.sends and transport.complete([r for rs in self.sends.values() for r in rs], 1e-3):
            self.sends = {}  # the buffers they kept alive may go now
        self.tick()
        return got_any

    def tick(self) -> None:
        """Run the monitor if it is due (every 10 ms at most). Call with the lock held."""
        if self.monitoring:
            now = time.monotonic()
            if now >= self._next_tick:
                self._next_tick = now + 0.01
                self._run_monitor(now)

    def receive_all(self, answered: list[int]) -> bool:
        """Receive and route every waiting message (receive_one). Call with the lock held.
        Returns True if anything arrived."""
        got_any = False
        while self.receive_one(answered):
            got_any = True
        return got_any

    def receive_one(self, answered: list[int]) -> bool:
        """Receive and route one waiting message: a response into the book (its server
        appended to `answered`), an event to its handler. False when none waits. Call with
        the lock held (callers on the main thread hold a DeferredSigint, so a matched
        message is never lost)."""
        status, comm = self._status, self.comm
        try:
            msg = comm.improbe(ANY_SOURCE, ANY_TAG, status)
        except transport.MPI.Exception as exc:  # a death, under Open MPI's ULFM: probes fail
            transport.acknowledge(comm, exc)    # until it is acknowledged
            return True
        if msg is None:
            return False
        source, tag = status.Get_source(), status.Get_tag()
        try:
            message = transport.receive(comm, msg, status)
        except transport.DecodeError as exc:
            message = self._undecodable(source, tag, exc)
        if message is None:
            return True
        if tag == Tag.RESPONSE:
            response = self.book.answer(source, message, time.time())
            answered.append(source)
            if response is None:  # the server is free again all the same
                log.info("response to a forgotten request from server %d dropped", source)
            elif not response["successful"]:  # (no debug line for a success: the hot path)
                log.info("command request with id %d failed in server n# %d with traceback %s",
                         response["id"], source, response["traceback"])
        elif tag == Tag.EVENT:
            self._on_event(source, *message)
        else:
            log.error("unexpected message with tag %d from rank %d dropped", tag, source)
        return True

    # -- the fast path -------------------------------------------------------------------------
    # A blocking request to idle servers with nothing queued is sent at once and waited for
    # by probing directly: no queue, no dispatch, no general wait. It leaves the same records
    # as the queue would. After QUICK_WAIT without all the answers the general wait takes
    # over (the monitor, timeouts, sleeping backoff), so only the quick case is different.

    def request(self, kind: str, command: str, mode: str, parameters: Any, payload: Any,
                ranks: list[int] | None) -> list[int]:
        """A blocking request to each of `ranks` (None: the first free server): its ids, once
        all are answered (the responses are in the book). The fast path if it can; else
        queued, and the general wait."""
        with transport.DeferredSigint():
            with self.lock:
                ids = self.send_now(kind, command, mode, parameters, payload, ranks)
            done = ids is not None and self.wait_now(ids)
        if ids is None:
            ids = self.queue(kind, command, mode, parameters, [(rank, payload) for rank in ranks or [None]])
        if not done:
            self.wait_for(ids, None)
        return ids

    def send_now(self, kind: str, command: str, mode: str, parameters: Any, payload: Any,
                 ranks: list[int] | None) -> list[int] | None:
        """Send a request to each of `ranks` (None: the first free server) now, if every one
        is free and responsive and nothing is queued: the ids. None when that is not so (the
        caller queues them). Call with the lock held, and a DeferredSigint."""
        book = self.book
        if book.encoded:  # something waits already: it goes first
            return None
        idle = book.idle
        if ranks is None:
            if not idle:
                return None
            ranks = [min(idle)]  # the first free server, as assign() picks
        else:
            for rank in ranks:
                if rank not in idle:
                    return None
            if len(ranks) > 1 and len(set(ranks)) < len(ranks):  # [0, 0]: the second one queues
                return None
        counter, plain = self.ids, payload is None
        messages = []
        for rank in ranks:  # all pickled before any is sent, as in queue()
            request_id = next(counter)
            try:
                messages.append((rank, request_id, transport.encode(
                    protocol.make_request(kind, request_id, command, mode, payload), plain=plain)))
            except Exception as exc:
                raise unpicklable(command, exc) from exc
        now = time.time()
        for rank, request_id, message in messages:
            book.add_sent(kind, request_id, command, mode, parameters, rank, now)
            self._send(rank, message)
        return [request_id for _, request_id, _ in messages]

    @staticmethod
    def _answered(pending: collections.deque, responses: dict[int, dict]) -> bool:
        """Drop the answered ids from the front of `pending`; True once it is empty. Each id
        is dropped once, so a fan-out's checks cost O(N) in all, not O(N) per answer."""
        while pending and pending[0] in responses:
            pending.popleft()
        return not pending

    def wait_now(self, ids: list[int]) -> bool:
        """Wait up to QUICK_WAIT for the responses of `ids` sent by send_now, probing directly;
        True when all have come. Call with a DeferredSigint (an interrupt surfaces after it)."""
        responses, lock, pending = self.book.responses, self.lock, collections.deque(ids)
        start = time.monotonic()
        self._enter_wait()
        try:
            while self.spin(start):
                with lock:  # one message at a time: no probe after the last answer
                    answered: list[int] = []
                    while self.receive_one(answered) and not self._answered(pending, responses):
                        pass
                    if answered and self.book.encoded:  # another thread queued meanwhile
                        self.dispatch(answered)
                    if self._answered(pending, responses):
                        self.tick()
                        return True
            return False
        finally:
            self._leave_wait()

    def _enter_wait(self) -> None:
        """A thread starts waiting and pumping itself: the service thread keeps out of its way."""
        with self._counting:  # several threads wait at once (a cell, a view's get, the monitor)
            self._waiters += 1

    def _leave_wait(self) -> None:
        with self._counting:
            self._waiters -= 1
            self._waited_at = time.monotonic()

    def spin(self, start: float) -> bool:
        """Probe until a message waits (True) or QUICK_WAIT has passed since `start` (False);
        without yielding the core for the first _hot_poll() seconds."""
        iprobe, hot = self.comm.Iprobe, self._hot_poll()
        while True:
            try:
                if iprobe(ANY_SOURCE, ANY_TAG):
                    return True
            except transport.MPI.Exception:  # a death (ULFM): the general wait acknowledges it
                return False
            elapsed = time.monotonic() - start
            if elapsed > QUICK_WAIT:
                return False
            if elapsed > hot:
                os.sched_yield()

    def server_died(self, server: int, reason: str) -> list[int]:
        """`server`'s process ended: its requests fail with `reason` (the ids), it gets no
        more work, and the survivors hear of it. Call with the lock held."""
        if self.monitor.table[server].dead is not None:
            return []
        # Its replies already here count: what it answered before dying is not run again.
        answered: list[int] = []
        self.receive_all(answered)
        self.ended.add((self.monitor.table[server].host, self.monitor.table[server].pid))
        self.monitor.died(server, reason)
        environment.lost_ranks.add(server)
        ids = self.book.die(server, reason)
        self.dispatch(answered)  # what it was sent ahead goes to the others now
        self.abandoned += self.sends.pop(server, []) + self.sends.pop(None, [])  # (a broadcast
        # it was part of never ends; one it was not in goes on all the same: MPI progresses it)
        for rank in self.servers:
            if self.monitor.table[rank].dead is None:
                self.control(rank, protocol.DEATH, server)
        log.info("server %d died; %d of its requests failed", server, len(ids))  # (the cell says why)
        return ids

    def rebind(self, comm: Any, replaced: list[int]) -> None:
        """Receive and send over `comm` (the rebuilt world's) from now on. The replaced
        servers start afresh; every outstanding ping is dropped, since its answer may have
        gone to the old communicator, which nobody reads any more. Call with the lock held."""
        self.comm = comm
        self.monitor.replaced(replaced)
        self.book.replaced(replaced)
        for server in replaced:
            self.hello.discard(server)
            self.stopped.discard(server)
            self.stacks.pop(server, None)

    def _undecodable(self, server: int, tag: int, exc: transport.DecodeError) -> tuple | None:
        """A failed reply in place of a response the client cannot unpickle; events are dropped."""
        if tag != Tag.RESPONSE:
            log.error("a message from rank %d could not be unpickled and was dropped: %s", server, exc)
            return None
        text = (f"DecodeError: the result from server {server} could not be unpickled on the client: "
                f"{exc}. Import the module that defines it in the client (the notebook), or keep the "
                f"value on the server.\n")
        return tuple(Reply(None, traceback=text))

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
            self.stacks[server] = payload
        elif kind == protocol.LOG:
            logs.reemit(payload)
        elif kind in (protocol.PONG, protocol.HELLO):
            if kind == protocol.HELLO:
                self.hello.add(server)
                log.info("server with rank %d started at %s with PID %d", server, payload["host"],
                         payload["pid"])
            if self.monitor.answered(server, payload, now):
                log.warning("server %d answers again after a timeout", server)
                self.book.recovered(server)
                self.dispatch([server])
        elif kind == protocol.RELEASED:  # requests sent ahead, given back unstarted
            if self.book.released(server, payload, time.time()):
                self.dispatch([])
        elif kind == protocol.STOPPED:
            self.stopped.add(server)

    def _run_monitor(self, now: float) -> None:
        for server, ids in self.book.overdue(time.time()).items():  # (a free server may run them)
            self.control(server, protocol.RECALL, ids)
        for server in self.monitor.due(now):
            self.control(server, protocol.PING, None)
            self.monitor.pinged(server, now)
        for server in self.monitor.expired(now):
            pending = self.book.time_out(server, self.monitor.server_timeout)
            log.warning("server %d timed out (no answer for %g s); %d pending requests marked timeout",
                        server, self.monitor.server_timeout, len(pending))

    # -- waiting ---------------------------------------------------------------------------
    def _timed_out(self, server: int) -> bool:
        return self.monitor.table[server].timed_out

    def wait_responses(self, ids: list[int], timeout: float | None) -> list[int]:
        """Wait for the responses of `ids`; return the ids still without one.

        A synthetic timeout response counts only while its server is in timeout: once the
        server answers again, the wait goes on for the real response (guide 5.4).
        """
        remaining = collections.deque(ids)
        provisional: set[int] = set()  # settled by a timeout response: their server may recover
        responses, settled, timed_out = self.book.responses, self.book.settled, self._timed_out

        def pending() -> collections.deque:
            # Responses come back roughly in order: checking from the front keeps each
            # check O(1) even when thousands of ids are awaited.
            while remaining and settled(remaining[0], timed_out):
                request_id = remaining.popleft()
                if responses[request_id]["status"] == protocol.TIMEOUT:
                    provisional.add(request_id)
            if not remaining and provisional:
                remaining.extend(i for i in provisional if not settled(i, timed_out))
            return remaining

        if not self.wait_until(pending, timeout):
            return []
        with self.lock:
            return [i for i in ids if not settled(i, timed_out)]

    def wait_for(self, ids: list[int], timeout: float | None) -> None:
        """Wait for the responses of `ids`; TimeoutError naming those that did not come."""
        missing = self.wait_responses(ids, timeout)
        if missing:
            with self.lock:
                requests = self.book.requests
                where = ", ".join(f"{i} (server {requests[i]['server']}, {requests[i]['status']})"
                                  for i in missing)
            raise TimeoutError(f"no response within {timeout:g} s for command request ids {where}")

    def wait_until(self, pending: Callable[[], Any], timeout: float | None) -> Any:
        """Pump until `pending()` is empty or `timeout` passes; return what is still pending.

        A polling loop (transport.Backoff), so Ctrl-C and timeouts always work.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = self._backoff()
        with transport.DeferredSigint() as sigint:
            self._enter_wait()
            try:
                with self.lock:
                    left = pending()
                # Wait first, then pump: right after a request is sent its answer is not
                # there yet, and a pump that finds nothing was a tenth of a round trip. A wait
                # whose time is up still pumps once (timeout=0 asks what has come).
                while left:
                    if deadline is None or time.monotonic() <= deadline:
                        sigint.check()  # Ctrl-C surfaces here, with the state consistent
                        try:
                            backoff.wait(self.comm.Iprobe)  # returns as soon as a message waits
                        except transport.MPI.Exception as exc:  # a death (ULFM): pump acknowledges
                            transport.acknowledge(self.comm, exc)
                    with self.lock:
                        if self.pump():
                            backoff.reset()
                        left = pending()
                    if deadline is not None and time.monotonic() > deadline:
                        break
                return left
            finally:
                self._leave_wait()

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
        return 20e-6 if self.book.busy() + 1 <= self._cores else 0.0

    # -- the service thread ------------------------------------------------------------------
    def start_service(self) -> None:
        self._service = threading.Thread(target=self._service_loop, name="mpi-kernel-client", daemon=True)
        self._service.start()

    def stop_service(self) -> None:
        self._halt.set()
        if self._service is not None and self._service is not threading.current_thread():
            self._service.join(timeout=2)

    def _service_loop(self) -> None:
        """Pump while nobody else does (non-blocking requests, a notebook between cells).

        It keeps out of the way of a thread that waits and pumps itself, or did so within
        the last SERVICE_GRACE: each wake-up of this thread takes the GIL from that one at
        its next MPI call, and yield-spinning here made a loop of round trips 25% slower.
        """
        busy = transport.Backoff()
        # With nothing in flight only pongs and logs arrive: a long cap keeps idle CPU low.
        idle = transport.Backoff(spin=0.0, start=1e-3, warm=0.0, cap=20e-3, idle_cap=20e-3)
        inflight = self.book.inflight
        while not self._halt.is_set():
            active = False
            others = self._waiters or time.monotonic() - self._waited_at < SERVICE_GRACE
            if not others and self.lock.acquire(blocking=False):
                try:
                    active = self.pump()
                except Exception:
                    log.exception("client service thread error")
                finally:
                    self.lock.release()
            if active:
                busy.reset()
                idle.reset()
            elif others or all(v is None for v in inflight.values()):
                idle.wait()
            else:
                busy.wait()
