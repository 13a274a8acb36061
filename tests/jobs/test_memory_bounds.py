"""Distinct big commands and cells do not pile up on any rank (issue: memory bounded).

Memory is each rank's resident set after gc and glibc's malloc_trim: what the framework
still holds, not the freed memory glibc keeps mapped for reuse (mpi_kernel.framework.memory keeps
up to 64 MiB so on purpose).
"""
from __future__ import annotations

import json

import pytest

from conftest import last_json
from kernel_helpers import install_kernelspec, run, start_kernel, text_of
from mpi_kernel.framework.memory import is_glibc

pytestmark = pytest.mark.skipif(not is_glibc(), reason="malloc_trim is glibc's")
LIMIT_MB = 64
RSS = """
import ctypes, gc, json
def _rss():
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    return int(open('/proc/self/statm').read().split()[1]) * 4096 >> 20
"""


def test_200_distinct_1mb_px_cells_grow_no_rank_by_more_than_64mb(tmp_path):
    install_kernelspec(tmp_path, name="mpi-memory")
    km, kc = start_kernel("mpi-memory")
    try:
        def sizes() -> list[int]:
            run(kc, "%%px\n_r = _rss()")
            status, out = run(kc, "_p = %mpi_pull _r\nprint(json.dumps([_rss()] + [_p[k] for k in sorted(_p)]))")
            return json.loads(text_of(out).splitlines()[-1])
        run(kc, RSS)
        run(kc, "%%px\n" + RSS)
        before = sizes()
        # 200 %%px cells from one notebook cell: IPython's own history of notebook cells
        # (In, _ih) is not ours to bound, and is left out so.
        status, out = run(kc, "for _i in range(200):\n"
                              "    get_ipython().run_cell_magic('px', '', f'_x = {_i}\\n#' + 'a' * 1_000_000)",
                          timeout=300)
        assert status == "ok"
        growth = [b - a for a, b in zip(before, sizes())]
        assert max(growth) <= LIMIT_MB, f"growth per rank (client first), MB: {growth}"
        status, out = run(kc, "%%px\n_x")   # and the cells did run
        assert "Out[0-2:" in text_of(out) and "]: 199" in text_of(out)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_200_distinct_1mb_commands_and_forget_grow_no_rank_by_more_than_64mb(job):
    out = job("""
        exec(%r)
        c = MPICommandClient(); c.start_services()
        c.push_command_request(%r, True, [0, 1, 2])
        def sizes():
            return [_rss()] + [r["ret"] for r in c.push_command_request("_rss()", True, [0, 1, 2])]
        before = sizes()
        for i in range(200):
            c.forget([r["id"] for r in c.push_command_request(f"_x = {i}\\n#" + "a" * 1_000_000, True, [0, 1, 2])])
        print(json.dumps([b - a for a, b in zip(before, sizes())]))
    """ % (RSS, RSS), timeout=120)
    growth = last_json(out)
    assert max(growth) <= LIMIT_MB, f"growth per rank (client first), MB: {growth}"
