"""Helpers for tests that run a real `mpiexec` job in a subprocess, always with a timeout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mpi_kernel.jupyter.supervisor import LAUNCH_RACE

MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
# Open MPI's launcher now and then fails to start a job at all (a race in PMIx's listener
# thread, openpmix/openpmix#112; lfortran/lfortran#8610 meets it in CI too): such a launch
# is tried again, as the supervisor does for kernels. Nothing of ours has run then.
PMIX_FLAKE = LAUNCH_RACE

PREAMBLE = """\
import os, sys, time, signal
from mpi_kernel import MPICommandClient
"""


def stray_processes(marker: str) -> list[str]:
    """Processes whose command line mentions `marker` (a test's unique script path)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


def run_job(tmp_path: Path, body: str, n: int = 4, timeout: float = 60, args: list[str] | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `body` as the client script of `mpiexec -n n python -m mpi_kernel`.

    Fails the test on a hang (subprocess timeout) and on processes left behind.
    """
    script = tmp_path / f"job_{time.monotonic_ns()}.py"
    script.write_text(PREAMBLE + textwrap.dedent(body))
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "mpi_kernel", str(script), *(args or [])]
    full_env = {**os.environ, **(env or {})}
    try:
        for _ in range(3):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env,
                                  cwd=tmp_path)
            if PMIX_FLAKE not in proc.stderr:
                break
    except subprocess.TimeoutExpired as exc:
        subprocess.run(["pkill", "-9", "-f", str(script)])
        pytest.fail(f"MPI job hung for {timeout} s\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}")
    deadline = time.monotonic() + 5
    while stray_processes(str(script)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = stray_processes(str(script))
    if left:
        subprocess.run(["pkill", "-9", "-f", str(script)])
        pytest.fail("processes left behind after the job:\n" + "\n".join(left))
    return proc


def last_json(out: str):
    """The JSON a job script printed on its last line."""
    return json.loads(out.strip().splitlines()[-1])


def check_ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def job(tmp_path: Path):
    """job(body, **kw) -> stdout of a successful run."""
    def run(body: str, **kwargs) -> str:
        return check_ok(run_job(tmp_path, body, **kwargs))
    return run
