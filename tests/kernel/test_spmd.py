"""Classic mpi4py programs, pasted unchanged into %%px cells, print what `mpiexec` gives them.

Each program in tests/spmd/ is written as an mpi4py tutorial would write it: `MPI.COMM_WORLD`,
and most of them `if __name__ == "__main__":`. A plain %%px cell must behave as
`mpiexec -n N-1 python prog.py` (the servers' world), and a `%%px --local` cell as
`mpiexec -n N python prog.py` (the client takes part). Output is compared rank by rank.
"""
from __future__ import annotations

import collections
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PMIX_FLAKE
from kernel_helpers import ANSI, error_text, install_kernelspec, run, start_kernel

RANKS = 4   # 3 servers and the client
PROGRAMS = sorted((Path(__file__).resolve().parents[1] / "spmd").glob("*.py"))
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
# Each rank's stdout into its own file, so lines from different ranks cannot interleave.
PER_RANK = ("import os, runpy, sys\n"
            "rank = next(os.environ[v] for v in ('PMI_RANK', 'OMPI_COMM_WORLD_RANK') if v in os.environ)\n"
            "sys.stdout = open(os.path.join(sys.argv[1], f'out.{rank}'), 'w')\n"
            "sys.argv = sys.argv[2:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def under_mpiexec(program: Path, n: int, tmp_path: Path) -> dict[int, list[str]]:
    out = tmp_path / f"{program.stem}-{n}"
    out.mkdir()
    command = [MPIEXEC, "-n", str(n), sys.executable, "-c", PER_RANK, str(out), str(program)]
    for _ in range(3):  # see conftest.PMIX_FLAKE
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if proc.returncode == 0 or PMIX_FLAKE not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr
    return {int(f.suffix[1:]): f.read_text().splitlines() for f in out.iterdir() if f.read_text()}


def in_the_cell(outputs: list[dict], client_rank: int) -> dict[int, list[str]]:
    """{rank: lines}: `[stdout:R] ...` lines are server R's, unlabelled ones the client's."""
    lines: dict[int, list[str]] = collections.defaultdict(list)
    text = ANSI.sub("", "".join(o["text"] for o in outputs if o["type"] == "stream" and o["name"] == "stdout"))
    for line in text.splitlines():
        match = re.match(r"\[stdout:(\d+)\] (.*)", line)
        if match:
            lines[int(match.group(1))].append(match.group(2))
        else:
            lines[client_rank].append(line)
    return dict(lines)


@pytest.fixture(scope="module")
def kc(tmp_path_factory):
    install_kernelspec(tmp_path_factory.mktemp("prefix"), ranks=RANKS, name="mpi-spmd")
    km, kc = start_kernel("mpi-spmd")
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.stem)
def test_a_plain_px_cell_is_mpiexec_on_the_servers(kc, program, tmp_path):
    status, out = run(kc, "%%px\n" + program.read_text(), timeout=120)
    assert status == "ok", error_text(out)
    assert in_the_cell(out, RANKS - 1) == under_mpiexec(program, RANKS - 1, tmp_path)


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.stem)
def test_a_local_px_cell_is_mpiexec_on_the_whole_job(kc, program, tmp_path):
    status, out = run(kc, "%%px --local\n" + program.read_text(), timeout=120)
    assert status == "ok", error_text(out)
    assert in_the_cell(out, RANKS - 1) == under_mpiexec(program, RANKS, tmp_path)


def test_rebinding_the_kernels_names_breaks_nothing(kc):
    status, out = run(kc, "%%px\nfrom mpi4py import MPI\ncomm = MPI.COMM_WORLD\nrank = comm.Get_rank()\n"
                          "size = comm.Get_size()")
    assert status == "ok"
    status, out = run(kc, "%%px\nrank = 99\nMPI = None")
    assert status == "ok"
    status, out = run(kc, "%%px\ncomm.allreduce(1)")
    assert status == "ok" and ANSI.sub("", "".join(o.get("text", "") for o in out)).count("Out[0-2:") == 1
    status, out = run(kc, "%%px\nimport mpi4py.MPI\nmpi4py.MPI.COMM_WORLD.Get_size(), __name__")
    assert status == "ok" and ANSI.sub("", "".join(o.get("text", "") for o in out)).count("Out[0-2:") == 1


def test_libraries_and_derived_communicators_get_the_servers_world(kc):
    status, out = run(kc, "%%px\nfrom mpi4py import MPI\nfrom mpi4py.util import pkl5\n"
                          "me = MPI.COMM_WORLD.Get_rank()\n"
                          "big = pkl5.Intracomm(MPI.COMM_WORLD).bcast(b'x' * 3_000_000 if me == 0 else None)\n"
                          "dup = MPI.COMM_WORLD.Dup()\n"
                          "(len(big), dup.Get_size(), MPI.COMM_WORLD.Split(me % 2).Get_size(),"
                          " MPI.COMM_WORLD.Create_cart([3]).Get_size())")
    text = ANSI.sub("", "".join(o.get("text", "") for o in out if o["type"] == "stream"))
    assert status == "ok", error_text(out)
    assert text.count("(3000000, 3, ") == 2 and "Out[0,2:" in text and "(3000000, 3, 2, 3)" in text and "(3000000, 3, 1, 3)" in text
