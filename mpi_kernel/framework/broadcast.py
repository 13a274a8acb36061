"""One value to many servers, leaving the client once: an MPI broadcast.

Why a broadcast, and why this shape:

- Per-server sends push a value through the client's link once per server: 100 MB to 1,000
  servers is 100 GB out of one NIC. MPI_Bcast sends it once and spreads it with the MPI
  library's own algorithms (a binomial tree for small values, scatter + allgather for large
  ones, topology-aware where the library knows the network), which no tree of our own
  would match.
- A push must still keep each server's FIFO order and never wait for a busy server. So the
  broadcast is split from the push: the client announces it (Tag.BCAST) and starts an
  MPI_Ibcast at once; each server joins the broadcast from whichever of its threads is free
  (the main thread when idle, else the monitor thread, which runs beside user code) and
  stages the value. The push request itself is small and queued like any other: when the
  server reaches it, it takes the staged value. A busy server thus receives its copy while
  it works and applies it when it is free.
- All servers form one communicator made at start-up (a Dup of COMM_WORLD); a subset gets
  a communicator made for that one broadcast (MPI_Comm_create_group, collective over its
  members only) and freed after it.
- Collectives on a communicator must be called in the same order by every member: the
  client announces them in order, MPI keeps messages from one sender in order, and a lock
  lets only one thread of a server take an announcement and run its broadcast.
- A server whose main thread holds the GIL (C code that never releases it) cannot join
  until it lets go, so the client leaves out servers the monitor has not heard from
  lately; they get a direct send instead.
- Only servers on other hosts than the client's take part (mode "auto"). On one host the
  "link" is memory, and MPICH's direct sends of a large buffer beat its broadcast by 2-9x
  (measured here: 100 MB to 3 servers 73 ms against 160 ms; to 15 servers 0.3 s against
  0.9-1.6 s), so servers beside the client get the value directly.
"""
from __future__ import annotations

import itertools
import pickle
import threading
from typing import Any

from . import transport
from .protocol import Tag

MPI = transport.MPI
# A broadcast costs about two transfers of the value over each link plus a millisecond of
# set-up (servers notice the announcement from their wait loops); sending to each of N
# servers puts N copies through the client's link. So a broadcast is worth it once the
# N - 2 copies it saves come to this many bytes.
SAVED_BYTES = 4 << 20
MODES = ("auto", "always", "never")


def candidates(mode: str, servers: list[int], hosts: dict[int, str], client_host: str) -> list[int]:
    """The servers a push could reach by broadcast, whatever its size. "auto": those on other
    hosts than the client; "always": all of them (to test and measure the broadcast on one
    host); "never": none."""
    if mode == "never":
        return []
    if mode == "always":
        return servers
    return [s for s in servers if hosts.get(s, client_host) != client_host]


def worthwhile(mode: str, group: list[int], nbytes: int) -> bool:
    """Whether broadcasting `nbytes` to `group` beats sending to each ("always": whenever
    there are two to send to)."""
    return len(group) >= 2 and (mode == "always" or (len(group) - 2) * nbytes >= SAVED_BYTES)


def _communicator(bcast: MPI.Comm, group: list[int]) -> tuple[MPI.Comm, bool]:
    """The communicator of `group` (world ranks, the client last): the start-up one for the
    whole job, else a new one (True: free it after use)."""
    if len(group) == bcast.Get_size():
        return bcast, False
    world_group = bcast.Get_group()
    members = world_group.Incl(group)
    comm = bcast.Create_group(members, Tag.BCAST)
    members.Free()
    world_group.Free()
    return comm, True


class Broadcaster:
    """The client's side: announce a broadcast to its servers and start it."""

    def __init__(self, framework: MPI.Comm, bcast: MPI.Comm, client_rank: int) -> None:
        self._framework, self._bcast, self._client = framework, bcast, client_rank
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # broadcasts start in one order on every member

    def start(self, servers: list[int], pickled: tuple[bytes, list[memoryview]]
              ) -> tuple[int, list[MPI.Request]]:
        """Send a value (transport.pickle_parts) to `servers`: (the broadcast's id, the
        requests to complete). The caller drives the requests to completion
        (MPI.Request.Testall) and keeps them, and so the value's buffers, alive until then."""
        data, buffers = pickled
        parts = [memoryview(data), *buffers]
        group = sorted(servers) + [self._client]
        with self._lock:
            bid = next(self._ids)
            header = (bid, group, [part.nbytes for part in parts])
            for server in servers:
                transport.send(self._framework, header, server, Tag.BCAST)
            comm, temporary = _communicator(self._bcast, group)
            root = len(group) - 1
            requests = [comm.Ibcast([part, MPI.BYTE], root) for part in parts]
        if temporary:
            comm.Free()  # MPI frees it once the pending broadcasts are done
        return bid, requests


class Receiver:
    """A server's side: join announced broadcasts and keep their values until taken."""

    def __init__(self, framework: MPI.Comm, bcast: MPI.Comm, client_rank: int) -> None:
        self._framework, self._bcast, self._client = framework, bcast, client_rank
        self._joining = threading.Lock()
        self._staged: dict[int, tuple[Any, list[Any]]] = {}
        self._abandoned: set[int] = set()
        self._arrived = threading.Condition()
        self._status = MPI.Status()
        self.joined = 0  # broadcasts this server has received

    def poll(self) -> bool:
        """Join the next announced broadcast, if there is one and no other thread of this
        server is joining one now. True if one was received."""
        if not self._joining.acquire(blocking=False):
            return False
        try:
            try:
                msg = self._framework.improbe(self._client, Tag.BCAST, self._status)
            except MPI.Exception as exc:  # a rank died (Open MPI's ULFM)
                transport.acknowledge(self._framework, exc)
                return False
            if msg is None:
                return False
            bid, group, sizes = msg.recv()
            comm, temporary = _communicator(self._bcast, group)
            parts = [transport.empty_buffer(n) for n in sizes]
            # Nonblocking, as the client's side is (a blocking broadcast would not match it);
            # Waitall releases the GIL, so the main thread runs on meanwhile.
            MPI.Request.Waitall([comm.Ibcast([part, MPI.BYTE], len(group) - 1) for part in parts])
            if temporary:
                comm.Free()
        finally:
            self._joining.release()
        with self._arrived:
            self.joined += 1
            if bid in self._abandoned:
                self._abandoned.discard(bid)
            else:
                self._staged[bid] = (parts[0], parts[1:])
            self._arrived.notify_all()
        return True

    def take(self, bid: int) -> Any:
        """The value of broadcast `bid`, unpickled; waits until it has arrived (joining it
        from this thread if nobody has). An interrupt while waiting gives up the value."""
        try:
            while True:
                with self._arrived:
                    if bid in self._staged:
                        data, buffers = self._staged.pop(bid)
                        break
                if not self.poll():
                    with self._arrived:
                        self._arrived.wait(0.001)
        except BaseException:
            with self._arrived:
                if self._staged.pop(bid, None) is None:
                    self._abandoned.add(bid)
            raise
        return pickle.loads(data, buffers=buffers)


def healthy(servers: list[int], table: dict, now: float, late: float = 0.5) -> list[int]:
    """The servers that can join a broadcast now: not in timeout, and without a ping
    unanswered for more than `late` s (a main thread holding the GIL starves its monitor)."""
    return [s for s in servers if not table[s].timed_out
            and (table[s].ping_sent_at is None or now - table[s].ping_sent_at <= late)]

