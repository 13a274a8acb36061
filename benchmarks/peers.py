"""The peers on the same machine: ipyparallel (3 MPI engines) and mpi4py.futures (3 workers).

Each is measured the way its users use it; the kernel-cell comparison uses the
same jupyter_client loop as mpi-kernel's %%px cell.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .stats import summarize, timed

BIN = str(Path(sys.executable).parent)
FUTURES_JOB = r"""
import json, sys, time
from mpi4py.futures import MPIPoolExecutor
sys.path.insert(0, {root!r})
from benchmarks.stats import summarize, timed

def one_plus_one():
    return 1 + 1

if __name__ == "__main__":
    reps = {reps}
    with MPIPoolExecutor() as pool:
        rt = timed(lambda: pool.submit(one_plus_one).result(), reps, warmup=20)
        n = max(reps * 5, 1000)
        t0 = time.perf_counter()
        list(pool.map(abs, range(n), chunksize=1))
        print(json.dumps({{"submit_result": summarize(rt), "map_per_s": n / (time.perf_counter() - t0)}}))
"""


def futures(reps: int) -> dict:
    """mpiexec -n 4 python -m mpi4py.futures: 1 manager + 3 workers."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "futures_job.py"
        script.write_text(FUTURES_JOB.format(root=str(Path(__file__).resolve().parent.parent), reps=reps))
        proc = subprocess.run([f"{BIN}/mpiexec", "-n", "4", sys.executable, "-m", "mpi4py.futures",
                               str(script)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ipyparallel(reps: int) -> dict:
    """A 3-engine cluster launched with engines="mpi": start, apply, execute."""
    try:
        import ipyparallel as ipp
    except ImportError:
        return {"error": "ipyparallel is not installed (pip install -e '.[bench]')"}
    os.environ["PATH"] = BIN + os.pathsep + os.environ.get("PATH", "")  # its mpiexec
    t0 = time.perf_counter()
    cluster = ipp.Cluster(n=3, engines="mpi", log_level=40)
    rc = cluster.start_and_connect_sync()
    rc.wait_for_engines(3, timeout=120)
    out: dict = {"cluster_start_s": time.perf_counter() - t0}
    try:
        out["apply_one"] = summarize(timed(lambda: rc[0].apply_sync(lambda: 1 + 1), reps, warmup=20))
        view = rc[:]
        out["execute_all"] = summarize(timed(lambda: view.execute("1+1", block=True), reps, warmup=20))
        lview = rc.load_balanced_view()
        lview.map_sync(abs, range(50))
        t0 = time.perf_counter()
        lview.map_sync(abs, range(1000))  # chunksize 1, its default
        out["lb_map_per_s"] = 1000 / (time.perf_counter() - t0)
    finally:
        cluster.stop_cluster_sync()
    return out


def ipyparallel_cell(reps: int) -> dict:
    """`%px 1+1` as a Jupyter cell in a plain IPython kernel with an activated 3-engine cluster."""
    try:
        import ipyparallel  # noqa: F401
    except ImportError:
        return {"error": "ipyparallel is not installed"}
    from jupyter_client.manager import start_new_kernel

    from .kernel_bench import cell_times
    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=120,
                              env={**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")})
    try:
        setup = ("import ipyparallel as ipp\ncluster = ipp.Cluster(n=3, engines='mpi', log_level=40)\n"
                 "rc = cluster.start_and_connect_sync()\nrc.wait_for_engines(3, timeout=120)\nrc.activate()")
        reply = kc.execute_interactive(setup, timeout=300, output_hook=lambda msg: None)
        if reply["content"]["status"] != "ok":
            return {"error": f"{reply['content'].get('ename')}: {reply['content'].get('evalue')}"}
        samples = cell_times(kc, "%px 1+1", reps)
        kc.execute_interactive("cluster.stop_cluster_sync()", timeout=120, output_hook=lambda msg: None)
        return {"cell_px": summarize(samples)}
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
