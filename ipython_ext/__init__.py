"""IPython extension for the MPI kernel: `%load_ext ipython_ext` (loaded by the kernel itself).

Gives %%px / %px / %autopx / %pxresult, %mpi_push / %mpi_pull, %mpi_status and
%mpi_monitor. Loading it again (%reload_ext) replaces the magics cleanly.
"""
from __future__ import annotations

from typing import Any

_magics: Any = None


def load_ipython_extension(ipython: Any) -> None:
    global _magics
    from mpi_kernel.framework.client import MPICommandClient
    from mpi_kernel.errors import MPIEnvironmentError

    from .magics import MPIMagics

    try:
        client = MPICommandClient()
    except MPIEnvironmentError as exc:
        raise RuntimeError(f"ipython_ext needs the MPI kernel: {exc}") from None
    if _magics is not None:
        unload_ipython_extension(ipython)
    _magics = MPIMagics(ipython, client)
    ipython.register_magics(_magics)


def unload_ipython_extension(ipython: Any) -> None:
    global _magics
    if _magics is None:
        return
    from .magics import _autopx_transform
    _magics.monitor.stop()
    transforms = ipython.input_transformers_cleanup
    while _autopx_transform in transforms:
        transforms.remove(_autopx_transform)
    _magics.client.stream_callback = _magics.client.display_callback = None
    _magics = None
