"""The stop policy (framework/stopping.py) and the merged remote error (errors.py), on fakes."""
from __future__ import annotations

from mpi_kernel.errors import DeadServerError, RemoteError, error_name
from mpi_kernel.framework.stopping import Stop


class FakeClient:
    """Requests 1-2 run on servers 0 and 1, 3 is queued for server 0, 4 is queued for any."""

    def __init__(self) -> None:
        self.queued = {3: 0, 4: None}
        self.running = {1: 0, 2: 1}
        self.calls: list = []

    def cancel_queued(self, ids=None):
        ids = list(self.queued) if ids is None else [i for i in ids if i in self.queued]
        for i in ids:
            del self.queued[i]
        self.calls.append(("cancel", ids))
        return ids

    def get_server_status(self):
        return {0: {"busy": True, "command_id": 1}, 1: {"busy": True, "command_id": 2},
                2: {"busy": False, "command_id": None}}

    def interrupt(self, targets=None, ids=None):
        held = {s for i, s in self.running.items() if ids is None or i in ids}
        servers = sorted(held if targets is None else held & set(targets))
        self.calls.append(("interrupt", servers))
        return servers


def test_a_stop_cancels_the_queued_first_then_interrupts_only_the_servers_running_its_requests():
    client = FakeClient()
    stop = Stop(client, [2, 3, 4])
    assert stop.cancel() == [3, 4] and stop.running() == [1]
    assert stop.interrupt() == [1]
    assert client.calls == [("cancel", [3, 4]), ("interrupt", [1])]


def test_stopping_everything_interrupts_every_busy_server():
    client = FakeClient()
    stop = Stop(client)
    stop.cancel()
    assert stop.running() == [0, 1] and stop.interrupt() == [0, 1]
    assert client.calls == [("cancel", [3, 4]), ("interrupt", [0, 1])]


def test_a_stop_with_nothing_running_interrupts_nobody():
    client = FakeClient()
    stop = Stop(client, [3])
    stop.cancel()
    assert stop.interrupt() == [] and client.calls == [("cancel", [3]), ("interrupt", [])]


def test_failures_of_a_cell_merge_by_traceback_in_rank_order():
    zero = "Traceback ...\n\x1b[31mZeroDivisionError\x1b[39m: division by zero\n"
    failed = [{"server": 2, "traceback": zero}, {"server": 0, "traceback": zero},
              {"server": 1, "traceback": "KeyError: 'x'\n"}]
    error = RemoteError.from_responses(failed, note="Rank 3 did not stop.")
    assert str(error) == "ZeroDivisionError on ranks 0, 2; KeyError on rank 1. Rank 3 did not stop."
    lines = error._render_traceback_()
    assert "[0,2:execute]: ZeroDivisionError on ranks 0, 2" in lines[0] and lines[-1] == "Rank 3 did not stop."


def test_failures_of_tasks_name_tasks_and_ranks_and_a_script_sees_the_tracebacks():
    error = RemoteError([(0, 1, "ValueError: bad\n"), (5, 1, "ValueError: bad\n"), (2, None, "E\n")])
    first, *rest = str(error).splitlines()
    assert first == "ValueError in tasks 0, 5 on rank 1; E in task 2"
    assert rest == ["", "[ValueError in tasks 0, 5 on rank 1]", "ValueError: bad", "", "[E in task 2]", "E"]


def test_error_name_reads_a_colored_last_line():
    assert error_name("x\n\x1b[0;31mKeyboardInterrupt\x1b[0m: \n") == "KeyboardInterrupt"
    assert error_name("") == "Error"


def test_a_dead_servers_error_names_how_it_died_and_the_way_back():
    error = DeadServerError(1, "Only rank 1's variables are lost.\nMPIRankDied: server rank 1 on h exited with code 3\n")
    assert isinstance(error, ValueError) and error.rank == 1
    assert str(error).startswith("server 1 is dead (server rank 1 on h exited with code 3); choose other targets")
    assert "%mpi_restart_dead" in str(error)
    assert error_name(error.reason) == "MPIRankDied"
