"""A server's death costs only that rank (MPICH's `mpiexec -disable-auto-cleanup`, Open MPI's
`mpiexec --with-ft ulfm`): the
cell says so, the notebook's and the survivors' variables stay, and later cells run on the
survivors. The whole-job restart (other launchers, `install --no-survive`) is in
test_supervisor.py."""
from __future__ import annotations

import glob
import socket
import time

import pytest

from kernel_helpers import (error_text, install_surviving_kernelspec, job_pids, running_kernel, run, start_kernel,
                            survival, text_of, wait_gone)

NAME = "mpi-survive"
KILLS = {
    "sigkill": ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "killed by signal 9 (SIGKILL)"),
    "exit": ("import os\nos._exit(3)", "exited with code 3"),
    "segfault": ("import ctypes\nctypes.string_at(0)", "killed by signal 11 (SIGSEGV)"),
}


@pytest.fixture(scope="module", autouse=True)
def kernelspec_installed(tmp_path_factory):
    return install_surviving_kernelspec(tmp_path_factory.mktemp("prefix"), NAME)


@pytest.fixture
def kernel():
    with running_kernel(NAME) as (km, kc):
        yield km, kc


def errors(outputs: list[dict]) -> list[dict]:
    return [o for o in outputs if o["type"] == "error"]


@pytest.mark.parametrize("kill", list(KILLS))
def test_a_dead_server_loses_only_its_own_variables(kernel, kill):
    km, kc = kernel
    how, said = KILLS[kill]
    assert run(kc, "mine = 'client state'")[0] == "ok"
    assert run(kc, "%%px\nkept = rank * 10")[0] == "ok"
    supervisor, job = job_pids(km)
    status, out = run(kc, f"%%px --targets 1\n{how}", timeout=30)
    text = error_text(out)
    assert status == "error" and errors(out)[-1]["ename"] == "RemoteError", out
    assert "[1:execute]: MPIRankDied on rank 1" in text, text
    assert f"server rank 1 on {socket.gethostname()} (pid" in text and said in text, text
    assert "Only rank 1's variables are lost" in text, text
    # The kernel did not restart: the client's and the survivors' variables are there.
    assert job_pids(km)[0] == supervisor
    status, out = run(kc, "print(mine)")
    assert status == "ok" and "client state" in text_of(out)
    status, out = run(kc, "%%px\nprint(rank, kept)")
    assert status == "ok", error_text(out)
    for rank in (0, 2):
        assert f"{rank} {rank * 10}" in text_of(out), text_of(out)
    assert "1 10" not in text_of(out)
    status, out = run(kc, "%mpi_status")
    assert status == "ok" and "dead" in text_of(out), error_text(out)
    status, out = run(kc, "%%px --targets 1\n1")
    said = text_of(out, "stderr")
    assert status == "error" and "UsageError: server 1 is dead (" in said and "%mpi_restart_dead" in said, out
    # Point to point between survivors works; the shutdown ends the job without MPI_Finalize.
    status, out = run(kc, "%%px --targets 0,2\nif rank == 0: comm.send('hi', dest=2)\n"
                          "if rank == 2: print('got', comm.recv(source=0))")
    assert status == "ok" and "got hi" in text_of(out), error_text(out)
    kc.stop_channels()
    km.shutdown_kernel(now=False)
    assert not wait_gone([supervisor, *job], 10), "processes left after the shutdown"


def test_a_death_while_idle_is_told_in_the_next_cell(kernel):
    km, kc = kernel
    status, out = run(kc, "%%px --targets 2 --noblock\nimport os, threading\n"
                          "threading.Timer(0.3, os._exit, [5]).start()")
    assert status == "ok"
    time.sleep(1.5)
    status, out = run(kc, "%%px\nprint('alive', rank)")
    assert status == "ok", error_text(out)
    assert "alive 0" in text_of(out) and "alive 1" in text_of(out) and "alive 2" not in text_of(out)
    note = text_of(out, "stderr")
    assert "server rank 2" in note and "exited with code 5" in note, note


def test_restart_dead_brings_the_rank_back_empty_and_the_world_whole(kernel):
    km, kc = kernel
    assert run(kc, "%%px\nkept = rank * 10\nimport os\npid = os.getpid()")[0] == "ok"
    status, out = run(kc, "%mpi_restart_dead")
    assert status == "ok" and "No server has died" in text_of(out)
    run(kc, "%%px --targets 0,1\nimport os\nos._exit(4)")
    status, out = run(kc, "%mpi_restart_dead", timeout=60)
    said = text_of(out)
    assert status == "ok" and "Started ranks 0-1 anew" in said and "variables are empty" in said, error_text(out)
    status, out = run(kc, "%%px\nfrom mpi4py import MPI\n"
                          "print(rank, MPI.COMM_WORLD.Get_size(), comm.allreduce(rank), 'kept' in dir())")
    text = text_of(out)
    assert status == "ok", error_text(out)
    for line in ("0 3 3 False", "1 3 3 False", "2 3 3 True"):
        assert line in text, text
    status, out = run(kc, "%mpi_status")
    assert status == "ok" and "3 idle" in text_of(out) and "dead" not in text_of(out), text_of(out)
    # A second death after the restart is handled the same way.
    status, out = run(kc, "%%px --targets 1\nimport os\nos._exit(6)")
    assert status == "error" and "exited with code 6" in error_text(out)
    status, out = run(kc, "%%px\nprint('left', rank)")
    assert status == "ok" and "left 0" in text_of(out) and "left 2" in text_of(out)


def test_a_death_in_a_collective_ends_the_cell_and_the_world_comes_back_whole(kernel):
    """Open MPI's ULFM fails the collective on the survivors; MPICH never tells them, so the
    cell ends on the stacks' diagnosis, and --end-busy replaces the ranks stuck in it."""
    km, kc = kernel
    started = time.monotonic()
    status, out = run(kc, "%%px\nimport os\nif rank == 1: os._exit(2)\ncomm.Barrier()", timeout=30)
    took, text = time.monotonic() - started, error_text(out)
    assert status == "error" and took < 5, (took, text)
    assert "[1:execute]: MPIRankDied on rank 1" in text and "exited with code 2" in text, text
    if survival(True) == "ulfm":
        assert "[0,2:execute]: Exception on ranks 0, 2" in text and "MPI_ERR_PROC_FAILED" in text, text
        restart, started_anew = "%mpi_restart_dead", "Started rank 1 anew"
    else:
        assert "Ranks 0, 2 wait in the collective `comm.Barrier()`" in text and "Rank 1 died" in text, text
        status, out = run(kc, "%mpi_restart_dead")
        assert status == "error" and "--end-busy" in text_of(out, "stderr"), out
        restart, started_anew = "%mpi_restart_dead --end-busy", "Started ranks 0-2 anew"
    status, out = run(kc, restart, timeout=60)
    assert status == "ok" and started_anew in text_of(out), error_text(out)
    status, out = run(kc, "%%px\ncomm.Barrier()\nprint('through', rank)")
    assert status == "ok" and text_of(out).count("through") == 3, error_text(out)


def test_a_death_in_a_collective_of_a_local_cell_never_hangs_the_kernel(kernel):
    """The client's own part of a --local cell waits in the collective too. Open MPI fails it
    there as well; under MPICH it would never return, and no interrupt reaches C: the job
    ends (localwatch.py) and the cell says why, and a new job starts."""
    km, kc = kernel
    run(kc, "kept = 'client'")
    started = time.monotonic()
    status, out = run(kc, "%%px --local\nimport os\nfrom mpi4py import MPI\nw = MPI.COMM_WORLD\n"
                          "if w.Get_rank() == 1: os._exit(2)\nw.Barrier()", timeout=30)
    took, text = time.monotonic() - started, error_text(out)
    assert status == "error" and took < 10, (took, text)
    if survival(True) == "ulfm":
        assert "MPI_ERR_PROC_FAILED" in text and "MPIRankDied" in text, text
        assert run(kc, "print(kept)")[0] == "ok"
        return
    assert "MPIJobDied" in text and "the kernel's own rank 3" in text, text
    assert "waited in w.Barrier() with dead rank 1, which MPICH never returns" in text, text
    kc.wait_for_ready(timeout=60)
    status, out = run(kc, "%%px\nprint('new job', comm.allreduce(1))")
    assert status == "ok" and "[stdout:0-2] new job 3" in text_of(out), error_text(out)


def test_twenty_deaths_and_restarts_leave_no_processes_and_no_growing_descriptors(kernel):
    km, kc = kernel
    probe = ("import os, resource\nprint('fds', len(os.listdir('/proc/self/fd')), 'rss', "
             "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")  # the kernel rank's own process

    def measure() -> tuple[int, int, int]:
        status, out = run(kc, probe)
        words = text_of(out).split()
        return len(job_pids(km)[1]), int(words[1]), int(words[3])

    run(kc, "%%px --targets 1\nimport os\nos._exit(1)")  # the first replacement's own costs
    status, out = run(kc, "%mpi_restart_dead")
    assert status == "ok" and "Started rank 1 anew" in text_of(out), error_text(out)
    processes, fds, rss = measure()
    for cycle in range(20):
        status, out = run(kc, "%%px --targets 1\nimport os\nos._exit(1)")
        assert status == "error" and "MPIRankDied" in error_text(out), (cycle, out)
        status, out = run(kc, "%mpi_restart_dead", timeout=60)
        assert status == "ok" and "Started rank 1 anew" in text_of(out), f"cycle {cycle}: {error_text(out)}"
    status, out = run(kc, "%%px\nprint('sum', comm.allreduce(rank))")
    assert status == "ok" and "[stdout:0-2] sum 3" in text_of(out), text_of(out)
    after = measure()
    assert after[0] == processes, f"job processes {processes} -> {after[0]}"
    assert after[1] <= fds + 20, f"the kernel rank's descriptors grew from {fds} to {after[1]}"
    assert after[2] <= rss + 50_000, f"the kernel rank's peak memory grew from {rss} to {after[2]} kB"


def test_an_abort_on_a_server_still_ends_the_whole_job(kernel):
    """MPI_Abort ends every rank whatever the launcher keeps: the death is the job's, not one rank's."""
    km, kc = kernel
    status, out = run(kc, "%%px --targets 2\ncomm.Abort(7)", timeout=60)
    text = error_text(out)
    assert status == "error" and "MPIJobDied" in text and "called MPI_Abort with errorcode 7" in text, text
    assert "MPIRankDied" not in text


def mpich_segments() -> set[str]:
    return set(glob.glob("/dev/shm/mpich_shm_*"))


@pytest.mark.parametrize("end", ["death, then shutdown", "abort"])
def test_a_job_that_skips_mpi_finalize_leaves_no_shared_memory_behind(end):
    """MPICH unlinks its shared-memory segments in MPI_Finalize, which a job that lost a rank
    skips, and an abort too: the ranks unlink those they map (environment.py)."""
    if survival(True) != "hydra":
        pytest.skip("MPICH's segments (/dev/shm/mpich_shm_*)")
    before = mpich_segments()
    km, kc = start_kernel(NAME)
    try:
        job = mpich_segments() - before
        assert job, "the job should have its segments while it runs"
        victim = "import os\nos._exit(1)" if end.startswith("death") else "comm.Abort(7)"
        status, out = run(kc, f"%%px --targets 1\n{victim}", timeout=60)
        assert status == "error", out
        if end == "abort":
            kc.wait_for_ready(timeout=60)  # a new job, with segments of its own
            assert not job & mpich_segments(), f"the aborted job's segments are left: {sorted(job)}"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    left = mpich_segments() - before
    assert not left, f"{end}: left in /dev/shm: {sorted(left)}"
