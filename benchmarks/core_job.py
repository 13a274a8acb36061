"""The core measurements, run as the client script of one 4-rank job:

    mpiexec -n 4 python -m mpi_kernel benchmarks/core_job.py REPS IDLE_SECONDS

Raw baselines are measured in the same job, with the servers taking part through
commands that run a raw mpi4py loop on COMM_WORLD. Prints one JSON line.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import time

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.stats import summarize, timed  # noqa: E402
from mpi_kernel import MPICommandClient  # noqa: E402
from mpi_kernel.framework.protocol import Tag  # noqa: E402

WORLD = MPI.COMM_WORLD
ME = WORLD.Get_rank()
TAG = 77

# On the servers MPI.COMM_WORLD is their own world; the raw baselines talk to the client.
SERVER_ECHO = """
import os
from mpi_kernel import job_world
W = job_world()
for _ in range(n):
    if polite:  # 4 spinning ranks on 2 cores starve each other: yield, as mpi-kernel does
        while not W.Iprobe(source=client, tag=77):
            os.sched_yield()
    W.send(W.recv(source=client, tag=77), dest=client, tag=77)
"""
SERVER_RECV = """
import numpy as np
from mpi_kernel import job_world
W = job_world()
for _ in range(n):
    buf = np.empty(nbytes, dtype=np.uint8)   # a fresh buffer, as a user's receive would be
    W.Recv(buf, source=client, tag=77)
    W.send(None, dest=client, tag=77)
"""
SERVER_BCAST = """
import numpy as np
from mpi_kernel import job_world
W = job_world()
for _ in range(n):
    buf = np.empty(nbytes, dtype=np.uint8)
    W.Bcast(buf, root=client)
    W.send(None, dest=client, tag=77)   # as a push's response says it has arrived
"""

# The Python floor of a round trip: the same request and reply tuples, the same yielding
# waits, a cached compiled command, and nothing else (no records, capture or interrupts).
SERVER_FLOOR = """
import os
from mpi_kernel import job_world
W = job_world()
code = compile("1+1", "<floor>", "eval")
for _ in range(n):
    while not W.Iprobe(source=client, tag=77):
        os.sched_yield()
    kind, rid, command, mode, payload = W.recv(source=client, tag=77)
    W.send((rid, eval(code, {}), True, None, 0.0, 0.0, "", ""), dest=client, tag=77)
"""
# Counts the bytecodes a thread runs, its waits (transport.Backoff.wait, the fast path's
# Pump.spin) left out: the deterministic part of a request's cost. Run on the server as a command and on the client
# by exec, so both sides count alike.
BYTECODE_COUNTER = """
import sys
_ops = [0]
def _trace(frame, event, arg):
    frame.f_trace_opcodes = True
    def local(frame, event, arg):
        if event == "opcode":
            _ops[0] += 1
        return local
    return None if frame.f_code.co_name in ("wait", "spin") else local
"""


def raw_pingpong(client: MPICommandClient, servers: list[int], reps: int, polite: bool) -> list[float]:
    """Pickled send/recv on COMM_WORLD. `polite` waits yield the core between probes."""
    ids = client.push_command_request(SERVER_ECHO, False, servers,
                                      {"n": reps + 50, "client": ME, "polite": polite})
    msg = ("1+1", 0)

    def once() -> None:
        for s in servers:
            WORLD.send(msg, dest=s, tag=TAG)
        for s in servers:
            if polite:
                while not WORLD.Iprobe(source=s, tag=TAG):
                    os.sched_yield()
            WORLD.recv(source=s, tag=TAG)

    samples = timed(once, reps, warmup=50)
    client.get_command_response(ids, True)
    return samples


def python_floor(client: MPICommandClient, reps: int) -> list[float]:
    """Round trips of bare Python loops on both sides (SERVER_FLOOR), on COMM_WORLD."""
    ids = client.push_command_request(SERVER_FLOOR, False, [0], {"n": reps + 50, "client": ME})
    request = ("command", 1, "1+1", "eval", None)

    def once() -> None:
        WORLD.send(request, dest=0, tag=TAG)
        while not WORLD.Iprobe(source=0, tag=TAG):
            os.sched_yield()
        WORLD.recv(source=0, tag=TAG)

    samples = timed(once, reps, warmup=50)
    client.get_command_response(ids, True)
    return samples


def bare_client(client: MPICommandClient, reps: int) -> list[float]:
    """Round trips of a bare Python loop on the client against mpi-kernel's own server:
    the server's share of a round trip. It uses the client's benchmark hook, bare_channel
    (its communicator and ids, with its lock held so the service thread takes no response)."""
    status = MPI.Status()
    with client.bare_channel() as (comm, next_id):
        def once() -> None:
            request = ("command", next_id(), "1+1", "eval", None)
            comm.Send([pickle.dumps(request, protocol=5), MPI.BYTE], 0, Tag.REQUEST)
            while not comm.Iprobe(source=0, tag=Tag.RESPONSE):
                os.sched_yield()
            comm.mprobe(0, Tag.RESPONSE, status).recv()

        return timed(once, reps, warmup=200)


def bytecodes(client: MPICommandClient, reps: int = 200) -> dict:
    """Python bytecodes run per push_command_request("1+1", True, [0]), waits left out, on
    the client and on the server: a count that does not depend on the machine's noise."""
    counter: dict = {}
    exec(BYTECODE_COUNTER, counter)
    client.push_command_request(BYTECODE_COUNTER + "sys.settrace(_trace)\n", True, [0])
    sys.settrace(counter["_trace"])
    for _ in range(reps):
        client.push_command_request("1+1", True, [0])
    sys.settrace(None)
    client.push_command_request("sys.settrace(None)", True, [0])
    server = client.pull("_ops", [0])[0][0]
    # The server counted the requests that started and stopped its count as well.
    return {"client": counter["_ops"][0] / reps, "server": server / (reps + 1)}


def raw_send(client: MPICommandClient, array: np.ndarray, reps: int) -> list[float]:
    ids = client.push_command_request(SERVER_RECV, False, [0], {"n": reps + 2, "client": ME,
                                                               "nbytes": array.nbytes})

    def once() -> None:
        WORLD.Send(array, dest=0, tag=TAG)
        WORLD.recv(source=0, tag=TAG)

    samples = timed(once, reps, warmup=2)
    client.get_command_response(ids, True)
    return samples


def raw_bcast(client: MPICommandClient, servers: list[int], array: np.ndarray, reps: int) -> list[float]:
    """MPI_Bcast of the array from the client to every server, each acknowledging."""
    ids = client.push_command_request(SERVER_BCAST, False, servers, {"n": reps + 1, "client": ME,
                                                                     "nbytes": array.nbytes})

    def once() -> None:
        WORLD.Bcast(array, root=ME)
        for s in servers:
            WORLD.recv(source=s, tag=TAG)

    samples = timed(once, reps, warmup=1)
    client.get_command_response(ids, True)
    return samples


def throughput(client: MPICommandClient, count: int) -> float:
    t0 = time.perf_counter()
    ids = []
    for _ in range(count):
        ids += client.push_command_request("1+1", False, None)
    client.get_command_response(ids, True)
    return count / (time.perf_counter() - t0)


def lb_map(client: MPICommandClient, count: int) -> float:
    """Tasks/s of a load-balanced map of trivial tasks (chunksize 1, as the peers are run)."""
    from mpi_kernel import Client
    view = Client(client).load_balanced_view()
    view.map_sync(abs, range(100))  # warm-up
    t0 = time.perf_counter()
    view.map_sync(abs, range(count))
    return count / (time.perf_counter() - t0)


def _sleep(seconds: float) -> float:
    start = time.perf_counter()
    time.sleep(seconds)
    return time.perf_counter() - start


def mixed_map(client: MPICommandClient, count: int) -> dict:
    """A load-balanced map of sleeps, 1% of them long (0.2 s, the first of each hundred)
    among quick ones (1 ms): its time against the ideal, max(the work the tasks measured
    / servers, the longest task). A quick task parked behind a long one while another
    server idles shows as the excess; so does the client's turn between tasks."""
    from mpi_kernel import Client
    view = Client(client).load_balanced_view()
    view.map_sync(_sleep, [0.001] * 30)  # the function is known quick, as in a long session
    pauses = [0.2 if n % 100 == 0 else 0.001 for n in range(count)]
    t0 = time.perf_counter()
    work = view.map_sync(_sleep, pauses)
    took = time.perf_counter() - t0
    return {"took_s": took, "ideal_s": max(sum(work) / len(client.servers()), max(work))}


def idle_cpu(client: MPICommandClient, seconds: float) -> list[float]:
    pids = [s["pid"] for s in client.get_server_status().values()] + [os.getpid()]

    def cpu(pid: int) -> float:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    time.sleep(2.0)  # let every wait loop reach its idle sleep (the backoff needs 1 s)
    before = [cpu(p) for p in pids]
    time.sleep(seconds)
    # Rounded to the clock tick's resolution: 5 ticks in 5 s is 1%, not 1.0000000000000053%.
    return [round(100 * (cpu(p) - b) / seconds, 2) for p, b in zip(pids, before)]


def main() -> None:
    reps, idle_seconds = int(sys.argv[1]), float(sys.argv[2])
    client = MPICommandClient()
    client.start_services()
    servers = client.servers()
    out: dict = {"ranks": WORLD.Get_size(), "library": MPI.Get_library_version().splitlines()[0]}
    out["raw_pingpong"] = summarize(raw_pingpong(client, [0], reps, polite=False))
    out["raw_fanout"] = summarize(raw_pingpong(client, servers, reps, polite=True))
    out["roundtrip"] = summarize(timed(lambda: client.push_command_request("1+1", True, [0]), reps, 200))
    out["python_floor"] = summarize(python_floor(client, reps))
    out["bare_client"] = summarize(bare_client(client, reps))
    out["bytecodes"] = bytecodes(client)
    out["fanout"] = summarize(timed(lambda: client.push_command_request("1+1", True, servers), reps, 50))
    out["throughput_per_s"] = throughput(client, max(reps, 3000))
    out["lb_map_per_s"] = lb_map(client, 10_000 if reps >= 1000 else 1_000)
    out["mixed_map"] = mixed_map(client, 2000 if reps >= 1000 else 300)
    for label, nbytes in (("1MB", 10**6), ("100MB", 10**8)):
        array = np.ones(nbytes, dtype=np.uint8)
        n = max(3, reps // (10 if nbytes < 10**8 else 200))
        out[f"raw_send_{label}"] = summarize(raw_send(client, array, n))
        out[f"push_{label}_one"] = summarize(timed(lambda: client.push({"a": array}, [0]), n, 1))
        out[f"push_{label}_all"] = summarize(timed(lambda: client.push({"a": array}, servers), n, 1))
        out[f"raw_bcast_{label}"] = summarize(raw_bcast(client, servers, array, n))
        client.broadcast = "always"  # the same push by broadcast (on one host, "auto" sends directly)
        out[f"push_{label}_all_bcast"] = summarize(timed(lambda: client.push({"a": array}, servers), n, 1))
        client.broadcast = "auto"
        out[f"bytes_{label}"] = nbytes
        client.push_command_request("a = None", True, servers)
    out["idle_cpu_percent"] = idle_cpu(client, idle_seconds)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
