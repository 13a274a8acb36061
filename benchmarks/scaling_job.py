"""Fan-out of `1+1` to every server, at the world size it is launched with:

    mpiexec -n N python -m mpi_kernel benchmarks/scaling_job.py REPS
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.stats import summarize, timed  # noqa: E402
from mpi_kernel import MPICommandClient  # noqa: E402

if __name__ == "__main__":
    client = MPICommandClient()
    client.start_services()
    servers = client.servers()
    samples = timed(lambda: client.push_command_request("1+1", True, servers), int(sys.argv[1]), 20)
    print(json.dumps({"ranks": len(servers) + 1, "fanout": summarize(samples)}))
