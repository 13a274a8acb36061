"""The kernel on a simulated cluster of three hosts (../shared/multihost: network namespaces).

Jupyter (this process) stays in the root namespace; servers go to hostA (2) and hostB (1);
the kernel rank goes to hostC, so every channel crosses the relay. Runs with the MPI of the
current venv (MPICH or Open MPI), with and without a PID namespace per host (MH_PIDNS=1).
Needs root and `ip netns`; skips with the reason where they are missing.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernel_helpers import (ANSI, error_text, fake_jupyter, install_kernelspec, interrupt_cell, run, running_kernel,
                            start_kernel, survives_deaths, text_of)

HOSTS = ("hostA", "hostB", "hostC")
MULTIHOST = Path(os.environ.get("MPI_KERNEL_MULTIHOST_DIR",
                                Path(__file__).resolve().parents[3] / "shared" / "multihost"))


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not shutil.which("ip") or not shutil.which("unshare"):
        return "needs iproute2 and util-linux (ip, unshare)"
    if not (MULTIHOST / "setup.sh").exists():
        return f"no simulated cluster scripts at {MULTIHOST}"
    return None


pytestmark = [pytest.mark.skipif(_why_not() is not None, reason=str(_why_not())), pytest.mark.timeout(300)]


def open_mpi() -> bool:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    out = subprocess.run([str(mpiexec), "--version"], capture_output=True, text=True, timeout=30)
    return "Open MPI" in out.stdout + out.stderr


# agent.sh, but with a /tmp of each host's own, as real hosts have: the simulated hosts share
# one filesystem, and with a PID namespace per host Open MPI's daemons on two hosts get the
# same pid and so the same session directory (/tmp/prted.PID), and remove each other's files.
AGENT_WRAPPER = """#!/bin/bash
args=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        -o|-p|-l|-i|-F|-E|-b|-c|-e|-m|-S|-W|-w|-J|-L|-R|-D) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
host=$1; shift
dir=/tmp/mpi-kernel-mh-$host
exec {agent} "$host" "mkdir -p $dir && TMPDIR=$dir && export TMPDIR && $*"
"""


def agent(tmp_path: Path) -> Path:
    wrapper = tmp_path / "agent.sh"
    wrapper.write_text(AGENT_WRAPPER.format(agent=MULTIHOST / "agent.sh"))
    wrapper.chmod(0o755)
    return wrapper


def launcher_args(agent: Path) -> str:
    if open_mpi():
        return (f"--mca plm_rsh_agent {agent} --host hostA:2,hostB:1,hostC:1 "
                f"--map-by slot:oversubscribe --bind-to none")
    return f"-hosts hostA:2,hostB:1,hostC:1 -launcher ssh -launcher-exec {agent}"


@pytest.fixture(scope="module")
def cluster():
    existed = Path("/run/netns/hostC").exists()
    setup = subprocess.run(["bash", str(MULTIHOST / "setup.sh")], capture_output=True, text=True, timeout=60)
    if setup.returncode != 0:
        pytest.skip(f"the simulated cluster could not be set up: {setup.stderr.strip()[-300:]}")
    yield
    for host in HOSTS:  # the per-host TMPDIRs of AGENT_WRAPPER
        shutil.rmtree(f"/tmp/mpi-kernel-mh-{host}", ignore_errors=True)
    if not existed:
        subprocess.run(["bash", str(MULTIHOST / "teardown.sh")], capture_output=True, timeout=60)


def netns_pids() -> dict[str, list[str]]:
    """Processes still running inside each simulated host."""
    return {h: subprocess.run(["ip", "netns", "pids", h], capture_output=True, text=True,
                              timeout=10).stdout.split() for h in HOSTS}


def wait_hosts_empty(seconds: float) -> dict[str, list[str]]:
    deadline = time.monotonic() + seconds
    while any(netns_pids().values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {h: p for h, p in netns_pids().items() if p}


@pytest.fixture(scope="module", params=["0", "1"], ids=["shared-pids", "MH_PIDNS"])
def spec(request, cluster, tmp_path_factory):
    name = f"mpi-mh-{request.param}"
    args = launcher_args(agent(tmp_path_factory.mktemp("agent"))).split()
    install_kernelspec(tmp_path_factory.mktemp("prefix"), name=name, mpiexec_args=args,
                       env={"MH_PIDNS": request.param})
    return name


@pytest.fixture
def kernel(spec):
    with running_kernel(spec) as (km, kc):
        yield km, kc
    assert not wait_hosts_empty(5)


def test_cells_run_on_three_hosts_with_the_kernel_on_hostC(kernel):
    _, kc = kernel
    status, out = run(kc, "%%px\nimport socket\nprint(socket.gethostname())")
    assert status == "ok" and text_of(out) == "[stdout:0-1] hostA\n[stdout:2] hostB\n", out
    status, out = run(kc, "import socket\nprint(socket.gethostname())")
    assert status == "ok" and text_of(out) == "hostC\n"


def test_a_big_push_leaves_the_kernels_host_once_by_broadcast(kernel):
    _, kc = kernel
    status, out = run(kc, "import numpy as np\nbig = np.arange(3_000_000, dtype=np.float64)\n%mpi_push big")
    assert status == "ok", out
    status, out = run(kc, "%%px\nfrom mpi_kernel.framework.server import MPICommandServer\n"
                          "float(big.sum()), MPICommandServer().broadcasts.joined")
    assert status == "ok" and "Out[0-2:" in text_of(out) and f"({float(sum(range(3_000_000)))}, 1)" \
        in text_of(out), out


def test_status_interrupt_and_timeout_across_hosts(kernel):
    km, kc = kernel
    status, out = run(kc, "%mpi_status")
    table = ANSI.sub("", str(out))
    assert status == "ok" and "hostA" in table and "hostB" in table, out
    status, out = run(kc, "%%px --timeout 1\nimport time\ntime.sleep(60)")
    assert status == "error" and "rank" in error_text(out).lower()
    reply, _ = interrupt_cell(km, kc, "%%px\nimport time\ntime.sleep(60)")
    assert reply["content"]["status"] in ("error", "abort")
    status, out = run(kc, "%%px\nrank")
    assert status == "ok" and "Out[2:" in text_of(out)


def test_monitor_shows_a_widget(kernel):
    _, kc = kernel
    status, out = run(kc, "%mpi_monitor")
    assert status == "ok"
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in out), out


def test_a_server_killed_on_hostB_is_reported_and_the_job_goes_on_or_restarts(kernel):
    """MPICH's hydra keeps the survivors on every host (test_survival.py); Open MPI's
    launcher ends the job, and the supervisor starts a new one."""
    _, kc = kernel
    run(kc, "kept = 'client'")
    status, out = run(kc, "%%px --targets 2\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert status == "error"
    message = error_text(out)
    assert "server rank 2 on hostB" in message and "SIGKILL" in message, message
    survived = survives_deaths()
    assert ("Only rank 2's variables are lost" if survived else "Every rank's variables are lost") in message
    status, out = run(kc, "%%px\nimport socket\nprint(socket.gethostname())", timeout=90)
    hosts = text_of(out)
    assert status == "ok" and ("[stdout:2] hostB" in hosts) != survived, hosts
    assert (run(kc, "print(kept)")[0] == "ok") == survived  # the notebook's variable: kept or lost
    if survived:  # a replacement, wherever hydra puts it, and a world of every server again
        status, out = run(kc, "%mpi_restart_dead", timeout=90)
        assert status == "ok" and "Started rank 2 anew" in text_of(out), error_text(out)
        status, out = run(kc, "%%px --no-merge\nimport socket\nprint(socket.gethostname(), comm.allreduce(1))")
        assert status == "ok" and "[stdout:2] hostB 3" in text_of(out), text_of(out)  # on its own host


def test_restart_and_shutdown_leave_no_process_on_any_host(spec):
    km, kc = start_kernel(spec)
    try:
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=90)
        status, out = run(kc, "import socket\nsocket.gethostname()")
        assert status == "ok" and "hostC" in str(out)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert not wait_hosts_empty(2), "processes left on the simulated hosts"


@pytest.mark.parametrize("victim", ["jupyter", "supervisor"])
def test_sigkill_of_the_jupyter_side_leaves_no_process_on_any_host(spec, tmp_path, victim):
    """Jupyter, or the supervisor it started, is SIGKILLed: the job goes from every host."""
    with fake_jupyter(tmp_path, spec) as (jupyter, supervisor):
        assert all(netns_pids().values()), "the job should have ranks on every host"
        os.kill(jupyter.pid if victim == "jupyter" else supervisor, signal.SIGKILL)
        left = wait_hosts_empty(2)
        assert not left, f"left on the simulated hosts 2 s after SIGKILL of {victim}: {left}"
