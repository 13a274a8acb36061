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

import logging
import os
import sys
import time
from typing import Any

from . import environment, failed, protocol, transport, usercomm
from .environment import MPI, MPIEnvironment
from .protocol import REPLACEMENT, SURVIVE

TAG = 18  # MPI_Comm_create_group's tag for the survivors' communicator
log = logging.getLogger("mpi_kernel.client")


def restart(client: Any, end_busy: bool) -> list[int]:
    """The client's side of MPICommandClient.restart_dead: check that it can be done, have
    the survivors rebuild the world with replacements (respawn), start them, wait for them."""
    pump, book, monitor = client._pump, client._book, client._monitor
    with client._lock, transport.DeferredSigint():
        if end_busy:
            _end_busy(client)
        dead = sorted(monitor.dead())
        if not dead:
            return []
        if os.environ.get(protocol.NO_RESPAWN):
            raise RuntimeError(f"servers {protocol.format_ranks(dead)} cannot be replaced in this job: "
                               f"{os.environ[protocol.NO_RESPAWN]}. The live servers go on; "
                               f"restarting the kernel (a new job) brings every rank back, with empty variables")
        live = [r for r in client._servers if r not in dead]
        busy = sorted({r for r in live if book.inflight[r] is not None or book.queues[r]}
                      | (set(live) if book.any_queue else set()))
        if busy:
            raise RuntimeError(f"servers {protocol.format_ranks(busy)} have work running or queued: "
                               f"replacing the dead servers needs every other server idle. Wait for "
                               f"that work, or Stop it, and try again (end_busy=True, or "
                               f"%mpi_restart_dead --end-busy, cancels what is queued and ends and "
                               f"replaces the busy servers too)")
        # MPICH lists the deaths of the job's first processes only, not of replacements.
        if not wait_reported(pump.comm, [r for r in dead if r not in client._respawned]):
            raise RuntimeError(f"MPI has not yet noticed the end of servers {protocol.format_ranks(dead)} "
                               f"after 5 s; try again in a moment")
        ids = pump.queue(protocol.REBUILD, "<restart dead servers>", protocol.REBUILD, None,
                         [(r, dead) for r in live])
        hosts = [monitor.table[r].host for r in dead]
        client.rebound(respawn(client._env, dead, hosts), dead)
        for server in dead:
            pump.control(server, protocol.START, client._start_config())
    hello = pump.hello
    missing = pump.wait_until(lambda: set(dead) - hello, client.start_timeout)
    if missing:
        raise RuntimeError(f"the replacements for servers {protocol.format_ranks(sorted(missing))} did "
                           f"not answer within {client.start_timeout:g} s")
    client._collect(ids, "<restart dead servers>")
    log.info("servers %s started anew", protocol.format_ranks(dead))
    return dead


def _end_busy(client: Any) -> None:
    """Cancel all queued work (what was sent ahead too), then end the servers that run
    something: they count as dead from now on. Call with the client's lock held."""
    client.cancel_queued()
    book, pump = client._book, client._pump
    for rank in client._servers:
        if client._monitor.table[rank].dead is None and book.inflight[rank] is not None:
            pump.control(rank, protocol.EXIT, 1)
            pump.server_died(rank, f"Its variables are lost.\nMPIRankDied: server rank {rank} was "
                                   f"ended by restart_dead(end_busy=True), to be started anew\n")


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
