"""The kernel under Slurm's srun, on a real test cluster (../shared/slurm: Debian's Slurm).

Two clusters, one after the other: one node (this machine), and one slurmd per simulated
host (../shared/multihost), where srun puts ranks 0-1 on hostA and 2-3 on hostB, so the
kernel rank is on another host than Jupyter (this process, in the root namespace). The
kernelspec is what `python -m mpi_kernel install --launcher slurm` writes for the MPI of the
current venv: MPICH's wheel with --mpi=pmi2 (a server's death costs only that rank), Open
MPI's with --mpi=pmix (the whole job restarts). Needs root and Slurm's packages
(`../shared/slurm/cluster.sh install`); skips with the reason where they are missing.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernel_helpers import (ANSI, error_text, fake_jupyter, install_kernelspec, interrupt_cell, run, running_kernel,
                            text_of)
from mpi_kernel.jupyter import kernelspec

SHARED = Path(__file__).resolve().parents[3] / "shared"
SLURM = Path(os.environ.get("MPI_KERNEL_SLURM_DIR", SHARED / "slurm"))
MULTIHOST = Path(os.environ.get("MPI_KERNEL_MULTIHOST_DIR", SHARED / "multihost"))
STATE = "/tmp/slurm-mpi-kernel-tests"  # the test cluster's own folder and ports: a cluster
PORTS = {"SLURM_TEST_CTLD_PORT": "6917", "SLURM_TEST_D_PORT": "6918"}  # of a developer's stays
NAME = "mpi-slurm"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (the test cluster's daemons)"
    if not (SLURM / "cluster.sh").exists():
        return f"no test cluster scripts at {SLURM}"
    missing = [p for p in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged") if not Path(p).exists()]
    if missing or not shutil.which("srun"):
        return f"needs Slurm and munge ({SLURM}/cluster.sh install); missing: {missing or ['srun']}"
    return None


pytestmark = [pytest.mark.skipif(_why_not() is not None, reason=str(_why_not())), pytest.mark.timeout(180)]


def open_mpi() -> bool:
    return kernelspec.mpi_family(kernelspec.default_mpiexec()) == "Open MPI"


def cluster_env(layout: str) -> dict[str, str]:
    env = {**os.environ, "SLURM_TEST_DIR": STATE, **PORTS}
    if layout == "three-hosts":
        env.update(SLURM_TEST_MULTIHOST=str(MULTIHOST), SLURM_TEST_CPUS="2")
    return env


@pytest.fixture(scope="module", params=["one-node", "three-hosts"])
def slurm(request):
    """A running test cluster; SLURM_CONF set for srun here and in the kernels' supervisors."""
    layout = request.param
    if layout == "three-hosts" and not (MULTIHOST / "setup.sh").exists():
        pytest.skip(f"no simulated cluster scripts at {MULTIHOST}")
    env = cluster_env(layout)
    up = subprocess.run(["bash", str(SLURM / "cluster.sh"), "up"], env=env, capture_output=True, text=True,
                        timeout=90)
    assert up.returncode == 0, f"the test cluster did not start:\n{up.stdout}\n{up.stderr}"
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = f"{STATE}/etc/slurm.conf"
    OTHERS.update(glob.glob(FOLDERS))  # (the notebooks' session makes one)
    try:
        yield layout
    finally:
        subprocess.run(["bash", str(SLURM / "cluster.sh"), "down"], env=env, capture_output=True, timeout=90)
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before


FOLDERS = "/tmp/mpi-kernel-*"  # the kernel rank's (and other tests' own, made before these)
OTHERS: set[str] = set()  # those of other tests, when the cluster started


def left_behind() -> list[str]:
    """Ranks, job steps and kernel folders still there (the simulated hosts share the pid
    space and /tmp with this one)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    procs = [line for line in out.splitlines()
             if "-m mpi_kernel --kernel" in line or "mpi_kernel --replacement" in line or "slurmstepd" in line]
    return procs + sorted(set(glob.glob(FOLDERS)) - OTHERS)


def wait_nothing_left(seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while left_behind() and time.monotonic() < deadline:
        time.sleep(0.1)
    return left_behind()


def jobs(wait_empty: float = 0) -> list[str]:
    """The cluster's jobs ("ID NAME STATE"); with `wait_empty`, after up to that many seconds
    for them to go (a job's end takes Slurm a moment)."""
    deadline = time.monotonic() + wait_empty
    while True:
        out = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, timeout=30)
        lines = out.stdout.split("\n")[:-1]
        if not lines or time.monotonic() >= deadline:
            return lines
        time.sleep(0.1)


@pytest.fixture(scope="module")
def spec(slurm, tmp_path_factory):
    assert not wait_nothing_left(10), "left from before these tests"
    install_kernelspec(tmp_path_factory.mktemp("prefix"), name=NAME, mpiexec="srun")
    return NAME


@pytest.fixture
def kernel(spec):
    with running_kernel(spec) as (km, kc):
        yield km, kc
    left = wait_nothing_left(10)
    assert not left, f"left 10 s after the kernel's shutdown: {left}"
    assert not jobs(wait_empty=5)


def hosts_line(slurm: str) -> str:
    if slurm == "one-node":
        return f"[stdout:0-2] {socket.gethostname()}\n"
    return "[stdout:0-1] hostA\n[stdout:2] hostB\n"


def test_cells_run_on_the_ranks_srun_placed(kernel, slurm):
    km, kc = kernel
    status, out = run(kc, "%%px\nimport socket\nprint(socket.gethostname())")
    assert status == "ok" and text_of(out) == hosts_line(slurm), out
    status, out = run(kc, "import socket, os\nprint(socket.gethostname(), os.environ['SLURM_JOB_ID'])")
    host, job = text_of(out).split()
    assert status == "ok" and (host == socket.gethostname()) == (slurm == "one-node"), out
    assert [line.split()[0] for line in jobs()] == [job]  # srun's own job, while the kernel runs
    status, out = run(kc, "%mpi_status")
    table = ANSI.sub("", text_of(out))
    assert status == "ok" and "3 idle" in table and (slurm == "one-node" or "hostA" in table), table
    km.restart_kernel(now=False)  # Jupyter's restart: a new job, in a new srun job
    kc.wait_for_ready(timeout=60)
    status, out = run(kc, "import os\nprint(os.environ['SLURM_JOB_ID'])")
    assert status == "ok" and text_of(out).split() != [job], out
    deadline = time.monotonic() + 5
    while len(jobs()) > 1 and time.monotonic() < deadline:  # the first one goes
        time.sleep(0.1)
    assert len(jobs()) == 1, jobs()


def test_interrupt_timeout_and_monitor_under_srun(kernel):
    km, kc = kernel
    reply, took = interrupt_cell(km, kc, "%%px\nimport time\ntime.sleep(60)")
    assert reply["content"]["status"] == "error" and took < 5, reply
    status, out = run(kc, "%%px --timeout 1\nimport time\ntime.sleep(2)")
    assert status == "error" and "--timeout 1 s expired; still busy: ranks 0-2" in error_text(out), error_text(out)
    time.sleep(1.5)
    status, out = run(kc, "%mpi_monitor")
    assert status == "ok" and any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in out)
    status, out = run(kc, "%%px\nrank")
    assert status == "ok" and "Out[2:" in text_of(out), out


def test_a_killed_server_is_reported_in_the_cell_and_the_notebook_goes_on(kernel, slurm):
    """MPICH: only that rank is lost, and %mpi_restart_dead brings it back (srun --overlap).
    Open MPI: its PMIx ends the step; the whole job restarts."""
    _, kc = kernel
    run(kc, "kept = 'client'\n%px kept = 'server'")
    started = time.monotonic()
    status, out = run(kc, "%%px --targets 1\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    message = error_text(out)
    assert status == "error" and time.monotonic() - started < 10, message
    victim = "hostA" if slurm == "three-hosts" else socket.gethostname()
    assert f"server rank 1 on {victim}" in message and "SIGKILL" in message, message
    if open_mpi():
        assert "Every rank's variables are lost" in message and "Open MPI's PMIx ends" in message, message
        kc.wait_for_ready(timeout=60)
    else:
        assert "Only rank 1's variables are lost" in message, message
        status, out = run(kc, "print(kept)\n%px print(kept)")
        assert status == "ok" and "client\n" in text_of(out) and "[stdout:0,2] server" in text_of(out), out
        status, out = run(kc, "%mpi_restart_dead", timeout=60)
        assert status == "ok" and "Started rank 1 anew" in text_of(out), error_text(out)
    status, out = run(kc, "%%px\nfrom mpi4py import MPI\nprint(MPI.COMM_WORLD.allreduce(1))")
    assert status == "ok" and text_of(out) == "[stdout:0-2] 3\n", out


@pytest.mark.parametrize("kill", ["--kill-on-bad-exit=1", "--kill-on-bad-exit=0"])
def test_a_death_the_job_cannot_survive_restarts_it_at_once(slurm, tmp_path, kill):
    """With --kill-on-bad-exit=1 srun ends the step; without it (=0) the step stays (MPICH:
    the job goes on, the test above) or Open MPI's PMIx ends it: the supervisor acts on the
    guard's report either way, and never waits for a cell's timeout."""
    if slurm == "three-hosts":
        pytest.skip("one node is enough: the same supervisor path as on one node")
    if kill.endswith("=0") and not open_mpi():
        pytest.skip("MPICH's ranks survive it (test_a_killed_server_is_reported_in_the_cell...)")
    install_kernelspec(tmp_path, name="mpi-slurm-kill", mpiexec="srun", mpiexec_args=[kill])
    with running_kernel("mpi-slurm-kill") as (_km, kc):
        started = time.monotonic()
        status, out = run(kc, "%%px --targets 0\nimport os\nos._exit(3)")
        message = error_text(out)
        assert status == "error" and time.monotonic() - started < 10, message
        assert "server rank 0" in message and "exited with code 3" in message, message
        assert "Every rank's variables are lost" in message and "Under srun" in message, message
        kc.wait_for_ready(timeout=60)
        assert run(kc, "%%px\n1 + 1")[0] == "ok"
    assert not wait_nothing_left(10)


def test_sigkill_of_jupyter_ends_the_job_step_on_every_host(spec, tmp_path):
    with fake_jupyter(tmp_path, spec) as (jupyter, _supervisor):
        assert jobs(), "the kernel's job should be running"
        os.kill(jupyter.pid, signal.SIGKILL)
        left = wait_nothing_left(10)
        assert not left, f"left 10 s after SIGKILL of Jupyter: {left}"
    assert not jobs(wait_empty=5)


def test_salloc_asks_for_the_allocation_and_gives_it_back(slurm, tmp_path):
    if slurm == "three-hosts":
        pytest.skip("one node is enough: salloc's allocation is the same on more")
    install_kernelspec(tmp_path, name="mpi-salloc", mpiexec="srun", salloc=["-t", "5", "-J", "mpi-kernel-test"])
    with running_kernel("mpi-salloc") as (_km, kc):
        assert [line.split()[1:] for line in jobs()] == [["mpi-kernel-test", "RUNNING"]], jobs()
        assert run(kc, "%%px\n1 + 1")[0] == "ok"
    assert not wait_nothing_left(10)
    assert not jobs(wait_empty=5), "salloc's allocation is still there"


NOTEBOOK = """
import os, sys
sys.path.insert(0, {tests!r})
from kernel_helpers import run, running_kernel, text_of
with running_kernel({name!r}) as (km, kc):
    status, out = run(kc, "%%px\\nimport os\\nprint(os.environ['SLURM_STEP_ID'])")
    print(status, text_of(out).strip(), "beside step", os.environ["SLURM_STEP_ID"], flush=True)
"""


def test_jupyter_in_a_job_step_that_holds_every_cpu_as_batchspawner_runs_it(slurm, spec, tmp_path):
    """batchspawner runs `srun jupyterhub-singleuser` in a batch job: a step that holds the
    allocation's CPUs. The kernel's srun starts its own step beside it (--overlap)."""
    if slurm == "three-hosts":
        pytest.skip("one node is enough")
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK.format(tests=str(Path(__file__).parents[1]), name=spec))
    proc = subprocess.run(["salloc", "-n", "4", "srun", "-n", "1", "-c", "4", sys.executable, str(script)],
                          capture_output=True, text=True, timeout=180)
    # The servers share one step beside the notebook's (step 1, or 2 after a start that
    # start_kernel retried: a relay port taken between jupyter_client's pick and the bind).
    found = re.search(r"^ok \[stdout:0-2\] (\d+) beside step (\d+)$", proc.stdout, re.M)
    assert proc.returncode == 0 and found and found[1] != found[2], proc.stdout + proc.stderr
    assert not wait_nothing_left(10) and not jobs(wait_empty=5)


def test_a_wrong_srun_mpi_says_which_one_this_mpi_needs(slurm):
    if slurm == "three-hosts":
        pytest.skip("one node is enough")
    proc = subprocess.run(["srun", "--mpi=none", "-n", "3", sys.executable, "-m", "mpi_kernel", "-c", "pass"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    needs = "MPICH's wheel needs srun --mpi=pmi2, Open MPI's srun --mpi=pmix"
    assert proc.stderr.count(needs) == 1, proc.stderr  # once, not once per rank


def test_a_kernel_with_the_wrong_srun_mpi_says_the_fix_in_the_cell(slurm, tmp_path):
    if slurm == "three-hosts":
        pytest.skip("one node is enough")
    install_kernelspec(tmp_path, name="mpi-slurm-none", mpiexec="srun", mpiexec_args=["--mpi=none"])
    with running_kernel("mpi-slurm-none") as (_km, kc):
        status, out = run(kc, "%%px\n1 + 1")
        text = error_text(out)
        assert status == "error" and "MPICH's wheel needs srun --mpi=pmi2, Open MPI's srun --mpi=pmix" in text, text
    assert not wait_nothing_left(10)
