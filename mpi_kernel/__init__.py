"""mpi-kernel: drive a live MPI job from Python or a Jupyter notebook.

`from mpi_kernel import MPICommandClient` does not initialise MPI by itself;
the job is started with `mpiexec -n N python -m mpi_kernel ...`.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["AsyncResult", "Client", "MPICommandClient", "MPICommandServer", "RemoteTaskError",
           "ServerError", "job_world", "__version__"]


def job_world() -> Any:
    """The whole job's world, the client included: what `MPI.COMM_WORLD` is on the client
    and in `%%px --local` cells. (In plain cells and commands on the servers,
    `MPI.COMM_WORLD` is the servers' own world, as under `mpiexec -n N-1`.)"""
    from . import environment, usercomm
    environment.current()  # a clear error if the job was not started by python -m mpi_kernel
    assert usercomm.worlds is not None
    return usercomm.worlds.job


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (e.g. for `install`) must not start MPI.
    if name in ("MPICommandClient", "ServerError"):
        from . import client
        return getattr(client, name)
    if name in ("Client", "AsyncResult", "RemoteTaskError"):  # the ipyparallel-style API
        from . import views
        return getattr(views, name)
    if name == "MPICommandServer":
        from .server import MPICommandServer
        return MPICommandServer
    raise AttributeError(f"module 'mpi_kernel' has no attribute {name!r}")
