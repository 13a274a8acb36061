"""The supervisor (mpi_kernel/jupyter/supervisor.py) with real kernels on one host: deaths
reported in the cell and a new job, the job's end when the supervisor goes, the prelude,
and launch failures that say what went wrong."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from jupyter_client.connect import write_connection_file
from jupyter_client.manager import start_new_kernel

from kernel_helpers import (error_text, install_kernelspec, job_pids, process_tree, run, start_kernel, text_of,
                            wait_gone)

NAME = "mpi-supervised"


@pytest.fixture(scope="module", autouse=True)
def kernelspec(tmp_path_factory):
    # --no-survive: a server's death ends the whole job here, as under launchers that cannot keep
    # the survivors (test_survival.py has the job that goes on without it).
    return install_kernelspec(tmp_path_factory.mktemp("prefix"), name=NAME,
                              prelude="export MPI_KERNEL_TEST_PRELUDE=ran", survive=False)


@pytest.fixture
def kernel():
    km, kc = start_kernel(NAME)
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=False)


def the_death(outputs: list[dict]) -> str:
    errors = [o for o in outputs if o["type"] == "error"]
    assert errors and errors[-1]["ename"] == "MPIJobDied", outputs
    return error_text(outputs)


@pytest.mark.parametrize("how, said", [
    ("import os\nos._exit(3)", "exited with code 3"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "killed by signal 9 (SIGKILL): out of memory"),
    ("import ctypes\nctypes.string_at(0)", "killed by signal 11 (SIGSEGV)"),
])
def test_a_dead_server_is_reported_in_the_cell_and_a_new_job_starts(kernel, how, said):
    km, kc = kernel
    run(kc, "x = 1")
    _, old_job = job_pids(km)
    messages: list[dict] = []
    reply = kc.execute_interactive(f"%%px --targets 1\n{how}", output_hook=messages.append, timeout=60)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["execution_count"] == 2  # the cell's own count, as for any error
    out = [{"type": m["msg_type"], **m["content"]} for m in messages]
    message = the_death(out)
    assert f"server rank 1 on {socket.gethostname()} (pid" in message and said in message, message
    assert "Every rank's variables are lost" in message and "does not keep the other ranks" in message
    assert "The supervisor is starting a new MPI job" in message
    assert not wait_gone(old_job, 5), "the old job's processes are left"
    # The next cell waits for the new job and runs in it: a fresh namespace.
    status, out = run(kc, "%%px\nprint(rank)")
    assert status == "ok" and text_of(out) == "[stdout:0] 0\n[stdout:1] 1\n[stdout:2] 2\n", out
    status, out = run(kc, "x")
    assert status == "error" and "NameError" in error_text(out)
    assert km.is_alive()


def test_an_abort_on_a_server_is_reported(kernel):
    km, kc = kernel
    status, out = run(kc, "%%px --targets 2\nfrom mpi4py import MPI\nMPI.COMM_WORLD.Abort(7)")
    assert status == "error"
    message = the_death(out)
    # The rank says so before it aborts (the launchers then kill every rank and guard at once).
    assert "server rank 2 on" in message, message
    assert "called MPI_Abort with errorcode 7 (Abort(7) on the servers' world)" in message, message


def test_sigkill_of_the_supervisor_ends_the_job(kernel):
    km, kc = kernel
    run(kc, "%%px\nrank")
    supervisor, job = job_pids(km)
    os.kill(supervisor, signal.SIGKILL)
    assert not wait_gone(job, 2), "the MPI job outlived its supervisor by more than 2 s"


def test_the_prelude_runs_before_the_launcher(kernel):
    _, kc = kernel
    status, out = run(kc, "%%px --targets 0\nimport os\nprint(os.environ['MPI_KERNEL_TEST_PRELUDE'])")
    assert status == "ok" and "ran" in text_of(out)


def supervise(tmp_path, *launcher: str) -> subprocess.CompletedProcess:
    connection = tmp_path / "kernel.json"
    write_connection_file(str(connection), ip="127.0.0.1", key=b"secret")
    return subprocess.run([sys.executable, "-m", "mpi_kernel", "supervise", "-f", str(connection), "--",
                           *launcher], capture_output=True, text=True, timeout=60)


def test_a_launcher_that_fails_ends_the_supervisor_with_its_reason(tmp_path):
    proc = supervise(tmp_path, sys.executable, "-c", "import sys; sys.exit('no such partition: debug')")
    assert proc.returncode == 1
    assert "no such partition: debug" in proc.stderr
    assert "the MPI job ended before the kernel started (launcher exit 1)" in proc.stderr


# A "launcher" that starts one process: a world of size 1, as the launcher of another MPI
# gives, or srun with the wrong --mpi.
NOT_A_LAUNCHER = """#!/bin/sh
[ "$1" = --version ] && { echo "not an MPI launcher"; exit 0; }
shift 2  # -n N
exec "$@"
"""


def test_a_job_that_cannot_start_says_why_in_every_cell_until_a_restart(tmp_path):
    """The rank says why it cannot serve; the supervisor stands in for the kernel and puts
    that in each cell (a kernel that died would leave it in the server's log only)."""
    fake = tmp_path / "mpiexec"
    fake.write_text(NOT_A_LAUNCHER)
    fake.chmod(0o755)
    install_kernelspec(tmp_path / "prefix", name="mpi-cannot-start", mpiexec=str(fake))
    km, kc = start_kernel("mpi-cannot-start")
    try:
        for _ in range(2):
            status, out = run(kc, "1 + 1")
            text = error_text(out)
            assert status == "error" and "the MPI job ended before the kernel started" in text, text
            assert "mpi_kernel: error: mpi-kernel needs at least 2 MPI processes" in text, text
            assert "then restart the kernel" in text, text
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert not km.is_alive()


def test_supervise_without_a_launcher_is_a_usage_error(tmp_path):
    proc = supervise(tmp_path)
    assert proc.returncode == 2 and "give the launcher's argv after --" in proc.stderr


def test_the_job_is_aborted_when_jupyter_stops_waiting(tmp_path):
    """SIGTERM (jupyter_client's terminate) ends the job on every host and the supervisor."""
    connection = tmp_path / "kernel.json"
    write_connection_file(str(connection), ip="127.0.0.1", key=b"secret")
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    sup = subprocess.Popen([sys.executable, "-m", "mpi_kernel", "supervise", "-f", str(connection), "--",
                            mpiexec, "-n", "3", sys.executable, "-m", "mpi_kernel", "--kernel"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(process_tree(sup.pid)) < 8 and time.monotonic() < deadline:
            time.sleep(0.1)  # supervisor, mpiexec, proxy, 3 guards and 3 ranks
        job = process_tree(sup.pid)[1:]
        time.sleep(1.0)  # let the kernel rank call back
        sup.terminate()
        assert sup.wait(timeout=5) == 0
        assert not wait_gone(job, 2)
        assert "ending the MPI job: the supervisor got SIGTERM" in sup.stderr.read()
    finally:
        sup.kill()


def test_a_frontend_that_exits_right_after_its_shutdown_request_gets_an_orderly_stop(tmp_path):
    """jupyter console sends shutdown_request and exits at once: the stop is not turned
    into an abort, and the job is still gone within 2 s."""
    script = tmp_path / "console.py"
    script.write_text(
        "import os, time\nfrom jupyter_client.manager import KernelManager\n"
        f"km = KernelManager(kernel_name={NAME!r})\nkm.start_kernel()\n"
        "kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=90)\n"
        "print(time.monotonic(), flush=True)\nkc.shutdown()\n"
        "time.sleep(0.2)\nos._exit(0)\n")  # the request must leave (zmq sends in a thread)
    # run() returns when every process holding the console's stderr (the whole job) has ended.
    console = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert time.monotonic() - float(console.stdout.split()[0]) < 2.5
    assert "the MPI job ended (launcher exit 0)" in console.stderr
    assert "aborting the MPI job" not in console.stderr


def test_nbclient_runs_a_notebook_on_the_kernel_without_configuration():
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("%%px\nrank * 2"),
                                         nbformat.v4.new_code_cell("6 * 7")])
    NotebookClient(nb, kernel_name=NAME, timeout=60).execute()
    first, second = (c["outputs"] for c in nb.cells)
    assert "Out[2:" in "".join(o.get("text", "") for o in first) and "4" in str(first)
    assert second[0]["data"]["text/plain"] == "42"


def test_a_launch_that_meets_open_mpis_pmix_race_is_tried_again(tmp_path):
    """Open MPI's launcher sometimes fails before any rank runs (supervisor.LAUNCH_RACE); the
    supervisor starts it again instead of reporting a dead kernel. A stand-in launcher fails so
    the first time, then runs the real mpiexec."""
    from mpi_kernel.jupyter.kernelspec import default_mpiexec
    from mpi_kernel.jupyter.supervisor import LAUNCH_RACE
    tried = tmp_path / "tried"
    fake = tmp_path / "mpiexec"
    fake.write_text(  # only the job's launch fails, not the launcher's --version asked before it
        f'#!/bin/sh\ncase "$*" in *mpi_kernel*) if [ ! -e {tried} ]; then touch {tried}; '
        f'echo "The {LAUNCH_RACE}. We cannot" >&2; exit 213; fi;; esac\nexec {default_mpiexec()} "$@"\n')
    fake.chmod(0o755)
    install_kernelspec(tmp_path / "prefix", name="mpi-race", mpiexec=str(fake))
    km, kc = start_new_kernel(kernel_name="mpi-race", startup_timeout=60)  # no retry of its own
    try:
        status, out = run(kc, "%%px\nrank")
        assert status == "ok" and "Out[0:" in text_of(out) and tried.exists()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
