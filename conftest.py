"""Session set-up shared by tests/ and the nbval run of notebooks/.

nbval starts the kernel named by --nbval-kernel-name ("mpi"): install that
kernelspec, with the real installer, into a temporary prefix that Jupyter finds
through JUPYTER_PATH, so the run needs no manual step and touches no user files.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

_prefix: str | None = None


def pytest_configure(config) -> None:
    global _prefix
    name = config.getoption("nbval_kernel_name", default=None)
    if not config.getoption("nbval", default=False) or not name:
        return
    _prefix = tempfile.mkdtemp(prefix="mpi-kernel-nbval-")
    subprocess.run([sys.executable, "-m", "mpi_kernel", "install", "--prefix", _prefix, "--name", name,
                    "--ranks", "4"], check=True, capture_output=True, timeout=60)
    share = os.path.join(_prefix, "share", "jupyter")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [share, os.environ.get("JUPYTER_PATH")]))


def pytest_unconfigure(config) -> None:
    if _prefix:
        shutil.rmtree(_prefix, ignore_errors=True)
