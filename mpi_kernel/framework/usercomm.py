"""What user code on a rank gets from mpi4py: its world, communicators whose Abort is
reported, and an MPI.Finalize that refuses.

- **The world.** On a server, `MPI.COMM_WORLD` is the servers' world (ranks 0..N-2, the
  same communicator as `comm`), exactly as if the code were a program run with
  `mpiexec -n N-1`: the client never joins a plain cell's collectives, so the real world
  would hang them. In a `%%px --local` cell, which the client runs too, it is the whole
  job. `Worlds.select(local)` switches it for each request. Code that takes `MPI.COMM_WORLD`
  when it runs (h5py's mpio driver, mpi4py-fft, `mpi4py.util.pkl5`) gets the same
  world; a communicator kept from a --local cell is still the whole job's.

- `Abort` ends every rank, and the launcher's teardown follows at once. The message the MPI
  library prints would go into the server's output capture (a pipe that nobody reads
  any more), and the supervisor could not tell which rank it was. So the communicators
  user code starts from (`comm`, and `MPI.COMM_WORLD`) are of a subclass whose Abort first
  gives descriptors 1 and 2 back and says which rank called it, then aborts. Duplicates
  (`Dup`) keep the subclass; communicators made by `Split` or `Create` do not.
- `MPI.Finalize()` in a command would end MPI under the framework: that server could
  never answer again. It raises at once with what to do instead; the framework's own
  finalization (mpi4py's, at exit) does not go through the module attribute.
"""
from __future__ import annotations

import os
import socket
import sys
from typing import Any, Callable, NoReturn

from mpi4py import MPI

from .environment import let_launcher_forward, release_shared_memory

_REAL_WORLD = MPI.COMM_WORLD
# Called before an abort, to give the captured descriptors back (server.py adds one).
before_abort: list[Callable[[], None]] = []


def plain_abort_line(entry: dict) -> str:
    return f"mpi-kernel: rank {entry['rank']} on {entry['host']} called MPI_Abort: {entry['abort']}"


# The line that says which rank aborts: plain words, unless the job is supervised, where
# __main__ puts in the guard's line, which the supervisor reads (jupyter/guard.py). The
# framework knows no supervisor, so the layer above tells it how to say it.
abort_line: Callable[[dict], str] = plain_abort_line


class UserComm(MPI.Intracomm):
    """An intracommunicator for user code, the same MPI handle: only Abort differs."""

    def Abort(self, errorcode: int = 0) -> NoReturn:  # noqa: N802 - mpi4py's name
        abort(int(errorcode), f"Abort({errorcode}) on {self.Get_name()}")


def abort(errorcode: int, what: str) -> NoReturn:
    """End the whole job from user code's side (MPI_Abort), saying which rank and why."""
    announce_abort(errorcode, what)
    _REAL_WORLD.Abort(errorcode)
    raise SystemExit(errorcode)  # not reached: MPI_Abort does not return


def announce_abort(errorcode: int, what: str) -> None:
    """Give the output descriptors back, then say which rank aborts on the job's stderr:
    `abort_line` words it."""
    for hook in before_abort:
        try:
            hook()
        except Exception:  # the abort must happen whatever a hook does
            pass
    entry = {"rank": _REAL_WORLD.Get_rank(), "host": socket.gethostname(), "pid": os.getpid(),
             "code": errorcode, "abort": what}
    line = abort_line(entry)
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(2, (line + "\n").encode())
    let_launcher_forward()
    release_shared_memory()


def _refuse_finalize() -> NoReturn:
    raise RuntimeError("MPI.Finalize() would end MPI under mpi-kernel: this rank could no longer "
                       "take commands. The kernel finalizes MPI itself when it shuts down; leave "
                       "the call out (restart the kernel to end the job).")


class Worlds:
    """The two worlds user code can see on this rank, and the one it sees now."""

    def __init__(self, world: Any, servers: Any) -> None:
        self.job = UserComm(world)
        # On the client there is no servers' world: it runs only cells it takes part in.
        self.servers = UserComm(servers) if servers != MPI.COMM_NULL else None
        self.plain = self.servers or self.job

    def select(self, local: bool) -> None:
        """MPI.COMM_WORLD for the next request: the whole job in a --local cell, else the
        plain one (a plain assignment: this is on every request's path)."""
        MPI.COMM_WORLD = self.job if local else self.plain


worlds: Worlds | None = None


def install(world: Any, servers: Any) -> Worlds:
    """Give user code its world (MPI.COMM_WORLD) and an `MPI.Finalize` that refuses; again
    over a world rebuilt after a death (respawn.py), which Abort then ends."""
    global worlds, _REAL_WORLD
    _REAL_WORLD = world
    worlds = Worlds(world, servers)
    MPI.COMM_WORLD = worlds.plain
    MPI.Finalize = _refuse_finalize
    return worlds
