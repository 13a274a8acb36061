"""Stuck ranks: what stuck.describe reads from a frame and the advice stuck.explain gives,
as pure functions (no MPI; the real kernel's cases are in tests/kernel/test_stuck.py)."""
from __future__ import annotations

import sys
import types

from mpi_kernel.framework import stuck


# -- describe and explain without MPI ------------------------------------------------------
class FakeMPI:
    """The few mpi4py types stuck.describe looks at."""

    class Comm:
        def __init__(self, name: str, members: list[int]) -> None:
            self.name, self.members = name, members

        def Barrier(self) -> None:
            frame = sys._getframe(1)     # the caller's frame is what a stack report sees
            FakeMPI.seen = stuck.describe(frame, None, FakeMPI)

        def Get_name(self) -> str:
            return self.name

        def Get_group(self) -> "FakeMPI.Group":
            return FakeMPI.Group(self.members)

    class Group:
        def __init__(self, members: list[int]) -> None:
            self.members = members

        def Get_size(self) -> int:
            return len(self.members)

        def Free(self) -> None:
            pass

        @staticmethod
        def Translate_ranks(group: "FakeMPI.Group", ranks: list[int], other: object) -> list[int]:
            return [group.members[r] for r in ranks]

    Win = File = Request = type("Other", (), {})
    seen: dict = {}


def test_describe_finds_the_mpi_call_and_its_members():
    holder = types.SimpleNamespace(world=FakeMPI.Comm("MPI_COMM_WORLD", [0, 1, 2, 3]))
    holder.world.Barrier()
    report = FakeMPI.seen
    assert report["kind"] == "mpi" and report["method"] == "Barrier" and report["collective"]
    assert report["call"] == "holder.world.Barrier()"
    assert (report["comm"], report["members"]) == ("MPI_COMM_WORLD", [0, 1, 2, 3])


def test_describe_other_calls_are_c_code():
    def eig(frame_holder: list) -> None:
        frame_holder.append(stuck.describe(sys._getframe(1), None, FakeMPI))
    found: list = []
    eig(found)
    assert found[0]["kind"] == "c" and found[0]["call"] == "eig(found)"


MPI_BARRIER = {"kind": "mpi", "call": "w.Barrier()", "method": "Barrier", "collective": True,
               "comm": "MPI_COMM_WORLD", "members": [0, 1, 2, 3]}


def test_explain_groups_ranks_and_names_the_missing_members():
    servers = {"kind": "mpi", "call": "comm.Barrier()", "method": "Barrier", "collective": True,
               "comm": "the servers' world", "members": [0, 1, 2]}
    (line, blocked), = stuck.explain([0], {0: servers}, idle=[1, 2], client_rank=3, client_joins=False)
    assert line.startswith("Rank 0 waits in the collective `comm.Barrier()` on the servers' world "
                           "(3 ranks: 0-2); not in it: ranks 1-2. Run the matching call on ranks 1-2")
    assert "no restart is needed" in line and blocked
    (line, blocked), = stuck.explain([0, 1, 2], dict.fromkeys([0, 1, 2], MPI_BARRIER), [], 3, False)
    assert "not in it: rank 3. The client (rank 3) is a member" in line and blocked
    (line, blocked), = stuck.explain([0, 1, 2], dict.fromkeys([0, 1, 2], MPI_BARRIER), [], 3, True)
    assert "The client" not in line and not blocked  # a --local cell: the client may still come


def test_explain_c_code_gil_and_point_to_point():
    reports = {0: {"kind": "c", "call": "_umath_linalg.eig(a)"}, 1: None,
               2: {"kind": "mpi", "call": "comm.recv(source=0)", "method": "recv", "collective": False,
                   "comm": "c", "members": [0, 1, 2]}}
    lines = [line for line, _ in stuck.explain([0, 1, 2], reports, [], 3, False)]
    assert lines[0].startswith("Rank 0 is in C code (`_umath_linalg.eig(a)`): it returns by itself")
    assert lines[1].startswith("Rank 1 did not answer within 1 s: C code that holds the GIL")
    assert lines[2].startswith("Rank 2 waits in the MPI call `comm.recv(source=0)` on c for a partner")
    assert all("restart" in line for line in lines)


# -- a real kernel --------------------------------------------------------------------------


def test_a_collective_with_a_dead_member_says_it_never_returns_and_how_to_go_on():
    servers = {"kind": "mpi", "call": "comm.Barrier()", "method": "Barrier", "collective": True,
               "comm": "the servers' world", "members": [0, 1, 2]}
    (line, blocked), = stuck.explain([0, 2], {0: servers, 2: servers}, idle=[], client_rank=3,
                                     client_joins=False, dead=[1])
    assert line.startswith("Ranks 0, 2 wait in the collective `comm.Barrier()` on the servers' world "
                           "(3 ranks: 0-2); not in it: rank 1. Rank 1 died, and MPI does not tell the others")
    assert "`%mpi_restart_dead --end-busy` ends ranks 0, 2 and starts ranks 0-2 anew" in line and blocked
    assert "Run the matching call" not in line and "busy with other work" not in line
    assert stuck.waits_for_dead(servers, [1]) and not stuck.waits_for_dead(servers, [3])
    assert not stuck.waits_for_dead(None, [1]) and not stuck.waits_for_dead({"kind": "c"}, [1])
