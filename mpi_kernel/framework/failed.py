"""Which processes of a communicator the MPI library knows to have failed.

MPICH tells its survivors nothing through errors (sends and collectives to a dead rank just
wait), but it keeps a list: MPIX_Comm_get_failed, which mpi4py 4.1 does not wire up for
MPICH, so it is called here through ctypes (../shared/reference/fault-tolerance/: a death
shows there 3-20 ms after it). The list is filled when hydra's failure notice arrives,
which is also the moment hydra signals every rank: a replacement must not be starting
then (respawn.py waits for the list first).
"""
from __future__ import annotations

import ctypes
import functools
from typing import Any

from .environment import MPI


@functools.lru_cache(maxsize=1)
def _mpich() -> Any:
    """MPICH's libmpi, loaded into this process by mpi4py; None for another library."""
    if "MPICH" not in MPI.Get_library_version():
        return None
    with open("/proc/self/maps") as maps:  # this process's own mappings: where libmpi is
        paths = {line.split()[-1] for line in maps if "libmpi" in line and "abi" not in line}
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        if hasattr(lib, "MPIX_Comm_get_failed"):
            return lib
    return None


def failed(comm: MPI.Comm) -> set[int] | None:
    """The ranks of `comm` whose processes failed; None where the library cannot say."""
    lib = _mpich()
    if lib is None:
        return None
    handle = ctypes.c_uint(0)
    if lib.MPIX_Comm_get_failed(ctypes.c_uint(MPI._handleof(comm)), ctypes.byref(handle)) != 0:
        return None
    group, members = MPI.Group.fromhandle(handle.value), comm.Get_group()
    try:
        return set(MPI.Group.Translate_ranks(group, list(range(group.Get_size())), members))
    finally:
        group.Free()
        members.Free()
