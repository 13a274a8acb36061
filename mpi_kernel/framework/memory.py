"""glibc malloc settings for ranks that receive arrays again and again.

glibc returns freed memory at the top of the heap to the kernel once more than
128 KiB is free there, and raises that limit only after a large mmap'd block is
freed. On a rank that receives a 1 MB array per push, the buffer's pages were
then often returned and faulted in again on each receive: 250 page faults, and a
push 4x slower than `comm.Send` (README, Benchmarks). Setting the thresholds to
the values glibc's own dynamic rule ends at (mmap above 32 MiB, trim above
64 MiB) keeps that memory mapped for reuse. The cost: up to 64 MiB of freed
heap per rank stays mapped. Other C libraries are left alone.
"""
from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("mpi_kernel.memory")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # what glibc sets with it


def is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # no such name on this system
        return False


def keep_freed_memory() -> bool:
    """Apply the thresholds above in this process; False where glibc is not the C library."""
    if not is_glibc():
        return False
    libc = ctypes.CDLL(None)
    done = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    log.debug("glibc malloc thresholds set: %s", bool(done))
    return bool(done)
