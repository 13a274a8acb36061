"""Unit tests of the monitor's timeout decision (no MPI)."""
from mpi_kernel.framework.monitor import MonitorClient, is_timed_out


def test_is_timed_out():
    assert not is_timed_out(None, 100.0, 5.0)          # nothing outstanding
    assert not is_timed_out(96.0, 100.0, 5.0)          # 4 s old
    assert not is_timed_out(95.0, 100.0, 5.0)          # exactly the limit
    assert is_timed_out(94.9, 100.0, 5.0)


def test_ping_schedule_one_outstanding():
    m = MonitorClient([0, 1], ping_interval=1.0, server_timeout=5.0)
    assert m.due(10.0) == [0, 1]
    m.pinged(0, 10.0)
    m.pinged(1, 10.0)
    assert m.due(11.5) == []                           # pings outstanding: no second ping
    m.answered(0, {"busy": True, "command": "x"}, 10.001)
    assert m.due(10.5) == []                           # interval not over
    assert m.due(11.0) == [0]
    assert m.table[0].busy and m.table[0].command == "x"


def test_timeout_and_recovery():
    m = MonitorClient([0, 1], ping_interval=1.0, server_timeout=5.0)
    m.pinged(0, 0.0)
    m.pinged(1, 0.0)
    m.answered(1, {}, 0.1)
    assert m.expired(4.0) == []
    assert m.expired(5.5) == [0]
    assert m.table[0].state == "timeout"
    assert m.expired(9.0) == []                        # reported once
    assert m.answered(0, {"busy": False}, 9.5) is True  # recovered
    assert m.table[0].state == "idle"


def test_stalled_client_does_not_time_out_servers():
    # The client pinged at t=0, then held the GIL for 10 s. The answers arrived at
    # t=0.001 but are only drained at t=10: draining happens before the check.
    m = MonitorClient([0], ping_interval=1.0, server_timeout=2.0)
    m.pinged(0, 0.0)
    m.answered(0, {}, 10.0)
    assert m.expired(10.0) == []


def test_a_dead_server_is_never_pinged_and_does_not_come_back():
    monitor = MonitorClient([0, 1], ping_interval=0.1, server_timeout=1.0)
    monitor.died(1, "MPIRankDied: killed\n")
    assert monitor.dead() == {1: "MPIRankDied: killed\n"}
    assert monitor.table[1].timed_out and monitor.table[1].state == "dead"
    assert monitor.due(10.0) == [0] and monitor.expired(100.0) == []
    assert monitor.answered(1, {"busy": True}, 11.0) is False  # a pong it sent before it died
    assert monitor.table[1].state == "dead" and monitor.table[1].as_dict()["dead"] == "MPIRankDied: killed\n"
