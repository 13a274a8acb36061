"""The monitor, client side: when to ping each server, and which have timed out (the
servers' control thread, control.py, answers the pings).

The timeout decision is a pure function of (when the outstanding ping was sent,
now, the limit), so it is unit-tested without MPI. Only one ping per server is
outstanding at a time, and the client drains every waiting answer before it
decides, so a client that was itself stalled (heavy work holding the GIL) never
marks a server that did answer in time.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from . import protocol


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
    timed_out: bool = False             # no answer to a ping for server_timeout s
    ping_sent_at: float | None = None   # monotonic time of the outstanding ping
    last_ping_at: float = 0.0
    last_pong_at: float | None = None   # monotonic time of the last answer
    dead: str | None = None             # why its process ended; it is also timed_out for good

    @property
    def state(self) -> str:
        if self.dead is not None:
            return protocol.DEAD
        if self.timed_out:
            return protocol.TIMEOUT
        return protocol.BUSY if self.busy else protocol.IDLE

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("rank", "host", "pid", "busy", "command", "command_id",
                                           "command_start_time")}
        d["timeout"], d["state"], d["dead"] = self.timed_out, self.state, self.dead  # timeout: the guide's key
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
                if s.ping_sent_at is None and s.dead is None and now - s.last_ping_at >= self.ping_interval]

    def pinged(self, rank: int, now: float) -> None:
        status = self.table[rank]
        status.ping_sent_at = status.last_ping_at = now

    def answered(self, rank: int, info: dict, now: float) -> bool:
        """Record a pong or hello; return True if the server was in timeout (recovered)."""
        status = self.table[rank]
        if status.dead is not None:  # a message it sent before it died: it stays dead
            return False
        for key in ("host", "pid", "busy", "command", "command_id", "command_start_time"):
            if key in info:
                setattr(status, key, info[key])
        status.ping_sent_at = None
        status.last_pong_at = now
        recovered, status.timed_out = status.timed_out, False
        return recovered

    def died(self, rank: int, reason: str) -> None:
        """The server's process ended: it is timed out for good, and never pinged again."""
        status = self.table[rank]
        status.dead, status.timed_out, status.ping_sent_at = reason, True, None
        status.busy, status.command, status.command_id, status.command_start_time = False, None, None, None

    def replaced(self, ranks: list[int]) -> None:
        """`ranks` run again in new processes; the pings still outstanding are dropped (their
        answers went to a communicator that is no longer read)."""
        for rank in ranks:
            self.table[rank] = ServerStatus(rank)
        for status in self.table.values():
            status.ping_sent_at = None

    def dead(self) -> dict[int, str]:
        """{rank: why it ended} of the servers that died."""
        return {s.rank: s.dead for s in self.table.values() if s.dead is not None}

    def expired(self, now: float) -> list[int]:
        """Mark and return the servers that have just timed out."""
        newly = []
        for status in self.table.values():
            if not status.timed_out and is_timed_out(status.ping_sent_at, now, self.server_timeout):
                status.timed_out = True
                newly.append(status.rank)
        return newly
