"""Fan-out of `1+1` to every server, and what it costs the client, at the world size it is
launched with:

    mpiexec -n N python -m mpi_kernel benchmarks/scaling_job.py REPS

`client_cpu_us`: the client process's CPU time per fan-out (both of its threads, waits
included). `client_work_us`: the same without the CPU its waits burn (the yield-spin and
wake-ups of transport.Backoff.wait and the fast path's Pump.spin, timed here with the waiting
thread's own clock): what sending, receiving and bookkeeping cost. `raw_cpu_us`: the client CPU of the same fan-out as
raw mpi4py messages (a pickled send to each server, then a yielding wait for each answer), in
the same job: the floor set by MPI itself.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.stats import summarize, timed  # noqa: E402
from benchmarks.core_job import SERVER_ECHO, TAG  # noqa: E402
from mpi_kernel import MPICommandClient  # noqa: E402
from mpi_kernel.framework import transport  # noqa: E402
from mpi_kernel.framework.pump import Pump  # noqa: E402
from mpi4py import MPI  # noqa: E402

waiting = [0.0]
_wait, _spin = transport.Backoff.wait, Pump.spin


def timed_wait(self: transport.Backoff, probe=None) -> None:  # type: ignore[no-untyped-def]
    t0 = time.thread_time()
    _wait(self, probe)
    waiting[0] += time.thread_time() - t0


def timed_spin(self: Pump, start: float) -> bool:
    """The fast path's probe loop, timed as the general wait is."""
    t0 = time.thread_time()
    try:
        return _spin(self, start)
    finally:
        waiting[0] += time.thread_time() - t0


def raw_fanout_cpu(client: MPICommandClient, servers: list[int], reps: int) -> float:
    """Client CPU (us) per raw fan-out of a pickled message to every server and back."""
    world, me = MPI.COMM_WORLD, MPI.COMM_WORLD.Get_rank()
    ids = client.push_command_request(SERVER_ECHO, False, servers, {"n": reps, "client": me, "polite": True})
    msg = ("1+1", 0)
    t0 = time.process_time()
    for _ in range(reps):
        for s in servers:
            world.send(msg, dest=s, tag=TAG)
        for s in servers:
            while not world.Iprobe(source=s, tag=TAG):
                os.sched_yield()
            world.recv(source=s, tag=TAG)
    cpu = (time.process_time() - t0) / reps * 1e6
    client.get_command_response(ids, True)
    return cpu


if __name__ == "__main__":
    client = MPICommandClient()
    client.start_services()
    servers = client.servers()
    reps = int(sys.argv[1])
    samples = timed(lambda: client.push_command_request("1+1", True, servers), reps, 20)
    transport.Backoff.wait, Pump.spin = timed_wait, timed_spin  # after the latency samples: the timing costs a little
    cpu0 = time.process_time()
    for _ in range(reps):
        client.push_command_request("1+1", True, servers)
    cpu = (time.process_time() - cpu0) / reps * 1e6
    work = cpu - waiting[0] / reps * 1e6
    print(json.dumps({"ranks": len(servers) + 1, "fanout": summarize(samples), "client_cpu_us": cpu,
                      "client_work_us": work, "raw_cpu_us": raw_fanout_cpu(client, servers, reps)}))
