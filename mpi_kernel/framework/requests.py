"""The client's request book: every request's record, the queues, what each server
runs, the responses (the guide's request and response lists, 5.4), and the one policy of
where a request goes (assign).

Pure Python: no MPI, no threads, no clock of its own (times are passed in), so it is
unit-tested alone (tests/unit/test_requests.py). The pump (pump.py) calls it with the
client's lock held and sends what it returns; nothing here locks.

A request is queued (HOLDING_QUEUE) for one server or for any, sent to a server
(REQUEST_SENT), then answered (RESPONSE_RECEIVED) by its reply, by a cancel, by the
services' stop, or provisionally (TIMEOUT) while its server does not answer the monitor.
Each server runs one request at a time, in the order it was sent them.

Where a request goes (assign), in this order:
1. a free, responsive server takes the next request queued for it;
2. requests for any server go to the free servers, the lowest rank first (the guide's
   "first available server");
3. only when no server is free, a request for any server may be sent ahead to a busy one
   (a task farm's quick tasks: the server then finds its next one waiting instead of idling
   for the client's turn), and only behind requests whose cost is known short: the same
   command measured under SHORT on that server (a first call there unpickles and imports:
   15-20 ms here against 0.1 ms after), with the running one not yet running longer than SHORT.
   Dead and replaced servers start with no timing.
A request sent ahead that has not started is taken back (overdue, then released) once a
server is free and nothing else waits, and is queued again first if its server dies.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Iterable

from . import protocol
from .protocol import as_reply

FORGOTTEN = "forgotten"  # the key of a record whose response is dropped when it comes
CANCEL = "cancel"        # the key of a record sent ahead whose cancel its server has yet to confirm
# How many requests a server may have in flight (the running one included) by the longest
# known cost among them: (under seconds, depth). The client's turn between an answer and the
# next send is 10-50 us here, so tasks under 100 us need several waiting; up to 5 ms one
# hides it. Longer tasks would gain under 1% and only unbalance the end of a map.
AHEAD = ((100e-6, 4), (5e-3, 2))
SHORT = AHEAD[-1][0]  # a request costs "short" under this; one running longer is no longer short
COSTS = 32  # commands whose last run time is kept per server (the oldest is dropped)

Send = tuple[int, int, Any]  # (server, request id, pickled message)


class RequestBook:
    def __init__(self, servers: list[int]) -> None:
        self.servers = servers
        self.requests: dict[int, dict] = {}
        self.responses: dict[int, dict] = {}
        self.queues: dict[int, collections.deque[int]] = {s: collections.deque() for s in servers}
        self.any_queue: collections.deque[int] = collections.deque()
        self.inflight: dict[int, int | None] = {s: None for s in servers}  # what each runs
        self.ahead: dict[int, collections.deque[int]] = {s: collections.deque() for s in servers}
        self.encoded: dict[int, Any] = {}  # exactly the queued requests: their pickled message
        self.early: dict[int, Any] = {}  # the pickled message of each request sent ahead,
                                          # until answered (a release may queue it again)
        self.idle: set[int] = set(servers)  # free and responsive: what assign gives work first
        self.unavailable: set[int] = set()  # in timeout or dead: given nothing
        self.dead: set[int] = set()
        # Per server, a command's last run time (its clock) by the command's hash (a cell's
        # text may be megabytes).
        self.cost: dict[int, dict[int, float]] = {s: {} for s in servers}
        self.recalling: set[int] = set()  # ids sent ahead whose server was asked to give them back

    # -- in ----------------------------------------------------------------------------------
    def add(self, kind: str, request_id: int, command: str, mode: str, parameters: Any,
            server: int | None, message: Any) -> None:
        """Queue a request (pickled: `message`) for `server`, or for any with None."""
        self.encoded[request_id] = message
        self.requests[request_id] = {"kind": kind, "id": request_id, "command": command, "mode": mode,
                                     "parameters": parameters, "server": server,
                                     "status": protocol.HOLDING_QUEUE}
        (self.any_queue if server is None else self.queues[server]).append(request_id)

    def add_sent(self, kind: str, request_id: int, command: str, mode: str, parameters: Any,
                 server: int, now: float) -> None:
        """Record a request sent to `server` at once (the fast path: it was idle and nothing
        was queued): the record add and assign would have left."""
        self.requests[request_id] = {"kind": kind, "id": request_id, "command": command, "mode": mode,
                                     "parameters": parameters, "server": server,
                                     "status": protocol.REQUEST_SENT, "sent_at": now}
        self.inflight[server] = request_id
        self.idle.discard(server)

    # -- where requests go: the one policy ---------------------------------------------------
    def assign(self, servers: Iterable[int], now: float) -> list[Send]:
        """What to send now, each recorded as sent (the module's rules 1-3): `servers` are
        those whose state changed (given work, answered, back from a timeout); the free
        ones are known here (idle), so a fan-out's cost does not grow with the square of
        its size."""
        sends: list[Send] = []
        if not self.encoded:  # it holds exactly the queued requests
            return sends
        idle, queues = self.idle, self.queues
        for server in servers:  # 1. a free server's own queue
            if server in idle and queues[server]:
                sends.append(self._start(server, queues[server].popleft(), now))
        any_queue = self.any_queue
        if any_queue and idle:  # 2. the first free servers
            for server in sorted(idle):
                if not any_queue:
                    break
                if not queues[server]:
                    sends.append(self._start(server, any_queue.popleft(), now))
        if any_queue and not idle:  # 3. ahead, behind work known short: one each in turn
            room = {s: n for s in servers if (n := self._room_ahead(s, now))}
            while any_queue and room:
                for server in list(room):
                    if not any_queue:
                        break
                    request_id = any_queue.popleft()
                    self.ahead[server].append(request_id)
                    message = self.early[request_id] = self._sent(server, request_id, now)
                    sends.append((server, request_id, message))
                    room[server] -= 1
                    if not room[server]:
                        del room[server]
        return sends

    def _start(self, server: int, request_id: int, now: float) -> Send:
        self.inflight[server] = request_id
        self.idle.discard(server)
        return server, request_id, self._sent(server, request_id, now)

    def _sent(self, server: int, request_id: int, now: float) -> Any:
        request = self.requests[request_id]
        request["server"], request["status"], request["sent_at"] = server, protocol.REQUEST_SENT, now
        return self.encoded.pop(request_id)

    def _room_ahead(self, server: int, now: float) -> int:
        """How many more requests for any server may wait behind what `server` has in
        flight: only behind requests of known short cost, the running one not yet overdue.
        (On the hot path of a task farm: once per answer.)"""
        running = self.inflight[server]
        if running is None or server in self.unavailable or self.queues[server]:
            return 0
        request, requests, costs = self.requests.get(running), self.requests, self.cost[server]
        if request is None or self._running_long(request, now):
            return 0
        longest = costs.get(hash(request["command"]))
        if longest is None:
            return 0
        ahead = self.ahead[server]
        for request_id in ahead:
            request = requests.get(request_id)
            cost = None if request is None else costs.get(hash(request["command"]))
            if cost is None:
                return 0
            if cost > longest:
                longest = cost
        for under, depth in AHEAD:
            if longest < under:
                return max(0, depth - 1 - len(ahead))
        return 0

    @staticmethod
    def _running_long(request: dict, now: float) -> bool:
        """Has this running request run past SHORT (by the client's clock)? Then nothing
        more waits behind it, and what already does is taken back."""
        return now - request.get("sent_at", now) > SHORT

    def overdue(self, now: float) -> dict[int, list[int]]:
        """Requests sent ahead that wait behind a request running longer than SHORT (or
        behind a server in timeout) while a server is free and nothing is queued for any:
        {server: ids} to take back (the pump asks the server; released() requeues them).
        Each is asked for once."""
        if not self.early or not self.idle or self.any_queue:  # (early: nothing was sent ahead)
            return {}
        found = {}
        for server, ahead in self.ahead.items():
            if not ahead or server in self.dead:
                continue
            running = self.requests.get(self.inflight[server] or -1)
            if server in self.unavailable or running is None or self._running_long(running, now):
                ids = [i for i in ahead if i not in self.recalling]
                if ids:
                    self.recalling.update(ids)
                    found[server] = ids
        return found

    def released(self, server: int, ids: list[int], now: float) -> list[int]:
        """`server` gave back these requests sent ahead, unstarted: a cancelled one gets its
        cancelled response, a recalled one is queued again first (assign sends it on).
        Returns the ids queued again."""
        ahead, requeued = self.ahead[server], []
        for request_id in ids:
            self.recalling.discard(request_id)
            if self.inflight[server] == request_id:  # the reply before it made it "running"
                self._next(server, now)
            elif request_id in ahead:
                ahead.remove(request_id)
            else:
                continue
            message = self.early.pop(request_id)
            if self._unqueue(request_id, message):
                requeued.append(request_id)
        return requeued

    def _unqueue(self, request_id: int, message: Any) -> bool:
        """A request sent ahead that never started: cancelled (its response says so), dropped
        (forgotten), or queued again first for any server (True)."""
        request = self.requests.get(request_id)
        if request is None or request_id in self.responses and request["status"] != protocol.TIMEOUT:
            return False
        if FORGOTTEN in request:
            del self.requests[request_id]
            return False
        if CANCEL in request:
            request["server"] = None
            self._settle(request_id, protocol.cancelled_response(request))
            return False
        request["server"], request["status"] = None, protocol.HOLDING_QUEUE
        request.pop("sent_at", None)
        self.responses.pop(request_id, None)  # a provisional timeout response: it runs elsewhere
        self.encoded[request_id] = message
        self.any_queue.appendleft(request_id)
        return True

    def _next(self, server: int, now: float) -> None:
        """`server` ended its running request: the next one sent ahead runs now (started,
        as far as the client can tell, now: its clock, not the server's)."""
        ahead = self.ahead[server]
        following = self.inflight[server] = ahead.popleft() if ahead else None
        if following is None:
            if server not in self.unavailable:
                self.idle.add(server)
            return
        request = self.requests.get(following)
        if request is not None:
            request["sent_at"] = now

    # -- out ---------------------------------------------------------------------------------
    def answer(self, server: int, message: tuple, now: float) -> dict | None:
        """Record a server's reply (a Reply as a plain tuple); its response, or None when
        it is not wanted (forgotten, or from a server already counted dead). The server is
        free again, or runs the next one sent ahead."""
        if server in self.dead:  # its requests have their final response, or run elsewhere
            return None
        reply = as_reply(message)
        # A reply without an id answers the request the server was running (an undecodable
        # result, a request the server could not unpickle): one runs at a time.
        request_id = self.inflight[server] if reply.request_id is None else reply.request_id
        if self.inflight[server] == request_id:
            self._next(server, now)
            if self.early:
                self.early.pop(request_id, None)
        request = self.requests.get(request_id)
        if reply.start is not None and reply.stop is not None and request is not None:
            self._measured(self.cost[server], request["command"], reply.stop - reply.start)
        if request is None or FORGOTTEN in request:
            self.requests.pop(request_id, None)
            return None
        response = protocol.response_from_reply(request, server, reply)
        request["status"] = protocol.RESPONSE_RECEIVED
        self.responses[request_id] = response
        return response

    @staticmethod
    def _measured(cost: dict[int, float], command: str, took: float) -> None:
        key = hash(command)
        if key not in cost and len(cost) >= COSTS:
            del cost[next(iter(cost))]
        cost[key] = took

    def _settle(self, request_id: int, response: dict) -> None:
        self.responses[request_id] = response
        self.requests[request_id]["status"] = protocol.RESPONSE_RECEIVED

    def cancel_queued(self, ids: Iterable[int] | None = None) -> list[int]:
        """Cancel the queued requests among `ids` (None: all): each gets a response saying
        it never ran. Returns their ids."""
        queued = list(self.encoded) if ids is None else [i for i in ids if i in self.encoded]
        for request_id in queued:
            del self.encoded[request_id]
            self._settle(request_id, protocol.cancelled_response(self.requests[request_id]))
        if queued:  # each queue filtered once: a stop of a 200,000-task map is not quadratic
            gone = set(queued)
            for queue in (self.any_queue, *self.queues.values()):
                if queue:
                    kept = [i for i in queue if i not in gone]
                    if len(kept) < len(queue):
                        queue.clear()
                        queue.extend(kept)
        return queued

    def cancel_ahead(self, ids: Iterable[int] | None = None) -> dict[int, list[int]]:
        """Mark the requests among `ids` (None: all) that were sent ahead and have not
        started as cancelled: {server: ids} to tell each server to give them back unrun
        (released() then answers them as cancelled; one its server has started runs on)."""
        wanted = None if ids is None else set(ids)
        found: dict[int, list[int]] = {}
        for server, ahead in self.ahead.items():
            for request_id in ahead:
                if wanted is None or request_id in wanted:
                    self.requests[request_id][CANCEL] = True
                    found.setdefault(server, []).append(request_id)
        return found

    def stop_all(self) -> None:
        """The services stopped: every request still unanswered gets a response saying so."""
        for request_id in self.unanswered_ids():
            self._settle(request_id, protocol.stopped_response(self.requests[request_id]))

    def time_out(self, server: int, server_timeout: float) -> list[int]:
        """`server` stopped answering the monitor: it gets no more work, and what it runs and
        what was queued for it get a provisional timeout response until the real one comes.
        Requests for any server sent ahead to it are not touched: they did not start, and
        go elsewhere (overdue) if a server is free. Returns the ids marked."""
        self.unavailable.add(server)
        self.idle.discard(server)
        running = self.inflight[server]
        pending = ([] if running is None else [running]) + list(self.queues[server])
        for request_id in pending:
            request = self.requests[request_id]
            request["status"] = protocol.TIMEOUT
            self.responses[request_id] = protocol.timeout_response(request, server, server_timeout)
        return pending

    def recovered(self, server: int) -> None:
        """`server` answers the monitor again: it may take work."""
        if server in self.dead:
            return
        self.unavailable.discard(server)
        if self.inflight[server] is None:
            self.idle.add(server)

    def replaced(self, servers: Iterable[int]) -> None:
        """These dead servers run again in new processes, idle."""
        for server in servers:
            self.dead.discard(server)
            self.unavailable.discard(server)
            self.inflight[server] = None
            self.cost[server] = {}
            self.idle.add(server)

    def die(self, server: int, reason: str) -> list[int]:
        """`server` died: what it ran, what was queued for it and what it left in timeout get
        a final failed response with `reason`; requests for any server stay queued for the
        others, and those sent ahead to it, which it never started, are queued again first
        (assign sends them on). Returns the ids that failed."""
        self.dead.add(server)
        self.unavailable.add(server)
        self.idle.discard(server)
        self.cost[server] = {}
        ahead = self.ahead[server]
        while ahead:
            request_id = ahead.pop()
            self.recalling.discard(request_id)
            self._unqueue(request_id, self.early.pop(request_id))
        running = self.inflight[server]
        self.early.pop(running, None)
        pending = [i for i, r in self.requests.items()
                   if r["status"] in (protocol.REQUEST_SENT, protocol.HOLDING_QUEUE, protocol.TIMEOUT)
                   and (r["server"] == server or i == running)]
        for request_id in pending:
            self.encoded.pop(request_id, None)
            if FORGOTTEN in self.requests[request_id]:  # nobody waits for it: no response to keep
                del self.requests[request_id]
                continue
            self._settle(request_id, protocol.dead_response(self.requests[request_id], server, reason))
        self.queues[server].clear()
        self.inflight[server] = None
        return pending

    def forget(self, ids: Iterable[int]) -> None:
        """Drop these records; a response still to come is dropped when it arrives."""
        for i in ids:
            if i in self.responses:
                del self.responses[i]
                self.requests.pop(i, None)
            elif i in self.requests:
                self.requests[i][FORGOTTEN] = True

    def pop_responses(self, ids: list[int]) -> list[dict]:
        """The responses of `ids` (all answered), with their records dropped."""
        responses = [self.responses.pop(i) for i in ids]
        for i in ids:
            self.requests.pop(i)
        return responses

    # -- questions ---------------------------------------------------------------------------
    def check_ids(self, ids: Iterable[int] | int) -> list[int]:
        """`ids` as a list; KeyError naming the unknown ones."""
        if isinstance(ids, int) and not isinstance(ids, bool):
            ids = [ids]
        ids = list(ids)
        unknown = [i for i in ids if i not in self.requests]
        if unknown:
            raise KeyError(f"unknown command request ids {unknown}; known ids are "
                           f"{protocol.format_ranks(list(self.requests)) or 'none'}")
        return ids

    def settled(self, request_id: int, timed_out: Callable[[int], bool]) -> bool:
        """Answered for good, or provisionally while its server is still in timeout
        (`timed_out(server)`): once the server answers again, the real response counts."""
        response = self.responses.get(request_id)
        if response is None:
            return False
        return response["status"] != protocol.TIMEOUT or timed_out(response["server"])

    def unanswered_ids(self) -> list[int]:
        """Requests without a response that someone still waits for (not forgotten)."""
        return [i for i, r in self.requests.items() if i not in self.responses and FORGOTTEN not in r]

    def unanswered(self, ids: Iterable[int]) -> dict[int, int | None]:
        """{id: assigned server (None while queued for any)} for those of `ids` without a response."""
        return {i: self.requests[i]["server"] for i in ids if i not in self.responses}

    def holding(self, ids: Iterable[int] | None = None) -> dict[int, list[int]]:
        """{server: the ids among `ids` (None: all) that it runs or was sent ahead} (what a
        stop must interrupt there: it may have started the next one before the client knows)."""
        wanted = None if ids is None else set(ids)
        found = {}
        for server, running in self.inflight.items():
            if running is not None:
                mine = [i for i in (running, *self.ahead[server]) if wanted is None or i in wanted]
                if mine:
                    found[server] = mine
        return found

    def queued(self, ids: Iterable[int]) -> dict[int, int | None]:
        """{id: its server (None: any)} for those of `ids` not sent yet."""
        return {i: self.requests[i]["server"] for i in ids if i in self.encoded}

    def running(self, server: int) -> dict | None:
        """The record of the request `server` runs now, if any."""
        request_id = self.inflight[server]
        return self.requests.get(request_id) if request_id is not None else None

    def busy(self) -> int:
        """How many servers run a request now."""
        return len(self.inflight) - list(self.inflight.values()).count(None)

    def request_list(self) -> dict[int, dict]:
        """The guide's request list: command, mode, parameters, server, status by id."""
        return {i: {k: v for k, v in r.items() if k not in ("kind", "sent_at", CANCEL)}
                for i, r in self.requests.items() if FORGOTTEN not in r}
