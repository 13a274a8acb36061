"""Session set-up shared by tests/ and the nbval run of notebooks/.

nbval starts the kernel named by --nbval-kernel-name ("mpi"): install that
kernelspec into a temporary prefix that Jupyter finds through JUPYTER_PATH, so
the run needs no manual step and touches no user files. The kernel gets a fresh
IPython profile (IPYTHONDIR in its kernel.json) whose config turns off the %%px
progress line: it appears only when a cell runs longer than 1 s, so on a slow
machine it would be one more output.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mpi_kernel.jupyter.kernelspec import install_for_session

_prefix: str | None = None


def pytest_configure(config) -> None:
    global _prefix
    name = config.getoption("nbval_kernel_name", default=None)
    if not config.getoption("nbval", default=False) or not name:
        return
    _prefix = tempfile.mkdtemp(prefix="mpi-kernel-nbval-")
    profile = Path(_prefix, "ipython", "profile_default")
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text('c.MPIMagics.progress_after = float("inf")\n')
    install_for_session(_prefix, name, ranks=4, env={"IPYTHONDIR": str(profile.parent)})


def pytest_unconfigure(config) -> None:
    if _prefix:
        shutil.rmtree(_prefix, ignore_errors=True)
