"""Fan-out of `1+1` to every server, and what it costs the client, at the world size it is
launched with:

    mpiexec -n N python -m mpi_kernel benchmarks/scaling_job.py REPS

`client_cpu_us` is the client process's CPU time (both of its threads, waits included) per
fan-out; on an oversubscribed host the client's yield-spin while it waits is part of it.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.stats import summarize, timed  # noqa: E402
from mpi_kernel import MPICommandClient  # noqa: E402

if __name__ == "__main__":
    client = MPICommandClient()
    client.start_services()
    servers = client.servers()
    reps = int(sys.argv[1])
    cpu0 = time.process_time()
    samples = timed(lambda: client.push_command_request("1+1", True, servers), reps, 20)
    cpu = (time.process_time() - cpu0) / (reps + 20) * 1e6
    print(json.dumps({"ranks": len(servers) + 1, "fanout": summarize(samples), "client_cpu_us": cpu}))
