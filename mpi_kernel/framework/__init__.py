"""The seed's command framework: mpi4casa's client and servers, made generic.

One MPI job: the top rank (N-1) is the client, ranks 0..N-2 are servers. The code's
"guide 5.x" citations are sections of the mpi4casa guide, whose API and semantics
docs/command-framework.md gives in our words under the same numbers.

It imports only MPI, the standard library, traitlets (its configuration), its own
modules and `mpi_kernel.errors`: never `mpi_kernel.parallel`, `mpi_kernel.jupyter`,
IPython or Jupyter (tests/unit/test_layers.py holds that). Importing this package does
not start MPI; `launch()` does.

    environment  MPI init, world checks, the framework's communicators
    usercomm     what user code sees of MPI (its COMM_WORLD, a reported Abort)
    protocol     tags, request and reply shapes, status values (pure)
    transport    the waiting strategy, pickling with out-of-band buffers
    client       MPICommandClient: the guide's facade (config, life cycle, API)
    pump         receiving, routing, the service thread and waits (the client's engine)
    requests     the request book: records, queues, in-flight, responses (pure)
    monitor      the client's pings and timeout decision (pure)
    server       MPICommandServer: namespace, eval/exec, replies
    control      the server's control thread (start, ping, interrupt, stop, stacks)
    stopping     the one policy for stopping requests: cancel the queued, interrupt the running
    respawn      replacements for dead servers, and the world rebuilt around them
    failed       which ranks MPICH knows to have failed (MPIX_Comm_get_failed, by ctypes)
    broadcast, output, logs, memory, bounded, partition, stuck: the parts they share
"""
from __future__ import annotations

from typing import Any


def launch() -> Any:
    """Start MPI on this rank (collective): the framework's communicators, then user
    code's world. Returns the MPIEnvironment."""
    from . import environment, usercomm
    env = environment.launch()
    usercomm.install(env.world, env.servers)  # after the framework took the real COMM_WORLD
    return env
