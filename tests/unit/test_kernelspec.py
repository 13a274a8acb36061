"""The kernelspec installer (no MPI is started)."""
import json
import subprocess
import sys

import pytest


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
                            "srun", "--mpi=pmix", "-p", "debug", "-n", "16", sys.executable, "-m",
                            "mpi_kernel", "--kernel"]
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
