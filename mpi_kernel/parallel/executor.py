"""`rc.executor()`: a concurrent.futures.Executor over the load-balanced view.

Code written for ProcessPoolExecutor or mpi4py's MPIPoolExecutor (`submit`, `map`,
`shutdown(cancel_futures=True)`) runs on the servers unchanged. A thread of the
executor's own completes the futures as responses come.
"""
from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from ..errors import RemoteError
from .asyncresult import AsyncResult


class ViewExecutor(cf.Executor):
    def __init__(self, view: Any) -> None:
        self._view = view
        self._pending: dict[cf.Future, AsyncResult] = {}
        self._lock = threading.Lock()
        self._shutdown = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._complete, name="mpi-kernel-executor", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            future: cf.Future = cf.Future()
            self._pending[future] = self._view.apply_async(fn, *args, **kwargs)
        self._wake.set()
        return future

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """Results in order, as they come; `chunksize` items travel as one task."""
        result = self._view.map_async(fn, *iterables, chunksize=chunksize)
        deadline = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator[Any]:
            try:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not result.wait(left):
                    raise cf.TimeoutError(f"map results not ready within {timeout:g} s")
                yield from result.get()
            finally:
                if not result.ready():
                    result.abort()
        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = dict(self._pending)
        if cancel_futures:
            for future, result in pending.items():
                result.abort()  # queued tasks end as "cancelled"; running ones are interrupted
                future.cancel()
        self._wake.set()
        if wait:
            self._thread.join()

    def _complete(self) -> None:
        """Set each future's result or exception once its task has ended."""
        while True:
            with self._lock:
                pending = dict(self._pending)
                if self._shutdown and not pending:
                    return
            if not pending:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            ids = [i for result in pending.values() for i in result.pending_ids()]
            self._view.client.wait(ids[:1], timeout=0.01)  # returns as soon as one arrives
            for future, result in pending.items():
                if not result.ready():
                    continue
                with self._lock:
                    del self._pending[future]
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(result.get())
                    except RemoteError as exc:
                        future.set_exception(exc)
