"""The kernelspec installer (no MPI is started)."""
import json
import subprocess
import sys

import pytest

from mpi_kernel.jupyter import kernelspec


def install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpi_kernel", "install", *args], capture_output=True,
                          text=True, timeout=60)


def test_site_launcher_options(tmp_path):
    proc = install("--prefix", str(tmp_path), "--name", "mpi-slurm", "--mpiexec", "srun", "--ranks", "16",
                   "--mpiexec-args=--mpi=pmix -p debug", "--env", "OMP_NUM_THREADS=1",
                   "--env", "A=b=c", "--display-name", "MPI on Slurm", "--prelude", "module load mpi",
                   "--stop-timeout", "2.5")
    assert proc.returncode == 0, proc.stderr
    spec = json.loads((tmp_path / "share/jupyter/kernels/mpi-slurm/kernel.json").read_text())
    # The supervisor on the Jupyter host, then the launcher line it runs.
    assert spec["argv"] == [sys.executable, "-m", "mpi_kernel", "supervise", "-f", "{connection_file}",
                            "--prelude", "module load mpi", "--stop-timeout", "2.5", "--",
                            "srun", *kernelspec.srun_flags(None, ("--mpi=pmix",)), "--mpi=pmix", "-p",
                            "debug", "-n", "16", sys.executable, "-m", "mpi_kernel", "--kernel"]
    assert spec["env"] == {"OMP_NUM_THREADS": "1", "A": "b=c"}
    assert spec["display_name"] == "MPI on Slurm"
    assert spec["interrupt_mode"] == "message"


def test_bad_install_arguments_say_what_is_wrong(tmp_path):
    cases = [
        (["--ranks", "1"], "--ranks must be at least 2 (1 client + 1 server), got 1"),
        (["--ranks", "four"], "--ranks takes a whole number, got 'four'"),
        (["--env", "NOEQUALS"], "--env takes KEY=VALUE, got 'NOEQUALS'"),
        (["--mpiexec", str(tmp_path / "missing" / "mpiexec")], "is not an executable file"),
        (["--name", "bad name!"], "kernel name 'bad name!' may only hold letters"),
        (["--user", "--sys-prefix"], "not allowed with argument"),
    ]
    for args, message in cases:
        proc = install("--prefix", str(tmp_path), *args) if "--user" not in args else install(*args)
        assert proc.returncode != 0, args
        assert message in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "share").exists()  # nothing was written


def test_open_mpi_launchers_are_told_to_pass_the_supervisor_variable_on(tmp_path):
    fake = tmp_path / "mpiexec"
    fake.write_text("#!/bin/sh\necho 'mpiexec (Open MPI) 5.0.11'\n")
    fake.chmod(0o755)
    proc = install("--prefix", str(tmp_path), "--mpiexec", str(fake))
    assert proc.returncode == 0, proc.stderr
    argv = json.loads((tmp_path / "share/jupyter/kernels/mpi/kernel.json").read_text())["argv"]
    launcher = argv[argv.index("--") + 1:]
    assert launcher[:3] == [str(fake), "-x", "MPI_KERNEL_SUPERVISOR"]


@pytest.mark.parametrize("version, survives, default", [
    ("HYDRA build details:", ["-disable-auto-cleanup"], True),
    ("mpiexec (Open MPI) 5.0.11", ["-x", "MPI_KERNEL_SURVIVE", "--with-ft", "ulfm"], False),  # asked for only
])
def test_survive_options_write_what_keeps_the_job_after_a_death(tmp_path, version, survives, default):
    fake = tmp_path / "mpiexec"
    fake.write_text(f"#!/bin/sh\necho '{version}'\n")
    fake.chmod(0o755)
    for extra, kept in (([], default), (["--survive"], True), (["--no-survive"], False)):
        proc = install("--prefix", str(tmp_path), "--mpiexec", str(fake), *extra)
        assert proc.returncode == 0, proc.stderr
        argv = json.loads((tmp_path / "share/jupyter/kernels/mpi/kernel.json").read_text())["argv"]
        launcher = " ".join(argv[argv.index("--") + 1:])
        assert (" ".join(survives) in launcher) == kept, launcher


@pytest.mark.parametrize("family, survive, user_args, flags", [
    ("MPICH", None, (), ("--mpi=pmi2", "--overlap")),  # the job goes on after a death
    ("MPICH", True, (), ("--mpi=pmi2", "--overlap")),
    ("MPICH", False, (), ("--mpi=pmi2", "--overlap", "--kill-on-bad-exit=1")),
    ("Open MPI", None, (), ("--mpi=pmix", "--overlap", "--kill-on-bad-exit=1")),  # PMIx ends the step anyway
    ("MPICH", None, ("--mpi=pmix",), ("--overlap",)),  # the user's choice stays
    ("Open MPI", None, ("--kill-on-bad-exit=0",), ("--mpi=pmix", "--overlap")),
])
def test_srun_gets_the_pmi_and_the_death_handling_of_the_installed_mpi(monkeypatch, family, survive,
                                                                       user_args, flags):
    monkeypatch.setattr(kernelspec, "mpi_family", lambda _mpiexec: family)
    assert kernelspec.launcher_flags("/usr/bin/srun", survive, user_args) == flags


def test_srun_with_open_mpi_cannot_survive_and_says_what_can(monkeypatch):
    monkeypatch.setattr(kernelspec, "mpi_family", lambda _mpiexec: "Open MPI")
    with pytest.raises(ValueError, match="only MPICH keeps the other ranks.*mpiexec --with-ft ulfm"):
        kernelspec.srun_flags(True)


def test_launcher_slurm_with_salloc_asks_for_the_ranks_then_runs_srun(tmp_path):
    proc = install("--prefix", str(tmp_path), "--launcher", "slurm", "--ranks", "8",
                   "--salloc=-N 2 -t 30 -p debug")
    assert proc.returncode == 0, proc.stderr
    argv = json.loads((tmp_path / "share/jupyter/kernels/mpi/kernel.json").read_text())["argv"]
    assert argv[argv.index("--") + 1:] == ["salloc", "-n", "8", "-N", "2", "-t", "30", "-p", "debug", "srun",
                                           *kernelspec.srun_flags(), "-n", "8", sys.executable, "-m",
                                           "mpi_kernel", "--kernel"]
    proc = install("--prefix", str(tmp_path), "--salloc=-N 2")
    assert proc.returncode != 0 and "--salloc needs --launcher slurm" in proc.stderr
