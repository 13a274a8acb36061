"""On a server: which requests sent ahead its main thread runs, and which its control thread
gave back to the client unstarted (a cancel, or a recall so that a free server runs them).

A request sent ahead waits in MPI's queue until the main thread is free. The two threads
race for it: the main thread claims it when it takes it (start), the control thread when the
client asks for it back (give_back). Each claim is one dict.setdefault, atomic under the
GIL, so exactly one thread wins and a request is either run or given back, never both.

The control thread tells the client what it gave back (RELEASED) while holding `_telling`;
the main thread, finding a request given back, waits for that lock before it goes on, so
the client hears of the release before any later reply from this server (MPI keeps one
sender's messages in order once two threads' sends are ordered by a lock).
"""
from __future__ import annotations

import threading
from typing import Callable

RUN = "run"
KEEP = 1024  # claims kept for requests that had already ended when given back (never taken again)


class Claims:
    def __init__(self, tell: Callable[[list[int]], None]) -> None:
        self._tell = tell  # sends RELEASED with the ids given back
        self._claims: dict[int, object] = {}
        self._telling = threading.Lock()

    def start(self, request_id: int) -> bool:
        """Main thread, on taking a request: True to run it, False if it was given back."""
        if self._claims.setdefault(request_id, RUN) is RUN:
            return True
        with self._telling:  # the client hears of the release first
            del self._claims[request_id]
        return False

    def done(self, request_id: int) -> None:
        """Main thread, once the request's reply is sent."""
        self._claims.pop(request_id, None)

    def give_back(self, request_ids: list[int]) -> list[int]:
        """Control thread: claim those of `request_ids` the main thread has not taken and tell
        the client (one message). Returns them."""
        mark = object()
        claims = self._claims
        with self._telling:
            given = [i for i in request_ids if claims.setdefault(i, mark) is mark]
            if given:
                self._tell(given)
            if len(claims) > KEEP:  # ids given back after they had ended: drop the oldest half
                for request_id in [i for i, c in claims.items() if c is not RUN][:KEEP // 2]:
                    del claims[request_id]
        return given
