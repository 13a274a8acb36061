"""Sending and receiving framework messages, and the waiting strategy.

Measured on our 2-core test machines (docs/architecture.md, "Facts the design rests
on"): blocking MPI waits spin a core, and sleep-only polling costs >= 200 us per
message. So every wait here is a hybrid: spin on a non-blocking probe with
sched_yield for about 1 ms, then back off with sleeps from 50 us up to a cap.
Because waits are Python loops, they can be interrupted and given timeouts.

Messages are pickled with protocol 5. Large contiguous buffers (NumPy arrays)
travel out of band as raw MPI messages tagged DATA right after their header,
so a 100 MB array is not copied into a pickle. Values that standard pickle
sends by reference to `__main__` (functions, lambdas and classes defined in a
notebook or script), or cannot send at all, are pickled by value with cloudpickle.
"""
from __future__ import annotations

import os
import pickle
import signal
import _signal
import threading
import time
from typing import Any, Callable

from mpi4py import MPI

from ..errors import DecodeError  # noqa: F401 - raised here, caught as transport.DecodeError
from .protocol import Tag

OOB_THRESHOLD = 64 * 1024  # buffers at least this large are sent out of band
_multipart_lock = threading.Lock()  # a header and its DATA parts must not interleave



class Backoff:
    """Hybrid wait, in phases measured from the last activity:

    - up to `hot` s: busy-poll `probe` without yielding (only where ranks have a core each);
    - up to `spin` s: yield-spin (the fastest answer to a quick next message);
    - up to `warm` s: sleeps from `start` doubling to `warm_cap`, since more work often
      follows soon (a notebook sends a cell every few ms when cells run back to back);
      not shorter, as every waking rank takes CPU from the busy ones on 2 cores;
    - then sleeps doubling up to `cap`, and after `idle_after` s up to `idle_cap`:
      each wake-up costs 26-40 us of CPU on these VMs, so 2 ms sleeps alone would
      use 1.3-2% of a core. The first command after a long pause waits up to
      `idle_cap` (10 ms; 20 ms in a server's main loop) longer, which nobody at a notebook
      can notice.
    """

    def __init__(self, spin: float = 1e-3, start: float = 50e-6, warm: float = 0.05,
                 warm_cap: float = 250e-6, cap: float = 2e-3, idle_after: float = 1.0,
                 idle_cap: float = 10e-3, hot: float = 0.0) -> None:
        self.spin, self.start, self.warm, self.warm_cap, self.cap = spin, start, warm, warm_cap, cap
        self.hot = hot
        self.idle_after, self.idle_cap = idle_after, idle_cap
        self.reset()

    def reset(self) -> None:
        self._since = 0.0
        self._delay = self.start

    def wait(self, probe: Callable[[], bool] | None = None) -> None:
        """Wait one slot. While spinning, return as soon as `probe()` is true (a cheap
        Iprobe), which keeps the caller's heavier loop out of the hot path."""
        now = time.monotonic()
        if not self._since:
            self._since = now
        idle = now - self._since
        if idle < self.spin:
            if probe is None:
                os.sched_yield()
                return
            end = self._since + self.spin
            hot = self._since + self.hot
            while not probe():
                now = time.monotonic()
                if now > end:
                    return
                if now > hot:
                    os.sched_yield()
            return
        time.sleep(self._delay)
        limit = self.warm_cap if idle < self.warm else self.idle_cap if idle > self.idle_after else self.cap
        self._delay = min(self._delay * 2, max(limit, self.start))


class OutOfBand(tuple):
    """Header of a message whose large buffers follow as DATA messages: (count, pickle)."""

    __slots__ = ()


# Types whose pickle holds no buffers and no references to classes: a message of only these
# is pickled directly (3x quicker than with the buffer callback and the __main__ check).
PLAIN = frozenset({type(None), bool, int, float, str})


def encode(obj: Any, plain: bool = False) -> tuple[bytes, list[memoryview]]:
    """Pickle `obj`; return the message bytes and the out-of-band buffers.

    Without large buffers the bytes are a plain pickle, which the receiver unpickles
    with mpi4py's fast `Message.recv()`. Raises whatever pickle raises (e.g. TypeError
    for an unpicklable value) before anything is sent, so callers can report it.
    `plain` says that `obj` is a tuple of PLAIN values (the caller checked): every
    command's request and reply is one, so this is the hot path.
    """
    if plain:
        return pickle.dumps(obj, protocol=5), []
    buffers: list[memoryview] = []
    data = _dumps(obj, buffers)
    if buffers:
        data = pickle.dumps(OutOfBand((len(buffers), data)), protocol=5)
    return data, buffers


def pickle_parts(obj: Any) -> tuple[bytes, list[memoryview]]:
    """The pickle of `obj` and its large buffers, for `pickle.loads(data, buffers=...)`
    on the other side (a broadcast sends them as separate parts)."""
    buffers: list[memoryview] = []
    return _dumps(obj, buffers), buffers


def _dumps(obj: Any, buffers: list[memoryview]) -> bytes:
    """Pickle with the C pickler, large buffers into `buffers`; fall back to cloudpickle.

    The other side's `__main__` is not ours (a server's is mpi_kernel's), so a
    reference to it cannot be resolved there. The byte test costs ~50 ns on the
    hot path; a false hit (a string "__main__") only costs a slower pickle.
    """
    def keep_large(buf: pickle.PickleBuffer) -> bool:
        try:
            raw = buf.raw()
        except BufferError:  # not contiguous: leave it in the pickle
            return True
        if raw.nbytes < OOB_THRESHOLD:
            return True
        buffers.append(raw)
        return False

    try:
        data = pickle.dumps(obj, protocol=5, buffer_callback=keep_large)
        if data.find(b"__main__") < 0:  # find: twice as quick as `in` on short bytes
            return data
    except (pickle.PicklingError, AttributeError, TypeError):  # a lambda, a local function...
        pass
    import cloudpickle  # here, not at start-up: most sessions never need it

    buffers.clear()
    return cloudpickle.dumps(obj, protocol=5, buffer_callback=keep_large)


def dumps_function(function: Any) -> bytes:
    """A function as bytes, pickled once for many tasks (by value when it was defined in
    the notebook or script, as push sends it). TypeError says why it cannot travel."""
    if not callable(function):
        raise TypeError(f"expected a function, not {type(function).__name__}")
    buffers: list[memoryview] = []
    try:
        data = _dumps(function, buffers)
    except Exception as exc:
        raise TypeError(f"cannot send {function!r} to the servers: it cannot be pickled "
                        f"({type(exc).__name__}: {exc})") from exc
    return data if not buffers else pickle.dumps((data, [bytes(b) for b in buffers]))


def loads_function(blob: bytes) -> Any:
    value = pickle.loads(blob)
    if isinstance(value, tuple):  # it held large buffers (a closure over an array)
        data, buffers = value
        value = pickle.loads(data, buffers=buffers)
    return value


def send_encoded(comm: MPI.Comm, encoded: tuple[bytes, list[memoryview]], dest: int, tag: int,
                 wait: bool = True) -> list[MPI.Request]:
    """Send a message and its out-of-band parts.

    With wait=False the parts are sent with Isend and their requests returned, for
    the caller to complete later (Testall): a large send then does not wait for a
    server that is asleep in its backoff, so pushes to several servers overlap.
    """
    data, buffers = encoded
    if not buffers:
        comm.Send([data, MPI.BYTE], dest, tag)
        return []
    with _multipart_lock:
        comm.Send([data, MPI.BYTE], dest, tag)
        requests = [comm.Isend([buf, MPI.BYTE], dest, Tag.DATA) for buf in buffers]
    if wait:
        MPI.Request.Waitall(requests)
        return []
    return requests


def complete(requests: list[MPI.Request], spin: float) -> bool:
    """Drive pending sends for up to `spin` s; True when all are done.

    A large shared-memory transfer moves in chunks only while the sender calls MPI,
    so testing back to back (no yield) is what gives the raw bandwidth when the
    receiver is awake; an asleep receiver costs at most `spin` per call.
    """
    end = time.monotonic() + spin
    while not MPI.Request.Testall(requests):
        if time.monotonic() > end:
            return False
    return True


def send(comm: MPI.Comm, obj: Any, dest: int, tag: int) -> None:
    send_encoded(comm, encode(obj), dest, tag)


def empty_buffer(nbytes: int) -> Any:
    """A receive buffer. numpy.empty does not zero-fill 100 MB that MPI overwrites anyway;
    numpy is imported here, not at start-up (70 ms on every rank)."""
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is optional
        return bytearray(nbytes)
    return numpy.empty(nbytes, dtype=numpy.uint8)


def receive(comm: MPI.Comm, msg: MPI.Message, status: MPI.Status) -> Any:
    """Receive a matched message (and its out-of-band parts, if any); unpickle.

    Raises DecodeError, with the message fully consumed, when unpickling fails (a
    module or class missing on this side), so the caller can answer and go on.
    """
    try:
        obj = msg.recv()
    except Exception as exc:
        raise DecodeError(f"{type(exc).__name__}: {exc}") from exc
    if type(obj) is not OutOfBand:
        return obj
    count, data = obj
    source = status.Get_source()
    buffers = []
    for _ in range(count):
        part_status = MPI.Status()
        part = comm.mprobe(source, Tag.DATA, part_status)  # sent right after the header
        buf = empty_buffer(part_status.Get_count(MPI.BYTE))
        part.Recv([buf, MPI.BYTE])
        buffers.append(buf)
    try:
        return pickle.loads(data, buffers=buffers)
    except Exception as exc:
        raise DecodeError(f"{type(exc).__name__}: {exc}") from exc


def try_receive(comm: MPI.Comm, source: int, tag: int, status: MPI.Status) -> tuple[bool, Any]:
    """Receive one message if one is waiting: (True, obj) or (False, None)."""
    msg = comm.improbe(source, tag, status)
    if msg is None:
        return False, None
    return True, receive(comm, msg, status)


# Error classes of a communicator that lost a process, under Open MPI's ULFM (MPICH raises
# none: its calls to a dead rank just wait).
FAILURES = frozenset({MPI.ERR_PROC_FAILED, MPI.ERR_PROC_FAILED_PENDING, MPI.ERR_REVOKED})


def acknowledge(comm: MPI.Comm, exc: MPI.Exception) -> None:
    """A call on `comm` failed: if because a process died, acknowledge it (so that probes from
    any source work again) and return, for the caller to go on without it; else raise."""
    if exc.Get_error_class() not in FAILURES:
        raise exc
    try:
        comm.Ack_failed()
    except (NotImplementedError, MPI.Exception):
        pass


class DeferredSigint:
    """Hold back KeyboardInterrupt in the main thread while framework state changes.

    A KeyboardInterrupt between a header and its DATA parts, or between taking a
    response and recording it, would lose or corrupt a message. A signal mask does
    not help (CPython runs Python handlers in the main thread whichever thread the
    signal hit). Instead a SIGINT handler of ours wraps whatever handler was set
    (ipykernel's, the default one): it defers the signal while a block is active and
    otherwise calls the wrapped one. It stays installed, so a block costs a flag and
    a handler lookup; it is re-installed only when someone replaced it.
    `check()` (called by wait loops where state is consistent) and the end of the
    block run the wrapped handler for a deferred signal, raising KeyboardInterrupt.
    """

    __slots__ = ("_owner",)

    def __enter__(self) -> "DeferredSigint":
        global _wrapped, _deferring
        self._owner = not _deferring and threading.get_ident() == _MAIN
        if self._owner:
            current = _signal.getsignal(signal.SIGINT)
            if current is not _on_sigint:
                _wrapped = current
                _signal.signal(signal.SIGINT, _on_sigint)
            _deferring = True
        return self

    def check(self) -> None:
        """Raise the deferred KeyboardInterrupt now, if one came."""
        if self._owner and _caught:
            self.__exit__()

    def __exit__(self, *exc: Any) -> None:
        global _deferring
        if self._owner:
            _deferring = self._owner = False
            if _caught:
                frame = _caught.pop()
                _caught.clear()
                _call_handler(_wrapped, frame)


_MAIN = threading.main_thread().ident
_deferring = False       # only the main thread changes these
_caught: list[Any] = []
_wrapped: Any = signal.SIG_DFL


def _on_sigint(signum: int, frame: Any) -> None:
    if _deferring:
        _caught.append(frame)
    else:
        _call_handler(_wrapped, frame)


def _call_handler(handler: Any, frame: Any) -> None:
    if callable(handler):
        handler(signal.SIGINT, frame)
    elif handler == signal.SIG_DFL:
        raise KeyboardInterrupt
