"""AsyncResult: the handle of requests in flight, as ipyparallel's views return it.

Each task is one request of MPICommandClient; its value is the response's `ret`, turned
into the task's result by a `finish` function (a map chunk gives a list). Failures come
back as RemoteError (mpi_kernel.errors), merged by identical traceback as %%px merges errors; the other
tasks' results stay available through `get(return_exceptions=True)`.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterator

from ..errors import Failure, RemoteError

Finish = Callable[[list[Any]], Any]  # the tasks' values, in order -> the result


class AsyncResult:
    """Requests in flight: `get`, `wait`, `ready`, `successful`, `progress`, `elapsed`."""

    def __init__(self, client: Any, ids: list[int], finish: Finish, label: str = "tasks",
                 tasks: list[int] | None = None, cleanup: Callable[[], None] | None = None,
                 keep_records: bool = False, ordered: bool = True) -> None:
        self._client = client
        self.msg_ids = ids
        self._finish = finish
        self._label = label
        self._tasks = tasks or list(range(len(ids)))  # the task index of each request
        self._cleanup = cleanup
        self._keep_records = keep_records  # another reader needs them (%pxresult)
        self._ordered = ordered  # False: get() gives the tasks' values in the order they ended
        self._responses: dict[int, dict] = {}
        self._submitted = time.monotonic()
        self._done_at: float | None = None if ids else self._submitted  # a map of nothing is done

    @classmethod
    def done(cls, responses: list[dict], finish: Finish, label: str = "tasks") -> "AsyncResult":
        """The result of requests already answered (a %%px cell's, stored by --out)."""
        result = cls(None, [r["id"] for r in responses], finish, label)
        result._responses = {r["id"]: r for r in responses}
        result._done_at = result._submitted
        return result

    # -- state -------------------------------------------------------------------------
    def _collect(self) -> None:
        """Take the responses that have come (and drop the client's records of them)."""
        pending = self.pending_ids()
        if not pending:
            return
        # A server in timeout counts as an answer (its synthetic response), as in the guide.
        got = self._client.get_command_response(pending, False, False)
        for response in got:
            self._responses[response["id"]] = response
        if not self._keep_records:
            self._client.forget([r["id"] for r in got])
        if len(self._responses) == len(self.msg_ids) and self._done_at is None:
            self._done_at = time.monotonic()
            if self._cleanup is not None:
                self._cleanup()

    def ready(self) -> bool:
        if self._done_at is None:
            self._collect()
        return self._done_at is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` s (None: until done); True if every task has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _ProgressBar(len(self.msg_ids), self._label)
        try:
            while not self.ready():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._client.wait(self.pending_ids(), timeout=0.1 if left is None else min(0.1, left))
                bar.update(self.progress, time.monotonic() - self._submitted)
        except KeyboardInterrupt:
            self.abort()
            raise
        finally:
            bar.close(self.progress)
        return True

    def abort(self) -> None:
        """Cancel the tasks still queued (each ends with a 'cancelled' error) and interrupt
        the servers running the others."""
        self._client.stop(self.pending_ids())

    def successful(self) -> bool:
        """True once every task has ended without an error."""
        return self.ready() and all(r["successful"] for r in self._responses.values())

    @property
    def progress(self) -> int:
        """How many tasks have ended."""
        return len(self._responses)

    @property
    def elapsed(self) -> float:
        """Seconds since submission (until the last task ended)."""
        return (self._done_at or time.monotonic()) - self._submitted

    # -- results -----------------------------------------------------------------------
    def get(self, timeout: float | None = None, return_exceptions: bool = False) -> Any:
        """The result; raises TimeoutError if not done within `timeout`, RemoteError if
        tasks failed (with `return_exceptions`, failed tasks hold their error instead)."""
        if not self.wait(timeout):
            raise TimeoutError(f"{len(self.msg_ids) - self.progress} of {len(self.msg_ids)} "
                               f"{self._label} not done within {timeout:g} s")
        values, failures = [], []
        for request_id, task in zip(self.msg_ids, self._tasks):
            response = self._responses[request_id]
            if response["successful"]:
                values.append(response["ret"])
            else:
                failure = Failure(task, response["server"], response["traceback"] or "")
                failures.append(failure)
                values.append(RemoteError([failure]))
        if failures and not return_exceptions:
            raise RemoteError(failures) from None
        if not self._ordered:
            ends = [self._responses[i]["command_stop_time"] or 0.0 for i in self.msg_ids]
            values = [values[i] for i in sorted(range(len(values)), key=ends.__getitem__)]
        return self._finish(values)

    def pending_ids(self) -> list[int]:
        """The request ids without a response yet."""
        return [i for i in self.msg_ids if i not in self._responses]

    def get_dict(self, timeout: float | None = None) -> dict[int, Any]:
        """{rank: value}, for requests that ran one per server (a direct view, a %%px cell)."""
        values = self.get(timeout)
        values = values if isinstance(values, list) else [values]
        return {self._responses[i]["server"]: v for i, v in zip(self.msg_ids, values)}

    def __iter__(self) -> Iterator[Any]:
        result = self.get()
        yield from (result if isinstance(result, list) else [result])

    def display_outputs(self) -> None:
        """Print what each task wrote, labelled with its task and rank."""
        self.wait()
        for request_id, task in zip(self.msg_ids, self._tasks):
            response = self._responses[request_id]
            for name in ("stdout", "stderr"):
                if response[name]:
                    stream = sys.stdout if name == "stdout" else sys.stderr
                    for line in response[name].splitlines():
                        stream.write(f"[{name}:{task}:{response['server']}] {line}\n")

    def __repr__(self) -> str:
        state = "done" if self.ready() else f"{self.progress}/{len(self.msg_ids)} done"
        return f"<AsyncResult of {len(self.msg_ids)} {self._label}: {state}>"


class _ProgressBar:
    """An ipywidgets bar in a notebook, shown once a wait has lasted a second."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label = total, label
        self._bar: Any = None
        self._enabled = total > 1 and _in_kernel()

    def update(self, done: int, elapsed: float) -> None:
        if not self._enabled or elapsed < 1.0:
            return
        if self._bar is None:
            try:
                import ipywidgets
                from IPython.display import display
            except ImportError:
                self._enabled = False
                return
            self._bar = ipywidgets.IntProgress(min=0, max=self.total, description=self.label)
            display(self._bar)
        self._bar.value = done

    def close(self, done: int) -> None:
        if self._bar is not None:
            self._bar.value = done
            self._bar.bar_style = "success" if done == self.total else "warning"


def _in_kernel() -> bool:
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return bool(shell) and getattr(shell, "kernel", None) is not None
