"""The glibc malloc thresholds reach every rank (memory.py), and can be switched off."""
import pytest
from conftest import last_json

from mpi_kernel.framework.memory import is_glibc

# Where does a fresh 8 MiB array come from (mmap'd bytes), and does its memory stay
# mapped at the top of the heap once freed (keepcost)? Both in MiB.
PROBE = """
import ctypes
import numpy as np

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
before = libc.mallinfo2().hblkhd
a = np.ones(8 << 20, np.uint8)
mapped = libc.mallinfo2().hblkhd - before
del a
probe = [mapped >> 20, libc.mallinfo2().keepcost >> 20]
"""


ON, OFF = [0, 8], [8, 0]


@pytest.mark.skipif(not is_glibc(), reason="the thresholds are glibc's")
@pytest.mark.parametrize("argument, env, expected", [
    ("", {}, ON),
    ("keep_freed_memory=False", {}, OFF),
    ("", {"MPI_KERNEL_KEEP_FREED_MEMORY": "0"}, OFF),   # the kernelspec's way (install --env)
    ("keep_freed_memory=True", {"MPI_KERNEL_KEEP_FREED_MEMORY": "0"}, ON),
])
def test_freed_arrays_stay_mapped_on_servers_and_client(job, argument, env, expected):
    out = job(f"""
        import json
        c = MPICommandClient({argument})
        c.start_services()
        c.push_command_request({PROBE!r}, True, [0])
        exec({PROBE!r})
        print(json.dumps([c.pull("probe", [0])[0], probe]))
    """, n=2, env=env)
    assert last_json(out) == [expected, expected]
