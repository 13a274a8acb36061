"""The client's own part of a `%%px --local` cell, watched for a server's death.

Under MPICH an MPI call that waits for a rank that died never returns, and no interrupt
reaches a thread blocked in C: a kernel whose --local part waits in a collective with a
dead server would hang for ever. So while that part runs, a thread reads the main thread's
stack (stuck.describe, as each server does for its own); once it has waited in an MPI call
with a rank that died for GRACE seconds, the job ends by MPI_Abort with that reason, and the
supervisor says so in the cell and starts a new job: what cannot survive says so. Open MPI's
ULFM fails such a call with MPI_ERR_PROC_FAILED instead, so there nothing is watched.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any

from mpi_kernel.framework import environment, stuck, usercomm
from mpi_kernel.framework.environment import MPI
from mpi_kernel.framework.protocol import format_ranks

GRACE = 1.0  # seconds a call with a dead member may still return (it never does under MPICH)
POLL = 0.2


class LocalWatch:
    """`with LocalWatch(client): shell.run_cell(...)`, on the thread that runs the cell."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.main = threading.get_ident()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="mpi-kernel-local-watch", daemon=True)

    def __enter__(self) -> "LocalWatch":
        if "MPICH" in environment.library_name():
            self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.done.set()

    def _watch(self) -> None:
        world = environment.current().world.Get_group()
        since: float | None = None
        while not self.done.wait(POLL):
            # Every dead rank counts, those from before the cell too: the whole world's
            # collectives wait for one that was never restarted as well.
            dead = sorted(self.client.dead())
            report = stuck.describe(sys._current_frames().get(self.main), world, MPI) if dead else None
            if not stuck.waits_for_dead(report, dead):
                since = None
                continue
            since = since or time.monotonic()
            if time.monotonic() - since >= GRACE and not self.done.is_set():
                world.Free()
                usercomm.abort(1, f"its %%px --local part waited in {report['call']} with dead rank "
                                  f"{format_ranks(dead)}, which MPICH never returns")
        world.Free()
