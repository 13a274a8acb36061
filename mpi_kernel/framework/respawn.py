"""A full world again after servers died: replacements started with MPI_Comm_spawn.

The client and the surviving servers make a communicator of their own (MPICH:
MPI_Comm_create_group, collective over its members only, so the dead ranks are not asked;
Open MPI: ULFM's MPI_Comm_shrink), spawn one process per dead rank from it, on that rank's
host, merge with them and reorder so that each replacement takes the number of the rank it
replaces. Every framework communicator is then made again over that world
(environment.build), and user code's `MPI.COMM_WORLD` in plain %%px cells has N-1 ranks again.

Measured on 2 cores: a restart of one rank takes 0.2-0.4 s with the MPICH wheel and about
1.2 s with Open MPI's. The dead ranks stay in the old communicators, which are dropped, not
freed (freeing one would wait for them), and under MPICH MPI_Finalize stays skipped
(environment.lost_ranks).
"""
from __future__ import annotations

import os
import sys
import time

from . import environment, failed, usercomm
from .environment import MPI, MPIEnvironment
from .protocol import REPLACEMENT, SURVIVE

TAG = 18  # MPI_Comm_create_group's tag for the survivors' communicator


def command(dead: list[int]) -> list[str]:
    """The argv that starts replacements for `dead` (they run `python -m mpi_kernel`).

    Through a shell that ignores SIGUSR1 before it becomes Python (an ignored signal stays
    ignored across exec): hydra sends SIGUSR1 to every rank when one dies, and a Python
    still starting up would die of it, which makes hydra end the whole job."""
    return ["/bin/sh", "-c", 'trap "" USR1; exec "$0" "$@"', sys.executable, "-m", "mpi_kernel",
            REPLACEMENT, ",".join(map(str, dead))]


def wait_reported(comm: MPI.Comm, dead: list[int], timeout: float = 5.0) -> bool:
    """Wait until the MPI library lists `dead` as failed (True; at once where it cannot say):
    a replacement must not start while hydra still sends its failure notices. Under srun
    there are no notices, and MPICH never learns of the death: nothing to wait for."""
    if os.environ.get(SURVIVE) == "srun":
        return True
    deadline = time.monotonic() + timeout
    while True:
        known = failed.failed(comm)
        if known is None or set(dead) <= known:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def respawn(env: MPIEnvironment, dead: list[int], hosts: list[str] | None = None) -> MPIEnvironment:
    """On the client and every survivor (collective over them): start replacements for
    `dead`, on `hosts` (each dead rank's own; only the client, the spawn's root, gives
    them), and make the environment over the rebuilt world. Returns it."""
    alive = _survivors(env.framework, dead)
    argv = command(dead)
    infos = [MPI.Info.Create() for _ in dead]
    for info, host in zip(infos, hosts or []):
        info.Set("host", host)  # hydra would put them all on the first host
    inter = alive.Spawn_multiple([argv[0]] * len(dead), [argv[1:]] * len(dead), [1] * len(dead), infos,
                                 root=alive.Get_size() - 1)
    for info in infos:
        info.Free()
    merged = inter.Merge(high=False)
    return _install(merged.Split(0, env.rank), dead)


def _survivors(comm: MPI.Intracomm, dead: list[int]) -> MPI.Intracomm:
    """A communicator of `comm` without `dead`, the client still last (collective over the
    others). Open MPI (ULFM) refuses MPI_Comm_create_group on a communicator with a failed
    process once it knows of it, which each process learns at its own moment: so every
    process uses ULFM's MPI_Comm_shrink there. MPICH's Shrink is a stub (mpi4py wires ULFM
    for Open MPI only), but its Create_group asks only the members."""
    if "Open MPI" in environment.library_name():
        return comm.Shrink()
    group = comm.Get_group()
    survivors = group.Excl(dead)
    group.Free()
    try:
        return comm.Create_group(survivors, TAG)
    finally:
        survivors.Free()


def join(dead: list[int]) -> MPIEnvironment:
    """In a replacement: merge with the job that spawned it, as rank dead[i] (i: its rank
    among the replacements), and make the environment (collective with respawn)."""
    index = MPI.COMM_WORLD.Get_rank()
    merged = MPI.Comm.Get_parent().Merge(high=True)
    return _install(merged.Split(0, dead[index]), dead)


def _install(world: MPI.Intracomm, dead: list[int]) -> MPIEnvironment:
    environment.lost_ranks.update(dead)  # the old world still holds the dead ones
    env = environment.build(world)
    usercomm.install(env.world, env.servers)
    return env
