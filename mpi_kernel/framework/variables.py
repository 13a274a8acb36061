"""The variables part of MPICommandClient: push, pull, scatter and gather (and the waits
of the requests they make, which the restart uses too).

A mixin: MPICommandClient inherits it, so these stay the client's methods; they use its
lock, monitor, pump, book, broadcaster and request helpers (`_request`, `_submit`).
"""
from __future__ import annotations

import time
from typing import Any

from ..errors import ServerError
from . import broadcast, partition, protocol, transport
from .pump import unpicklable


class Variables:
    # push, pull and scatter wait, and raise ServerError on a failure; with block=False they
    # return the request ids at once (get_command_response, or an AsyncResult, reads them).
    def push(self, variables: dict, targets: Any = None, block: bool = True) -> list[int] | None:
        """Set variables in the servers' namespaces (default: all servers); they persist."""
        if not isinstance(variables, dict):
            raise TypeError(f"push() takes a dict of names to values, not {type(variables).__name__}")
        if not variables:
            return None if block else []
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
                raise unpicklable(label, exc) from exc
            if broadcast.worthwhile(self.broadcast, group, len(parts[0]) + sum(b.nbytes for b in parts[1])):
                ids = self._push_by_broadcast(label, variables, parts, group, ranks)
                return self._ids_or_wait(ids, label, block)
        if not block:  # per server: quicker
            return self._submit(protocol.PUSH, label, protocol.PUSH, None, variables, ranks)
        self._collected(self._request(protocol.PUSH, label, protocol.PUSH, None, variables, ranks), label)
        return None

    def _push_by_broadcast(self, label: str, variables: dict, parts: tuple[bytes, list],
                           group: list[int], ranks: list[int]) -> list[int]:
        """Broadcast the value to `group`, then queue a push per target that takes it from
        there (the others get the value itself); the request ids (broadcast.py explains)."""
        with transport.DeferredSigint():  # the requests must be kept, whatever comes
            bid, requests = self._broadcasts.start(group, parts)
            with self._lock:
                self._pump.sends.setdefault(None, []).extend(requests)
        items = [(rank, protocol.Staged(bid) if rank in group else variables) for rank in ranks]
        return self._pump.queue(protocol.PUSH, label, protocol.PUSH, None, items)

    def pull(self, names: str | list[str], targets: Any = None, block: bool = True) -> dict[int, Any] | list[int]:
        """Fetch variables from servers: {rank: value} (a list of values if `names` is a list).
        Each response's `ret` is the list of the values."""
        wanted = protocol.check_names(names, "pull")
        label = f"<pull {', '.join(wanted)}>"
        targets = self._servers if targets is None else targets
        if not block:
            return self._submit(protocol.PULL, label, protocol.PULL, None, wanted, targets)
        values = self._collected(self._request(protocol.PULL, label, protocol.PULL, None, wanted, targets), label)
        return {rank: v[0] if isinstance(names, str) else v for rank, v in values.items()}

    def scatter(self, name: str, sequence: Any, targets: Any = None, block: bool = True) -> list[int] | None:
        """Split `sequence` into contiguous parts, one per target server in rank order (sizes
        as numpy.array_split gives), and set `name` to its part on each (default: all servers)."""
        protocol.check_names(name, "scatter")
        ranks = sorted(set(protocol.check_targets(targets, self._servers) or self._servers))
        label = f"<scatter {name}>"
        ids = [i for rank, part in zip(ranks, partition.split(sequence, len(ranks)))
               for i in self._submit(protocol.PUSH, label, protocol.PUSH, None, {name: part}, [rank])]
        return self._ids_or_wait(ids, label, block)

    def gather(self, name: str, targets: Any = None) -> Any:
        """`name` from the target servers, joined in rank order: arrays concatenated, lists
        joined (the inverse of scatter)."""
        values = self.pull(name, targets)
        return partition.join([values[rank] for rank in sorted(values)])

    def _ids_or_wait(self, ids: list[int], label: str, block: bool) -> list[int] | None:
        """A push's or scatter's ids at once, or None once they are done."""
        if not block:
            return ids
        self._collect(ids, label)
        return None

    def _collect(self, ids: list[int], label: str) -> dict[int, Any]:
        """Wait for internal requests; drop their records; {server: ret}, or raise the first failure."""
        self._pump.wait_for(ids, None)
        return self._collected(ids, label)

    def _collected(self, ids: list[int], label: str) -> dict[int, Any]:
        """The answered internal requests `ids`, their records dropped: {server: ret}, or
        raise the first failure."""
        with self._lock:
            responses = self._book.pop_responses(ids)
        failed = [r for r in responses if not r["successful"]]
        if failed:
            raise ServerError(f"{label} failed on server {failed[0]['server']}:\n{failed[0]['traceback']}", failed)
        return {r["server"]: r["ret"] for r in responses}

