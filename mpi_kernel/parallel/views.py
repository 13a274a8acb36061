"""ipyparallel-style views over the command client: `rc = mpi_kernel.Client()`.

    rc = Client()
    rc.ids                                   # the servers
    dview = rc[:]                            # a direct view: every server (rc[0], rc[::2], rc[[0, 2]])
    dview.push({"a": 1}); dview["b"] = 2; dview["a"]
    dview.apply_sync(f, x)                   # f(x) on each server: [result per server]
    dview.map_sync(f, range(10))             # contiguous parts, one per server
    lview = rc.load_balanced_view()
    lview.map_sync(f, range(1000), chunksize=10)   # each chunk to whichever server is free
    with rc.executor() as ex: ex.submit(f, 1).result()

Names follow ipyparallel's where the concept is the same. A view's calls are the seed's
requests underneath (kind "calls"): the function is pickled once per call or map (by
value when the notebook defined it, as `push` sends it) and each task carries it with its
arguments (NumPy arrays out of band); a server keeps the functions it has unpickled. No
task waits for a busy server while another is free: load balancing is the seed's "first
available server" (requests.RequestBook.assign; quick tasks may wait behind a quick one, and
are taken back if it runs long). Ctrl-C while waiting cancels the queued tasks and
interrupts the running ones.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from ..framework import partition, transport
from ..errors import RemoteError
from .asyncresult import AsyncResult, one_item
from ..framework.client import MPICommandClient

__all__ = ["AsyncResult", "Client", "DirectView", "LoadBalancedView", "RemoteError"]


class Client:
    """The handle: `rc.ids`, `rc[targets]` (a direct view), `rc.load_balanced_view()`,
    `rc.executor()`. Works in the kernel and in a `python -m mpi_kernel` script (it starts
    the services if they are not started yet)."""

    def __init__(self, client: MPICommandClient | None = None) -> None:
        self.client = client or MPICommandClient()
        if self.client.state == "created":
            self.client.start_services()

    @property
    def ids(self) -> list[int]:
        return self.client.servers()

    def __getitem__(self, key: int | slice | list[int]) -> "DirectView":
        ids = self.ids
        if isinstance(key, slice):
            targets = ids[key]
        elif isinstance(key, (list, tuple)):
            targets = [ids[k] for k in key]
        else:
            targets = ids[key]
        return DirectView(self, targets)

    def direct_view(self, targets: Any = "all") -> "DirectView":
        return DirectView(self, self.ids if targets == "all" else targets)

    def load_balanced_view(self) -> "LoadBalancedView":
        return LoadBalancedView(self)

    def executor(self) -> Any:
        from .executor import ViewExecutor
        return ViewExecutor(self.load_balanced_view())

    def __repr__(self) -> str:
        return f"<mpi_kernel.Client: servers {self.ids}>"


class _View:
    block = False  # as in ipyparallel: apply and map return an AsyncResult unless block

    def __init__(self, rc: Client, targets: Any, block: bool | None = None) -> None:
        self.rc, self.targets = rc, targets
        if block is not None:
            self.block = block

    @property
    def client(self) -> MPICommandClient:
        return self.rc.client

    def _result(self, result: AsyncResult, block: bool | None) -> Any:
        return result.get() if (self.block if block is None else block) else result

    def _calls(self, f: Callable, label: str, tasks: list[tuple[int, list]], targets: list[Any],
               single: bool = False, ordered: bool = True) -> AsyncResult:
        """One request per task: `f`, pickled once, called on the task's argument tuples;
        each task's `ret` is the list of its calls' results."""
        blob = transport.dumps_function(f)
        name = f"<{getattr(f, '__name__', 'function')}>"
        ids = self.client.call(blob, [(target, calls) for (_, calls), target in zip(tasks, targets)], name)
        return AsyncResult(self.client, ids, _as_is, label, [t for t, _ in tasks], ordered=ordered,
                           single=single, sizes=[len(calls) for _, calls in tasks])

    # `f` is positional only, as in ipyparallel: a keyword argument named f goes to f.
    def apply(self, f: Callable, /, *args: Any, **kwargs: Any) -> Any:
        return self._result(self.apply_async(f, *args, **kwargs), None)

    def apply_sync(self, f: Callable, /, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(f, *args, **kwargs).get()

    def apply_async(self, f: Callable, /, *args: Any, **kwargs: Any) -> AsyncResult:
        raise NotImplementedError


class DirectView(_View):
    """Requests to definite servers: every call runs on each of `targets`.

    push, pull, scatter and gather block unless given block=False (then they return an
    AsyncResult, as ipyparallel's do), whatever the view's `block`: a notebook reads
    `dview["a"]` and expects the value."""

    def __init__(self, rc: Client, targets: int | list[int], block: bool | None = None) -> None:
        super().__init__(rc, targets, block)
        self._one = isinstance(targets, int)
        self._ranks = [targets] if self._one else list(targets)

    def execute(self, code: str, block: bool | None = None) -> AsyncResult:
        """Run `code` on each target; an AsyncResult (one result per target: an
        expression's value, else None), waited for when blocking (a failure raises)."""
        ids = self.client.push_command_request(code, False, self._ranks)
        result = AsyncResult(self.client, ids, one_item, "executes", self._ranks, single=self._one)
        if self.block if block is None else block:
            result.get()
        return result

    def apply_async(self, f: Callable, /, *args: Any, **kwargs: Any) -> AsyncResult:
        tasks = [(rank, [(args, kwargs)]) for rank in self._ranks]
        return self._calls(f, "calls", tasks, self._ranks, single=self._one)

    def map(self, f: Callable, /, *sequences: Iterable, block: bool | None = None) -> Any:
        return self._result(self.map_async(f, *sequences), block)

    def map_sync(self, f: Callable, /, *sequences: Iterable) -> list:
        return self.map_async(f, *sequences).get()

    def map_async(self, f: Callable, /, *sequences: Iterable) -> AsyncResult:
        """f over the zipped sequences, split into contiguous parts, one per target."""
        calls = [(args, {}) for args in zip(*sequences)]
        parts = partition.split(calls, len(self._ranks))
        tasks = list(zip(self._ranks, parts))
        return self._calls(f, "parts", tasks, self._ranks)

    def _moved(self, ids: list[int], label: str, ranks: list[int], items: Any = one_item,
               finish: Any = None) -> AsyncResult:
        """The AsyncResult of a push, pull, scatter or gather sent to `ranks`, in that order."""
        return AsyncResult(self.client, ids, items, label, ranks, single=self._one and finish is None,
                           finish=finish)

    def push(self, namespace: dict, block: bool | None = None) -> AsyncResult | None:
        if block is not False:
            self.client.push(namespace, self._ranks)
            return None
        return self._moved(self.client.push(namespace, self._ranks, block=False), "pushes", sorted(self._ranks))

    def pull(self, names: str | list[str], block: bool | None = None) -> Any:
        if block is not False:
            values = self.client.pull(names, self._ranks)
            values = [values[rank] for rank in self._ranks]
            return values[0] if self._one else values
        ids = self.client.pull(names, self._ranks, block=False)
        return self._moved(ids, "pulls", self._ranks, _first if isinstance(names, str) else one_item)

    def scatter(self, name: str, sequence: Any, block: bool | None = None) -> AsyncResult | None:
        if block is not False:
            self.client.scatter(name, sequence, self._ranks)
            return None
        return self._moved(self.client.scatter(name, sequence, self._ranks, block=False), "scatters",
                           sorted(self._ranks))

    def gather(self, name: str, block: bool | None = None) -> Any:
        if block is not False:
            return self.client.gather(name, self._ranks)
        # gather joins in rank order, as client.gather does
        ranks = sorted(self._ranks)
        return self._moved(self.client.pull(name, ranks, block=False), "gathers", ranks, _first, partition.join)

    def __setitem__(self, name: str, value: Any) -> None:
        self.push({name: value})

    def __getitem__(self, name: str) -> Any:
        return self.pull(name)

    def __repr__(self) -> str:
        return f"<DirectView {self.targets}>"


class LoadBalancedView(_View):
    """Each task goes to whichever server is free (the seed's "first available server")."""

    def __init__(self, rc: Client, block: bool | None = None) -> None:
        super().__init__(rc, None, block)

    def apply_async(self, f: Callable, /, *args: Any, **kwargs: Any) -> AsyncResult:
        return self._calls(f, "tasks", [(0, [(args, kwargs)])], [None], single=True)

    def map(self, f: Callable, /, *sequences: Iterable, block: bool | None = None, ordered: bool = True,
            chunksize: int = 1) -> Any:
        return self._result(self.map_async(f, *sequences, ordered=ordered, chunksize=chunksize), block)

    def map_sync(self, f: Callable, /, *sequences: Iterable, ordered: bool = True, chunksize: int = 1) -> list:
        return self.map_async(f, *sequences, ordered=ordered, chunksize=chunksize).get()

    def map_async(self, f: Callable, /, *sequences: Iterable, ordered: bool = True,
                  chunksize: int = 1) -> AsyncResult:
        """One task per `chunksize` items; results in order (or, with ordered=False, in the
        order the tasks finished)."""
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be a positive integer, not {chunksize!r}")
        calls = [(args, {}) for args in zip(*sequences)]
        chunks = [calls[i:i + chunksize] for i in range(0, len(calls), chunksize)]
        return self._calls(f, "tasks", list(enumerate(chunks)), [None] * len(chunks), ordered=ordered)

    def __repr__(self) -> str:
        return "<LoadBalancedView>"


def _as_is(ret: list) -> list:
    """A view task's `ret`: already the list of its calls' results."""
    return ret


def _first(ret: list) -> list:
    """A pull of one name: its `ret` is [value]."""
    return ret[:1]
