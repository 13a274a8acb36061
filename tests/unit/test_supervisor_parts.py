"""Pure parts of the Jupyter side: the link's signed lines, death reports, the guard's records."""
from __future__ import annotations

import os
import signal
import socket

import pytest

from mpi_kernel.jupyter import deaths, guard, link

KEY = b"0123-key"


def test_link_lines_round_trip_and_reject_a_wrong_key():
    line = link.encode(KEY, {"kind": "hello", "ports": {"shell": 5}})
    assert link.decode(KEY, line) == {"kind": "hello", "ports": {"shell": 5}}
    with pytest.raises(link.LinkError, match="wrong signature"):
        link.decode(b"another key", line)
    forged = line.replace(b'"shell":5', b'"shell":6')
    with pytest.raises(link.LinkError, match="wrong signature"):
        link.decode(KEY, forged)


def test_link_without_a_key_signs_nothing_as_jupyter_does():
    assert link.decode(b"", link.encode(b"", {"kind": "abort"})) == {"kind": "abort"}
    with pytest.raises(link.LinkError):
        link.decode(b"", link.encode(KEY, {"kind": "abort"}))


def test_link_reader_joins_pieces_and_sees_the_close():
    a, b = socket.socketpair()
    b.setblocking(False)
    reader = link.LineReader(b, KEY)
    line = link.encode(KEY, {"kind": "hello", "n": 1})
    a.sendall(line[:7])
    assert reader.read() == ([], False)
    a.sendall(line[7:] + link.encode(KEY, {"kind": "abort", "reason": "r"}))
    assert reader.read() == ([{"kind": "hello", "n": 1}, {"kind": "abort", "reason": "r"}], False)
    a.close()
    assert reader.read() == ([], True)


def test_link_info_travels_in_the_environment():
    info = link.LinkInfo(host="login1", addresses=["login1", "10.0.0.5"], port=4242, key="k")
    assert link.LinkInfo.from_env({link.ENV: info.to_env()}) == info
    assert link.LinkInfo.from_env({}) is None


def test_link_connect_says_what_to_do_when_the_supervisor_is_unreachable():
    info = link.LinkInfo(host="not-this-host", addresses=["127.0.0.1"], port=1, key="k")
    with pytest.raises(ConnectionError, match="--link-address"):
        link.connect(info, timeout=1)


def test_death_words():
    assert deaths.how({"signal": 9}) == ("killed by signal 9 (SIGKILL): out of memory, or killed by "
                                         "the batch system?")
    assert deaths.how({"signal": 11}).startswith("killed by signal 11 (SIGSEGV): a crash in C")
    assert deaths.how({"code": 3}).startswith("exited with code 3")
    assert deaths.who({"rank": 3, "host": "hostC", "pid": 7}, 3) == "the kernel's own rank 3 on hostC (pid 7)"
    ended = [{"rank": 2, "host": "hostB", "pid": 5, "signal": 9}, {"rank": 3, "host": "hostC", "pid": 7, "code": 1}]
    text = deaths.summary(ended, 9, 3)
    assert text.startswith("server rank 2 on hostB (pid 5) killed by signal 9")
    assert text.endswith("; then rank 3 on hostC (exit code 1)")


def test_the_cause_is_not_a_rank_the_launcher_terminated():
    ended = [{"rank": 0, "host": "h", "pid": 1, "signal": 15}, {"rank": 2, "host": "h", "pid": 3, "code": 7}]
    assert deaths.summary(ended, 7, 3).startswith("server rank 2 on h (pid 3) exited with code 7")
    # Across hosts the kernel rank's own exit (its MPI lost a peer) can be reported first.
    ended = [{"rank": 3, "host": "hostC", "pid": 9, "code": 14}, {"rank": 2, "host": "hostB", "pid": 5, "signal": 9}]
    assert deaths.summary(ended, 1, 3).startswith("server rank 2 on hostB (pid 5) killed by signal 9")


def test_death_without_reports_names_the_launcher_status():
    assert deaths.summary([], -9, 3).endswith("the launcher killed by signal 9 (SIGKILL): out of memory, "
                                              "or killed by the batch system?")
    assert deaths.summary([], 7, 3).startswith("a rank called MPI_Abort with errorcode 7, or the launcher "
                                               "failed (it exited with code 7")


def test_death_report_keeps_real_output_and_drops_the_launchers_banner():
    tail = ["=" * 40, "=   PID 1 RUNNING AT vm", "Traceback: my solver failed",
            "YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)"]
    cause, lines = deaths.report([{"rank": 1, "host": "h", "pid": 2, "code": 4}], 4, 3, tail, True)
    assert cause == "server rank 1 on h (pid 2) exited with code 4 (MPI_Abort, sys.exit or os._exit?)"
    assert "    Traceback: my solver failed" in lines
    assert not [line for line in lines if "RUNNING AT" in line or "EXIT STRING" in line]
    assert "Every rank's variables are lost." in lines
    assert lines[-1].startswith("The supervisor is starting a new MPI job")
    _, lines = deaths.report([], 1, 3, [], False)
    assert lines[-1].startswith("The kernel has stopped")


def test_guard_records():
    assert guard.record(0, 1, 10) is None
    assert guard.record(3 << 8, 1, 10) == {"rank": 1, "host": socket.gethostname(), "pid": 10, "code": 3}
    assert guard.record(signal.SIGKILL, 2, 11)["signal"] == 9


def test_guard_finds_the_rank_from_any_launcher():
    assert guard.launcher_rank({"PMI_RANK": "3"}) == 3
    assert guard.launcher_rank({"OMPI_COMM_WORLD_RANK": "5"}) == 5
    assert guard.launcher_rank({"SLURM_PROCID": "7"}) == 7
    assert guard.launcher_rank({}) is None


def test_guard_reports_and_ends_as_its_rank_did(tmp_path):
    """A real fork: the child is killed by SIGKILL; the guard reports it and dies the same way."""
    import subprocess
    import sys
    code = ("from mpi_kernel.jupyter import guard\nimport os, signal\nguard.guard()\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PMI_RANK": "4"})
    assert proc.returncode == -signal.SIGKILL
    assert proc.stderr.startswith(guard.MARK)
    assert '"rank": 4' in proc.stderr and '"signal": 9' in proc.stderr


def test_single_host_jobs_are_told_to_listen_on_loopback_only():
    from mpi_kernel.jupyter.supervisor import job_environment, single_host
    assert single_host(["/venv/bin/mpiexec", "-n", "4", "python"], {})
    assert not single_host(["mpiexec", "-hosts", "a,b", "-n", "4"], {})
    assert not single_host(["mpiexec", "--hostfile=hosts", "-n", "4"], {})
    assert not single_host(["mpiexec", "-n", "4"], {"PBS_NODEFILE": "/x"})
    assert not single_host(["srun", "-n", "4"], {})
    env = job_environment(["mpiexec", "-n", "4"], {"JPY_PARENT_PID": "12", "A": "b"})
    assert env == {"A": "b", "UCX_NET_DEVICES": "lo"}
    assert "UCX_NET_DEVICES" not in job_environment(["mpiexec", "-n", "2"], {"MPI_KERNEL_LOOPBACK_ONLY": "0"})
    assert job_environment(["mpiexec"], {"UCX_NET_DEVICES": "eth0"})["UCX_NET_DEVICES"] == "eth0"


def test_a_rank_that_said_it_aborts_is_the_cause():
    ended = [{"rank": 0, "host": "h", "pid": 5, "signal": 9},            # killed by the teardown
             {"rank": 2, "host": "h", "pid": 7, "code": 7, "abort": "Abort(7) on MPI_COMM_WORLD"}]
    assert deaths.summary(ended, 7, 3).startswith(
        "server rank 2 on h (pid 7) called MPI_Abort with errorcode 7 (Abort(7) on MPI_COMM_WORLD); then rank 0")


def test_a_job_survives_deaths_only_when_its_launcher_keeps_the_others():
    from mpi_kernel.jupyter.supervisor import survives_deaths
    assert survives_deaths(["mpiexec", "-disable-auto-cleanup", "-n", "4", "python"]) == "hydra"
    assert survives_deaths(["mpiexec", "-x", "V", "--with-ft", "ulfm", "-n", "4", "python"]) == "ulfm"
    assert survives_deaths(["mpiexec", "--with-ft=ulfm", "-n", "4"]) == "ulfm"
    assert survives_deaths(["mpiexec", "-n", "4", "python"]) is None
    text = deaths.survived({"rank": 2, "host": "hostB", "pid": 7, "signal": 9}, client_rank=3)
    assert text.splitlines()[-1].startswith("MPIRankDied: server rank 2 on hostB (pid 7) killed by signal 9")
    assert "Only rank 2's variables are lost" in text


@pytest.mark.parametrize("launcher, mode", [
    ("srun --mpi=pmi2 --overlap -n 4 python", "srun"),
    ("/usr/bin/srun -n 4 python -K", "srun"),  # (python's argument, not srun's)
    ("srun --kill-on-bad-exit=1 -n 4 python", None),
    ("srun --kill-on-bad-exit -n 4 python", None),
    ("srun -K -n 4 python", None),
    ("srun -K0 -n 4 python", "srun"),
    ("srun --kill-on-bad-exit=0 -n 4 python", "srun"),
    ("salloc -N 2 srun --mpi=pmi2 -n 4 python", "srun"),
])
def test_srun_keeps_the_others_unless_it_kills_on_a_bad_exit(launcher, mode):
    from mpi_kernel.jupyter.supervisor import survives_deaths
    assert survives_deaths(launcher.split()) == mode


def test_srun_can_start_replacements_only_with_overlap(monkeypatch):
    from mpi_kernel.jupyter.supervisor import srun_overlaps
    monkeypatch.delenv("SLURM_OVERLAP", raising=False)
    assert srun_overlaps("srun --overlap -n 4 python".split())
    assert not srun_overlaps("srun -n 4 python --overlap".split())
    monkeypatch.setenv("SLURM_OVERLAP", "1")
    assert srun_overlaps("srun -n 4 python".split())


def test_a_surviving_guard_exits_instead_of_dying_by_the_signal(tmp_path):
    """hydra's proxy ends all its local ranks when a child dies by a signal: under SURVIVE the
    guard reports the death and exits with 128 + the signal, and ignores hydra's SIGUSR1."""
    import subprocess
    import sys
    code = ("from mpi_kernel.jupyter import guard\nimport os, signal\nguard.guard()\n"
            "os.killpg(0, signal.SIGUSR1)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PMI_RANK": "2", guard.SURVIVE: "hydra"}, start_new_session=True)
    assert proc.returncode == 128 + signal.SIGKILL, proc.stderr
    assert proc.stderr.startswith(guard.MARK) and '"signal": 9' in proc.stderr


def test_an_open_mpi_guard_turns_a_non_zero_exit_into_sigkill(tmp_path):
    """Under ULFM Open MPI's launcher aborts the job when a rank exits non-zero but keeps it
    when a rank dies by a signal: the guard reports the exit, then dies by SIGKILL."""
    import subprocess
    import sys
    code = "from mpi_kernel.jupyter import guard\nimport os\nguard.guard()\nos._exit(3)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "OMPI_COMM_WORLD_RANK": "2", guard.SURVIVE: "ulfm"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stderr.startswith(guard.MARK) and '"code": 3' in proc.stderr


def test_a_death_report_says_when_another_launcher_would_have_kept_the_others():
    entry = {"rank": 1, "host": "h", "pid": 2, "signal": 9}
    _, lines = deaths.report([entry], -9, 3, [], True, deaths.survival_hint("mpiexec"))
    assert "mpiexec does with -disable-auto-cleanup" in lines[1] and "--with-ft ulfm (install --survive)" in lines[1]
    _, lines = deaths.report([entry], -9, 3, [], True)
    assert lines[1] == "Every rank's variables are lost."
    _, lines = deaths.report([entry], -9, 3, [], True, deaths.survival_hint("srun"))
    assert "only with MPICH and without --kill-on-bad-exit" in lines[1]


def test_the_sweep_removes_only_new_segments_that_no_one_maps(tmp_path, monkeypatch):
    import time as clock

    from mpi_kernel.jupyter import guard
    free, held = tmp_path / "mpich_shm_free_0", tmp_path / "mpich_shm_held_0"
    for path in (free, held):
        path.write_bytes(b"\0" * 4096)
    monkeypatch.setattr(guard, "SEGMENTS", str(tmp_path / "mpich_shm_*"))
    monkeypatch.setattr(guard, "mapped_segments", lambda: {str(held)})
    assert guard.sweep_shared_memory(clock.time() + 60) == []  # made before the job: not ours
    assert guard.sweep_shared_memory(clock.time() - 60) == []  # too new: maybe not mapped yet
    monkeypatch.setattr(guard, "SETTLED", -60.0)
    assert guard.sweep_shared_memory(clock.time() - 60) == [str(free)]
    assert held.exists() and not free.exists()
