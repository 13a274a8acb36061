"""AsyncResult: the handle of requests in flight, as ipyparallel's views return it.

Each task is one request of MPICommandClient. Its response's `ret` gives the task's items
(`items`: a view's call returns the list of its calls' results, a command its value), and
the result is the tasks' items in order: a list, one value (`single`), or what `finish`
makes of the list (a gather joins arrays). Failures come back as RemoteError
(mpi_kernel.errors), merged by identical traceback as %%px merges errors; the other
tasks' results stay available through `get(return_exceptions=True)`.

As ipyparallel's: `len(ar)`, iteration in order as results arrive, `ar[i]`, `ar["engine_id"]`
and the metadata as attributes (`ar.engine_id`, `ar.stdout`), `display_outputs(groupby)`.
"""
from __future__ import annotations

import datetime
import sys
import time
import weakref
from typing import Any, Callable, Iterator

from ..errors import Failure, RemoteError

Items = Callable[[Any], list]  # a task's `ret` -> the values it contributes, in order
Finish = Callable[[list[Any]], Any]  # all the tasks' values, in order -> the result
GROUPS = ("type", "engine", "order")  # display_outputs' groupby, as ipyparallel's


def one_item(ret: Any) -> list:
    return [ret]


def _when(timestamp: float | None) -> datetime.datetime | None:
    return datetime.datetime.fromtimestamp(timestamp) if timestamp else None


class AsyncResult:
    """Requests in flight: `get`, `wait`, `ready`, `successful`, `progress`, `elapsed`."""

    def __init__(self, client: Any, ids: list[int], items: Items = one_item, label: str = "tasks",
                 tasks: list[int] | None = None, cleanup: Callable[[], None] | None = None,
                 keep_records: bool = False, ordered: bool = True, single: bool = False,
                 finish: Finish | None = None, sizes: list[int] | None = None) -> None:
        self._client = client
        self.msg_ids = ids
        self._items, self._single, self._finish = items, single, finish
        self._sizes = sizes  # items per task, for len() (a map chunk holds several)
        self._label = label
        self._task_of = dict(zip(ids, tasks or range(len(ids))))  # request id -> its task index
        self._cleanup = cleanup
        self._keep_records = keep_records  # another reader needs them (%pxresult)
        self._ordered = ordered  # False: get() gives the tasks' values in the order they ended
        self._responses: dict[int, dict] = {}
        self._submitted = time.monotonic()
        self._done_at: float | None = None if ids else self._submitted  # a map of nothing is done
        if client is not None and not keep_records:
            # A result dropped before it collected everything (Stop during get(), then `ar`
            # reassigned) would leave its records in the client for the life of the job.
            weakref.finalize(self, client.forget, ids)

    @classmethod
    def done(cls, responses: list[dict], items: Items = one_item, label: str = "tasks") -> "AsyncResult":
        """The result of requests already answered (a %%px cell's, stored by --out)."""
        result = cls(None, [r["id"] for r in responses], items, label)
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
        failures = [self._failure(i) for i in self.msg_ids if not self._responses[i]["successful"]]
        if failures and not return_exceptions:
            raise RemoteError(failures) from None
        order = self.msg_ids
        if not self._ordered:
            order = sorted(order, key=lambda i: self._responses[i]["command_stop_time"] or 0.0)
        values = [value for i in order for value in self._values_of(i)]
        if self._finish is not None:
            return self._finish(values)
        return values[0] if self._single else values

    def _failure(self, request_id: int) -> Failure:
        response = self._responses[request_id]
        return Failure(self._task_of[request_id], response["server"], response["traceback"] or "")

    def _values_of(self, request_id: int) -> list:
        """A task's items, or its error once (a failed map chunk stands for all its items)."""
        response = self._responses[request_id]
        if response["successful"]:
            return self._items(response["ret"])
        return [RemoteError([self._failure(request_id)])]

    def pending_ids(self) -> list[int]:
        """The request ids without a response yet."""
        return [i for i in self.msg_ids if i not in self._responses]

    def get_dict(self, timeout: float | None = None) -> dict[int, Any]:
        """{rank: value}, for requests that ran one per server (a direct view, a %%px cell)."""
        self.get(timeout)  # raises what failed
        return {self._responses[i]["server"]: self._values_of(i)[0] for i in self.msg_ids}

    # -- ipyparallel's sugar -------------------------------------------------------------
    def __len__(self) -> int:
        """How many results: one per task, or per item of a map's chunks."""
        return sum(self._sizes) if self._sizes is not None else len(self.msg_ids)

    def __iter__(self) -> Iterator[Any]:
        """The results in order, each as soon as it and those before it have come (with
        ordered=False, in the order they came); a failed task raises when reached."""
        if self._single:
            raise TypeError("an AsyncResult of a single result is not iterable: use get()")
        try:
            for request_id in self._arrivals():
                if not self._responses[request_id]["successful"]:
                    raise RemoteError([self._failure(request_id)])
                yield from self._items(self._responses[request_id]["ret"])
        except KeyboardInterrupt:
            self.abort()
            raise

    def _arrivals(self) -> Iterator[int]:
        """The request ids, each once its response is here: in order, or as they came."""
        if self._ordered:
            for request_id in self.msg_ids:
                while request_id not in self._responses:
                    self._client.wait([request_id], timeout=0.1)
                    self._collect()
                yield request_id
            return
        seen: set[int] = set()
        while len(seen) < len(self.msg_ids):
            self._collect()
            new = sorted((i for i in self._responses if i not in seen),
                         key=lambda i: self._responses[i]["command_stop_time"] or 0.0)
            if not new:
                self._client.wait(self.pending_ids(), timeout=0.1)
            for request_id in new:
                seen.add(request_id)
                yield request_id

    def __getitem__(self, key: int | slice | str) -> Any:
        """ar[i], ar[i:j]: results (waiting for them); ar["engine_id"]: a metadata key."""
        if isinstance(key, str):
            values = [entry[key] for entry in self.metadata]  # KeyError for an unknown key
            return values[0] if self._single else values
        if isinstance(key, (int, slice)):
            result = self.get()
            return ([result] if self._single else result)[key]
        raise TypeError(f"AsyncResult indices are int, slice or str, not {type(key).__name__}")

    def __getattr__(self, name: str) -> Any:
        """The metadata as attributes (ar.engine_id, ar.started, ar.status), as ipyparallel's."""
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"'AsyncResult' object has no attribute {name!r}") from None

    @property
    def metadata(self) -> list[dict[str, Any]]:
        """Per task: msg_id, engine_id (its server), started, completed, status ('ok',
        'error', or None while pending), stdout, stderr. Filled in as responses come."""
        if self._client is not None and self._done_at is None:
            self._collect()
        out = []
        for request_id in self.msg_ids:
            response = self._responses.get(request_id, {})
            status = None if not response else "ok" if response["successful"] else "error"
            out.append({"msg_id": request_id, "engine_id": response.get("server"),
                        "started": _when(response.get("command_start_time")),
                        "completed": _when(response.get("command_stop_time")), "status": status,
                        "stdout": response.get("stdout", ""), "stderr": response.get("stderr", "")})
        return out

    def display_outputs(self, groupby: str = "type") -> None:
        """Print what the tasks wrote, each line labelled [stdout:RANK] as %%px labels it.
        groupby 'type': all stdout, then all stderr; 'engine' or 'order': each task's
        stdout and stderr together, in task order. Empty streams print nothing."""
        if groupby not in GROUPS:
            raise ValueError(f"groupby must be one of {', '.join(map(repr, GROUPS))}, not {groupby!r}")
        self.wait()
        responses = [self._responses[i] for i in self.msg_ids]
        if groupby == "type":
            pieces = [(r, name) for name in ("stdout", "stderr") for r in responses]
        else:
            pieces = [(r, name) for r in responses for name in ("stdout", "stderr")]
        for response, name in pieces:
            stream = sys.stdout if name == "stdout" else sys.stderr
            for line in response[name].splitlines():
                stream.write(f"[{name}:{response['server']}] {line}\n")

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
