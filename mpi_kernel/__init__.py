"""mpi-kernel: drive a live MPI job from Python or a Jupyter notebook.

`from mpi_kernel import MPICommandClient` does not initialise MPI by itself;
the job is started with `mpiexec -n N python -m mpi_kernel ...`.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["MPICommandClient", "MPICommandServer", "ServerError", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (e.g. for `install`) must not start MPI.
    if name in ("MPICommandClient", "ServerError"):
        from . import client
        return getattr(client, name)
    if name == "MPICommandServer":
        from .server import MPICommandServer
        return MPICommandServer
    raise AttributeError(f"module 'mpi_kernel' has no attribute {name!r}")
