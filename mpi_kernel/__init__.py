"""mpi-kernel: drive a live MPI job from Python or a Jupyter notebook.

Three layers (docs/architecture.md): `framework/` (the command framework: client,
servers, monitor), `parallel/` (the ipyparallel-style views over it) and `jupyter/`
(the kernel, its installer and supervisor); the magics are the `ipython_ext` package.
This module is the public face. `from mpi_kernel import MPICommandClient` does not
initialise MPI by itself; the job is started with `mpiexec -n N python -m mpi_kernel ...`.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["AsyncResult", "Client", "MPICommandClient", "MPICommandServer", "RemoteError",
           "RemoteTaskError", "ServerError", "job_world", "__version__"]


def job_world() -> Any:
    """The whole job's world, the client included: what `MPI.COMM_WORLD` is on the client
    and in `%%px --local` cells. (In plain cells and commands on the servers,
    `MPI.COMM_WORLD` is the servers' own world, as under `mpiexec -n N-1`.)"""
    from .framework import environment, usercomm
    environment.current()  # a clear error if the job was not started by python -m mpi_kernel
    assert usercomm.worlds is not None
    return usercomm.worlds.job


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (e.g. for `install`) must not start MPI.
    if name == "MPICommandClient":
        from .framework.client import MPICommandClient
        return MPICommandClient
    if name in ("ServerError", "RemoteError", "RemoteTaskError"):
        from . import errors
        return getattr(errors, name)
    if name in ("Client", "AsyncResult"):  # the ipyparallel-style API
        from .parallel import views
        return getattr(views, name)
    if name == "MPICommandServer":
        from .framework.server import MPICommandServer
        return MPICommandServer
    raise AttributeError(f"module 'mpi_kernel' has no attribute {name!r}")
