"""The one policy for stopping requests, used by a %%px cell's Stop and --timeout,
AsyncResult.abort, the executor's cancel and the kernel's interrupt button.

Work still queued is cancelled first: it would otherwise start as soon as its server is
free, after the user asked for everything to stop. Then the servers running the others
are interrupted (KeyboardInterrupt in their main thread); their queued work for others
is kept. Each request of a server runs alone, so an interrupt sent for a request never
reaches another (the server checks the ids); cancelled requests that were sent ahead to a
busy server are taken back from it, and one it has just started is interrupted too.
"""
from __future__ import annotations

from typing import Any, Iterable


class Stop:
    """Stop `ids` (None: every request). `cancel()` then `interrupt()`; a caller that must
    look at the running ranks before they are interrupted (--timeout reads their stacks)
    calls `running()` between the two."""

    def __init__(self, client: Any, ids: Iterable[int] | None = None) -> None:
        self.client = client
        self.ids = None if ids is None else list(ids)
        self.cancelled: list[int] = []    # request ids that will never run
        self.interrupted: list[int] = []  # servers that were sent an interrupt

    def cancel(self) -> list[int]:
        self.cancelled = self.client.cancel_queued(self.ids)
        return self.cancelled

    def running(self) -> list[int]:
        """The servers running one of the requests now."""
        status = self.client.get_server_status()
        if self.ids is None:
            return sorted(r for r, s in status.items() if s["busy"])
        ids = set(self.ids)  # (not every unanswered one with a server: it may be sent ahead)
        return sorted(r for r, s in status.items() if s["command_id"] in ids)

    def interrupt(self) -> list[int]:
        self.interrupted = self.client.interrupt(ids=self.ids)
        return self.interrupted
