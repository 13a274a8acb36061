"""Session set-up shared by tests/ and the nbval run of notebooks/.

Every test gets the marker of its tier, from its folder, so each tier runs alone
(`pytest -m unit`, `-m mpi`, `-m kernel`, `-m cluster`, `-m notebook`; README: Contributing):
tests/unit (no MPI), tests/jobs (real mpiexec jobs), tests/kernel (a real kernel through
jupyter_client), tests/cluster (the simulated hosts), notebooks/ (nbval).

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

from tests.kernel_helpers import install_kernelspec

_prefix: str | None = None
TIERS = {"unit": "unit", "jobs": "mpi", "kernel": "kernel", "cluster": "cluster"}
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(HERE).parts
        if parts[0] == "notebooks":
            item.add_marker("notebook")
        elif parts[0] == "tests" and parts[1] in TIERS:
            item.add_marker(TIERS[parts[1]])


def pytest_configure(config) -> None:
    global _prefix
    name = config.getoption("nbval_kernel_name", default=None)
    if not config.getoption("nbval", default=False) or not name:
        return
    _prefix = tempfile.mkdtemp(prefix="mpi-kernel-nbval-")
    profile = Path(_prefix, "ipython", "profile_default")
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text('c.MPIMagics.progress_after = float("inf")\n')
    install_kernelspec(_prefix, ranks=4, name=name, env={"IPYTHONDIR": str(profile.parent)})


def pytest_unconfigure(config) -> None:
    if _prefix:
        shutil.rmtree(_prefix, ignore_errors=True)
