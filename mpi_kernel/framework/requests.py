"""The client's request book: every request's record, the queues, what each server
runs, and the responses (the guide's request and response lists, 5.4).

Pure Python: no MPI, no threads, no clock of its own (times are passed in), so it is
unit-tested alone (tests/unit/test_requests.py). The pump (pump.py) calls it with the
client's lock held; nothing here locks.

A request is queued (HOLDING_QUEUE) for one server or for any, sent to a server that is
free (REQUEST_SENT), then answered (RESPONSE_RECEIVED) by its reply, by a cancel, by the
services' stop, or provisionally (TIMEOUT) while its server does not answer the monitor.
Each server runs at most one request at a time, in the order it was sent them.

Requests for any server (a task farm's) are also sent ahead to a busy server whose last
request was quick (AHEAD): it then finds its next one waiting instead of idling while the
client takes the answer and sends more. A request sent ahead that its server never started
goes back to the queue if the server dies, and is skipped by the server if cancelled.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Iterable

from . import protocol
from .protocol import as_reply

FORGOTTEN = "forgotten"  # the key of a record whose response is dropped when it comes
# How many requests a server may have in flight (the running one included) by how long its
# last one took: (under seconds, depth). The client's turn between an answer and the next
# send is 10-50 us here, so tasks under 100 us need several waiting; up to 5 ms one hides it.
# Longer tasks would gain under 1% and only unbalance the end of a map: one at a time.
AHEAD = ((100e-6, 4), (5e-3, 2))


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
        self.early: dict[int, Any] = {}  # the pickled message of each request sent ahead
        self.took: dict[int, float | None] = {s: None for s in servers}  # its last request's run time

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
        """Record a request sent to `server` at once (the fast path: it was free and nothing
        was queued): the record add and take_next would have left."""
        self.requests[request_id] = {"kind": kind, "id": request_id, "command": command, "mode": mode,
                                     "parameters": parameters, "server": server,
                                     "status": protocol.REQUEST_SENT, "sent_at": now}
        self.inflight[server] = request_id

    def take_next(self, server: int, now: float) -> tuple[int, Any] | None:
        """The next request for `server`: if it is free, from its own queue first, then any
        server's; if it is busy, one for any server to send ahead (AHEAD). It is recorded as
        sent; the caller sends the message."""
        inflight = self.inflight
        if inflight[server] is None:
            queue = self.queues[server] or self.any_queue
            if not queue:
                return None
        elif self.any_queue and not self.queues[server] and len(self.ahead[server]) + 1 < self.depth(server):
            queue = self.any_queue
        else:
            return None
        request_id = queue.popleft()
        request = self.requests[request_id]
        message = self.encoded.pop(request_id)
        if inflight[server] is None:
            inflight[server] = request_id
        else:
            self.ahead[server].append(request_id)
            self.early[request_id] = message
        request["server"], request["status"], request["sent_at"] = server, protocol.REQUEST_SENT, now
        return request_id, message

    def depth(self, server: int) -> int:
        """How many requests `server` may have in flight now (AHEAD)."""
        took = self.took[server]
        if took is not None:
            for under, depth in AHEAD:
                if took < under:
                    return depth
        return 1

    # -- out ---------------------------------------------------------------------------------
    def answer(self, server: int, message: tuple) -> dict | None:
        """Record a server's reply (a Reply as a plain tuple); its response, or None when
        the request was forgotten. The server is free again either way."""
        reply = as_reply(message)
        inflight = self.inflight
        # A reply without an id answers the request the server was running (an undecodable
        # result, a request the server could not unpickle): one runs at a time.
        request_id = inflight[server] if reply.request_id is None else reply.request_id
        if inflight[server] == request_id:  # the next one sent ahead runs now
            ahead = self.ahead[server]
            inflight[server] = following = ahead.popleft() if ahead else None
            if following is not None:
                del self.early[following]
                if following in self.requests and reply.stop is not None:
                    self.requests[following]["sent_at"] = reply.stop  # it started then
        if reply.start is not None and reply.stop is not None:
            self.took[server] = reply.stop - reply.start
        request = self.requests.get(request_id)
        if request is None or FORGOTTEN in request:
            self.requests.pop(request_id, None)
            return None
        response = protocol.response_from_reply(request, server, reply)
        request["status"] = protocol.RESPONSE_RECEIVED
        self.responses[request_id] = response
        return response

    def _settle(self, request_id: int, response: dict) -> None:
        self.responses[request_id] = response
        self.requests[request_id]["status"] = protocol.RESPONSE_RECEIVED

    def cancel_queued(self, ids: Iterable[int] | None = None) -> list[int]:
        """Cancel the queued requests among `ids` (None: all): each gets a response saying
        it never ran. Returns their ids."""
        queued = list(self.encoded) if ids is None else [i for i in ids if i in self.encoded]
        for request_id in queued:
            request = self.requests[request_id]
            del self.encoded[request_id]
            (self.any_queue if request["server"] is None else self.queues[request["server"]]).remove(request_id)
            self._settle(request_id, protocol.cancelled_response(request))
        return queued

    def stop_all(self) -> None:
        """The services stopped: every request still unanswered gets a response saying so."""
        for request_id in self.unanswered_ids():
            self._settle(request_id, protocol.stopped_response(self.requests[request_id]))

    def time_out(self, server: int, server_timeout: float) -> list[int]:
        """`server` stopped answering the monitor: its pending requests (sent, or queued for
        it) get a provisional timeout response until the real one comes. Returns their ids."""
        running = self.inflight[server]
        pending = [i for i, r in self.requests.items()
                   if r["status"] in (protocol.REQUEST_SENT, protocol.HOLDING_QUEUE)
                   and (r["server"] == server or i == running)]
        for request_id in pending:
            request = self.requests[request_id]
            request["status"] = protocol.TIMEOUT
            self.responses[request_id] = protocol.timeout_response(request, server, server_timeout)
        return pending

    def die(self, server: int, reason: str) -> list[int]:
        """`server` died: what it ran, what was queued for it and what it left in timeout get
        a final failed response with `reason`; requests for any server stay queued for the
        others, and those sent ahead to it, which it never started, are queued again first.
        Returns the ids that failed."""
        ahead = self.ahead[server]
        while ahead:
            request_id = ahead.pop()
            request = self.requests[request_id]
            request["server"], request["status"] = None, protocol.HOLDING_QUEUE
            del request["sent_at"]
            self.responses.pop(request_id, None)  # a provisional timeout response: it runs elsewhere
            self.encoded[request_id] = self.early.pop(request_id)
            self.any_queue.appendleft(request_id)
        running = self.inflight[server]
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

    def sent_ahead(self, ids: Iterable[int] | None = None) -> dict[int, list[int]]:
        """{server: the ids among `ids` (None: all) sent ahead to it and not yet started}."""
        wanted = None if ids is None else set(ids)
        found = {server: [i for i in ahead if wanted is None or i in wanted] for server, ahead in self.ahead.items()}
        return {server: ahead for server, ahead in found.items() if ahead}

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
        return {i: {k: v for k, v in r.items() if k not in ("kind", "sent_at")}
                for i, r in self.requests.items() if FORGOTTEN not in r}
