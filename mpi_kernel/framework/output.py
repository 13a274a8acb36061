"""Server-side capture of stdout/stderr.

While a command runs, what it writes is kept for the response and also streamed
to the client in small batches (by size, or by age when the monitor thread
flushes), so the notebook shows it live. Nothing reaches mpiexec's stdout: what
C code and child processes write to descriptors 1 and 2 is captured as well.
"""
from __future__ import annotations

import codecs
import ctypes
import io
import os
import select
import sys
import threading
import time
from typing import Any, Callable

FLUSH_AGE = 0.02      # seconds a partial batch may wait before the monitor thread sends it
FLUSH_SIZE = 64 * 1024
# Characters of each stream a response keeps (all of it is streamed live all the same):
# 64 ranks printing 100,000 lines would otherwise put ~100 MB of responses in the kernel.
KEEP_CHARS = 1 << 20

StreamSink = Callable[[int | None, str, str], None]  # (request_id, stream name, text)


class OutputCapture:
    """Collects what a command writes and streams it to the client."""

    def __init__(self, send: StreamSink) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._request_id: int | None = None
        self._kept: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._kept_size = {"stdout": 0, "stderr": 0}
        self._keep = True
        self._pending: list[tuple[str, str]] = []
        self._pending_size = 0
        self._pending_since = 0.0

    def begin(self, request_id: int, keep: bool = True) -> None:
        """A command starts; with `keep` False its output is only streamed (a cell whose
        output the client shows from the stream keeps no copy for its response)."""
        if self._pending:  # written between commands (a thread of the user's): sent on its own
            self.flush()
        # Without the lock (on every request's path): each store is atomic, and a writer in
        # another thread sees the old command or the new one, as it would a moment earlier.
        self._keep = keep
        self._request_id = request_id

    def end(self) -> tuple[str, str]:
        """Flush what is pending and return the command's (stdout, stderr)."""
        with self._lock:
            if self._pending:
                self._flush_locked()
            self._request_id = None
            kept = self._kept
            if not (kept["stdout"] or kept["stderr"]):  # the usual case: nothing was printed
                return "", ""
            sizes = self._kept_size
            self._kept = {"stdout": [], "stderr": []}
            self._kept_size = {"stdout": 0, "stderr": 0}
        return _joined(kept["stdout"], sizes["stdout"]), _joined(kept["stderr"], sizes["stderr"])

    @property
    def active(self) -> bool:
        """True while a command runs (its output is kept for its response)."""
        return self._request_id is not None

    def write(self, name: str, text: str) -> None:
        with self._lock:
            if self._request_id is not None and self._keep:
                if self._kept_size[name] < KEEP_CHARS:
                    self._kept[name].append(text)
                self._kept_size[name] += len(text)
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append((name, text))
            self._pending_size += len(text)
            if self._pending_size >= FLUSH_SIZE:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._flush_locked()

    def flush_if_old(self) -> None:
        """Called by the monitor thread: send a batch that has waited FLUSH_AGE."""
        if self._pending and time.monotonic() - self._pending_since >= FLUSH_AGE:
            with self._lock:
                self._flush_locked()

    def _flush_locked(self) -> None:
        # Merge consecutive chunks of the same stream into one message each.
        merged: list[tuple[str, list[str]]] = []
        for name, text in self._pending:
            if merged and merged[-1][0] == name:
                merged[-1][1].append(text)
            else:
                merged.append((name, [text]))
        self._pending, self._pending_size = [], 0
        for name, parts in merged:
            self._send(self._request_id, name, "".join(parts))


def _joined(parts: list[str], size: int) -> str:
    """What a response keeps of a stream: all of it, or the first KEEP_CHARS and a note."""
    text = "".join(parts)
    if size <= KEEP_CHARS:
        return text
    return (text[:KEEP_CHARS] + f"\n[mpi-kernel: {size - KEEP_CHARS:,} more characters were streamed "
            f"live but not kept in this response]\n")


class RemoteStream(io.TextIOBase):
    """A text stream (sys.stdout/sys.stderr on a server) feeding an OutputCapture."""

    def __init__(self, name: str, capture: OutputCapture) -> None:
        self.name = name
        self._capture = capture

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            self._capture.write(self.name, text)
        return len(text)

    def flush(self) -> None:
        """print(..., flush=True) sends what is pending now."""
        self._capture.flush()

    def isatty(self) -> bool:
        return False


class NoInput(io.TextIOBase):
    """sys.stdin on a server. mpiexec forwards no input to it (or only to rank 0, from
    nowhere), so input() would wait forever: fail at once, saying what to do instead."""

    def readable(self) -> bool:
        return True

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        # No rank in the text: identical errors from several ranks are shown once.
        raise EOFError("input() is not available on the MPI servers: they have no terminal. Read "
                       "the value on the client and send it (%mpi_push NAME, or a command's parameters).")

    read = readline


class FdCapture:
    """Output that bypasses sys.stdout: C and Fortran code, child processes (os.system).

    Descriptors 1 and 2 become pipes. A thread blocks in poll() (no CPU while quiet) and
    feeds what comes to the OutputCapture, as print() does, so it is shown live and kept
    in the response. Between commands it goes to the original descriptors instead, so MPI
    library warnings stay in the job's log. `drain()`, at the end of each command, flushes
    C's stdio buffers (a pipe is fully buffered) and takes what is left, so a command's
    output is in its own response.
    """

    def __init__(self, capture: OutputCapture) -> None:
        self._capture = capture
        self._lock = threading.Lock()
        self._fflush = ctypes.CDLL(None).fflush
        self._pipes: dict[int, tuple[str, int, Any]] = {}  # read end -> (name, original fd, decoder)
        self.originals: dict[int, int] = {}                  # 1, 2 -> a duplicate of the original
        self._poll = select.poll()

    def start(self) -> None:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            (sys.__stdout__ if fd == 1 else sys.__stderr__).flush()
            self.originals[fd] = os.dup(fd)
            read, write = os.pipe()
            os.set_blocking(read, False)
            os.dup2(write, fd)
            os.close(write)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            self._pipes[read] = (name, self.originals[fd], decoder)
            self._poll.register(read, select.POLLIN)
        threading.Thread(target=self._watch, name="mpi-kernel-fd-output", daemon=True).start()

    def stop(self) -> None:
        """Give descriptors 1 and 2 back (what the process prints at exit reaches the log)."""
        self.drain()
        for fd, original in self.originals.items():
            os.dup2(original, fd)

    def drain(self) -> None:
        self._fflush(None)
        ready = self._poll.poll(0)
        # Nothing ready and the lock free: nothing is left (on every request's path). Else take
        # the lock, even with nothing ready: the thread may have read the pipe and be delivering.
        if ready or self._lock.locked():
            with self._lock:
                for read, _ in ready or self._poll.poll(0):
                    if read in self._pipes:
                        self._read(read)

    def _watch(self) -> None:
        # A poll object of its own: drain() polls self._poll from the main thread meanwhile,
        # and one poll object cannot be polled by two threads at once.
        watcher = select.poll()
        for read in self._pipes:
            watcher.register(read, select.POLLIN)
        while self._pipes:
            for read, _ in watcher.poll():
                with self._lock:
                    if read not in self._pipes or not self._read(read):
                        watcher.unregister(read)

    def _read(self, read: int) -> bool:
        """Deliver what the pipe holds (up to 1 MiB a call, so a writer that never stops
        cannot hold the lock for ever); False once it is closed for good."""
        name, original, decoder = self._pipes[read]
        for _ in range(16):
            try:
                data = os.read(read, 1 << 16)
            except BlockingIOError:
                return True
            if not data:  # every writer closed it (the process gave descriptors 1 and 2 back)
                del self._pipes[read]
                self._poll.unregister(read)
                return False
            if self._capture.active:
                self._capture.write(name, decoder.decode(data))
            else:
                os.write(original, data)
        return True
