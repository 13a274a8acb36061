"""The request book (mpi_kernel/framework/requests.py) on its own: no MPI, no threads. Its
scheduling policy (assign, overdue, released) is driven here as data: servers, requests,
measured costs and a clock."""
from __future__ import annotations

import pytest

from mpi_kernel.framework import protocol
from mpi_kernel.framework.protocol import Reply
from mpi_kernel.framework.requests import SHORT, RequestBook


def queued(book: RequestBook, request_id: int, server: int | None, command: str = "1+1") -> None:
    book.add(protocol.COMMAND, request_id, command, "eval", None, server, f"message {request_id}")


def assigned(book: RequestBook, now: float = 0.0, servers: list[int] | None = None) -> list[tuple[int, int]]:
    """(server, id) of what assign sends, given every server as changed unless told."""
    return [(s, i) for s, i, _ in book.assign(book.servers if servers is None else servers, now)]


def answered(book: RequestBook, server: int, request_id: int, took: float = 0.0, now: float = 0.0) -> dict | None:
    return book.answer(server, tuple(Reply(request_id, None, True, None, 100.0, 100.0 + took)), now)


def test_a_request_is_queued_sent_and_answered():
    book = RequestBook([0, 1])
    queued(book, 1, 0)
    assert book.requests[1]["status"] == protocol.HOLDING_QUEUE and book.queued([1]) == {1: 0}
    assert book.assign([0], now=5.0) == [(0, 1, "message 1")]
    assert book.requests[1]["status"] == protocol.REQUEST_SENT and book.requests[1]["sent_at"] == 5.0
    assert book.running(0)["id"] == 1 and book.busy() == 1 and book.queued([1]) == {}
    response = book.answer(0, tuple(Reply(1, 2, True, None, 1.0, 2.0, "out", "")), 6.0)
    assert response["ret"] == 2 and response["stdout"] == "out" and response["server"] == 0
    assert book.requests[1]["status"] == protocol.RESPONSE_RECEIVED and book.running(0) is None
    assert book.pop_responses([1]) == [response] and 1 not in book.requests and book.idle == {0, 1}


def test_a_busy_server_takes_nothing_and_its_own_queue_comes_before_any():
    book = RequestBook([0, 1])
    queued(book, 1, 0)
    queued(book, 2, None)
    queued(book, 3, 0)
    assert assigned(book) == [(0, 1), (1, 2)]        # one at a time; "any": the first free one
    assert assigned(book) == []
    answered(book, 0, 1)
    assert assigned(book, servers=[0]) == [(0, 3)] and not book.encoded


def test_a_reply_without_an_id_answers_what_the_server_runs():
    book = RequestBook([0])
    queued(book, 7, 0)
    assigned(book)
    response = book.answer(0, tuple(Reply(None, traceback="DecodeError: ...\n")), 0.0)
    assert response["id"] == 7 and not response["successful"] and book.inflight[0] is None


def test_cancel_takes_only_queued_requests_and_says_they_never_ran():
    book = RequestBook([0])
    queued(book, 1, 0)
    queued(book, 2, 0)
    queued(book, 3, None)
    assigned(book)
    assert book.cancel_queued([1, 2]) == [2]         # 1 already runs: an interrupt's job
    assert "cancelled while queued" in book.responses[2]["traceback"]
    assert book.cancel_queued() == [3] and not book.encoded and not book.any_queue
    assert book.unanswered([1, 2, 3]) == {1: 0}


def test_a_timeout_is_provisional_until_the_server_answers_again():
    book = RequestBook([0, 1])
    queued(book, 1, 0)
    queued(book, 2, 0)
    queued(book, 3, 1)
    assigned(book, servers=[0])
    assert book.time_out(0, 30.0) == [1, 2]          # the running one and the one queued for it
    assert book.responses[1]["status"] == protocol.TIMEOUT and 0 not in book.idle
    in_timeout = {0}
    assert book.settled(1, in_timeout.__contains__)  # counts while the server is in timeout
    in_timeout.clear()
    book.recovered(0)
    assert not book.settled(1, in_timeout.__contains__)  # recovered: wait for the real one
    book.answer(0, tuple(Reply(1, 5, True)), 0.0)
    assert book.settled(1, in_timeout.__contains__) and book.responses[1]["ret"] == 5
    assert not book.settled(3, in_timeout.__contains__)


def test_a_server_in_timeout_is_given_nothing_until_it_answers_again():
    book = RequestBook([0, 1])
    book.time_out(0, 30.0)
    queued(book, 1, None)
    queued(book, 2, None)
    assert assigned(book) == [(1, 1)]
    book.recovered(0)
    assert assigned(book, servers=[0]) == [(0, 2)]


def test_forgotten_requests_are_dropped_when_their_response_comes():
    book = RequestBook([0])
    queued(book, 1, 0)
    assigned(book)
    book.forget([1])
    assert book.unanswered_ids() == [] and book.request_list() == {}
    assert answered(book, 0, 1) is None
    assert book.requests == {} and book.inflight[0] is None  # the server is free again


def test_stop_all_answers_every_open_request():
    book = RequestBook([0])
    queued(book, 1, 0)
    queued(book, 2, 0)
    assigned(book)
    book.stop_all()
    assert all("services were stopped" in book.responses[i]["traceback"] for i in (1, 2))


def test_unknown_ids_are_named():
    book = RequestBook([0])
    queued(book, 4, 0)
    assert book.check_ids(4) == [4]
    with pytest.raises(KeyError, match=r"unknown command request ids \[9\]; known ids are 4"):
        book.check_ids([4, 9])


def test_the_request_list_has_the_guides_fields():
    book = RequestBook([0])
    queued(book, 1, 0, "x = 1")
    book.assign([0], 3.0)
    assert book.request_list() == {1: {"id": 1, "command": "x = 1", "mode": "eval", "parameters": None,
                                       "server": 0, "status": protocol.REQUEST_SENT}}


def test_a_dead_server_fails_what_it_ran_and_what_waited_for_it_but_not_work_for_any():
    book = RequestBook([0, 1])
    queued(book, 1, 1)       # runs on 1
    queued(book, 4, 0)       # runs on 0
    assert assigned(book) == [(0, 4), (1, 1)]
    queued(book, 2, 1)       # queued for 1
    queued(book, 3, None)    # for any server: both are busy
    book.time_out(1, 5.0)    # a provisional timeout first: the death makes it final
    assert sorted(book.die(1, "MPIRankDied: gone\n")) == [1, 2]
    for i in (1, 2):
        response = book.responses[i]
        assert not response["successful"] and response["status"] == protocol.RESPONSE_RECEIVED
        assert response["traceback"] == "MPIRankDied: gone\n" and response["server"] == 1
    assert book.settled(1, lambda server: False)   # final, whatever the monitor says
    assert 3 not in book.responses and book.running(1) is None and book.queued([3]) == {3: None}
    answered(book, 0, 4)
    assert assigned(book, servers=[0]) == [(0, 3)]  # the survivor takes it
    assert not book.queues[1] and 2 not in book.encoded
    queued(book, 5, 0)                             # behind 3, which server 0 runs
    book.forget([5])                               # nobody waits for it: no record is left
    book.die(0, "MPIRankDied: gone too\n")
    assert 5 not in book.requests and 5 not in book.responses


def test_a_late_reply_from_a_dead_server_changes_nothing():
    book = RequestBook([0, 1])
    queued(book, 1, 0)
    assigned(book)
    book.die(0, "MPIRankDied: gone\n")
    assert answered(book, 0, 1) is None
    assert book.responses[1]["traceback"] == "MPIRankDied: gone\n" and 0 not in book.idle
    book.replaced([0])                             # a new process: free, with no past
    assert book.idle == {0, 1} and 0 not in book.dead


# -- where requests go ---------------------------------------------------------------------

def known(book: RequestBook, command: str, took: float, servers: list[int] | None = None) -> None:
    for server in book.servers if servers is None else servers:
        book.cost[server][hash(command)] = took


def test_requests_for_any_server_go_one_to_each_free_server_whatever_was_measured():
    book = RequestBook([0, 1, 2])
    known(book, "1+1", 1e-6)                       # known very quick: still one each first
    for i in (1, 2, 3):
        queued(book, i, None)
    assert assigned(book) == [(0, 1), (1, 2), (2, 3)]
    assert not book.early


def test_the_first_free_server_is_the_lowest_rank():
    book = RequestBook([0, 1, 2])
    queued(book, 1, 0)
    assigned(book)
    queued(book, 2, None)
    assert assigned(book, servers=[]) == [(1, 2)]


def test_nothing_is_sent_ahead_while_a_server_is_free():
    book = RequestBook([0, 1, 2])
    known(book, "1+1", 1e-6)
    queued(book, 1, 0)
    queued(book, 2, 1)
    assert assigned(book) == [(0, 1), (1, 2)]
    queued(book, 3, None)
    assert assigned(book) == [(2, 3)]              # to the free server, not behind a quick one
    for i in (4, 5, 6, 7):
        queued(book, i, None)
    # none is free now: sent ahead, one each in turn, up to the depth of work this quick
    assert assigned(book) == [(0, 4), (1, 5), (2, 6), (0, 7)]


def test_sent_ahead_only_behind_running_work_known_short_and_by_its_cost():
    book = RequestBook([0])
    for i in range(1, 12):
        queued(book, i, None)
    assert assigned(book) == [(0, 1)]              # its cost is unknown: nothing ahead
    answered(book, 0, 1, took=50e-6, now=1.0)      # now known quick: three wait behind the next
    assert assigned(book, 1.0, [0]) == [(0, 2), (0, 3), (0, 4), (0, 5)]
    assert book.running(0)["id"] == 2 and list(book.ahead[0]) == [3, 4, 5]
    assert all(book.requests[i]["status"] == protocol.REQUEST_SENT for i in (3, 4, 5))
    answered(book, 0, 2, took=1e-3, now=1.002)     # slower: at most one behind the running one
    assert book.running(0)["id"] == 3 and book.requests[3]["sent_at"] == 1.002  # the client's clock
    assert assigned(book, 1.002, [0]) == []        # 4 and 5 already wait
    answered(book, 0, 3, took=0.01, now=1.02)      # slow: nothing more is sent ahead
    answered(book, 0, 4, took=0.01, now=1.03)
    answered(book, 0, 5, took=0.01, now=1.04)
    assert assigned(book, 1.04, [0]) == [(0, 6)]


def test_nothing_is_sent_ahead_behind_a_command_of_unknown_or_long_cost():
    book = RequestBook([0])
    known(book, "quick()", 1e-6)
    known(book, "slow()", 1.0)
    queued(book, 1, None, "slow()")
    queued(book, 2, None, "quick()")
    queued(book, 3, None, "new()")
    assert assigned(book) == [(0, 1)]
    answered(book, 0, 1, took=1.0, now=1.0)
    assert assigned(book, 1.0, [0]) == [(0, 2), (0, 3)]  # 3 behind the quick one
    assert assigned(book, 1.0, [0]) == []              # but nothing behind 3, of unknown cost


def test_nothing_is_sent_ahead_behind_a_request_already_running_longer_than_short():
    book = RequestBook([0])
    known(book, "1+1", 1e-6)
    queued(book, 1, None)
    assert assigned(book, 0.0) == [(0, 1)]
    queued(book, 2, None)
    assert assigned(book, 2 * SHORT) == []         # 1 has run too long to count as short
    assert assigned(book, SHORT / 2) == [(0, 2)]   # (had it been young, 2 would wait behind it)


def test_requests_for_one_server_are_never_sent_ahead():
    book = RequestBook([0])
    known(book, "1+1", 1e-6)
    for i in (1, 2, 3):
        queued(book, i, 0)
    queued(book, 4, None)
    assert assigned(book) == [(0, 1)]
    answered(book, 0, 1)
    assert assigned(book, servers=[0]) == [(0, 2)]  # 3 waits for it to end; 4 behind 3
    answered(book, 0, 2)
    assert assigned(book, servers=[0]) == [(0, 3), (0, 4)]  # any server's: ahead


def test_a_request_sent_ahead_is_taken_back_once_its_server_runs_long_and_another_is_free():
    book = RequestBook([0, 1])
    known(book, "1+1", 1e-6)
    for i in (1, 2, 3):
        queued(book, i, None)
    assert assigned(book) == [(0, 1), (1, 2), (0, 3)]
    assert book.overdue(0.0) == {}                 # no server free
    answered(book, 1, 2, now=0.001)                # 1 is free; 0 still runs 1
    assert book.overdue(0.001) == {}               # 1 is young: 3 starts soon
    assert book.overdue(1.0) == {0: [3]}           # 1 has run long: ask for 3 back
    assert book.overdue(1.1) == {}                 # once
    assert book.released(0, [3], 1.1) == [3]       # given back unstarted: queued again first
    assert book.requests[3]["status"] == protocol.HOLDING_QUEUE and book.requests[3]["server"] is None
    assert assigned(book, 1.1, []) == [(1, 3)]


def test_a_release_after_the_reply_before_it_frees_the_server():
    book = RequestBook([0, 1])
    known(book, "1+1", 1e-6)
    for i in (1, 2, 3, 4):
        queued(book, i, None)
    assert assigned(book) == [(0, 1), (1, 2), (0, 3), (1, 4)]
    book.cancel_ahead([3])
    answered(book, 0, 1)                            # the client now thinks 0 runs 3
    assert book.released(0, [3], 0.0) == []        # the server gave it back: cancelled
    assert "cancelled while queued" in book.responses[3]["traceback"] and book.inflight[0] is None
    assert 0 in book.idle


def test_a_cancel_of_requests_sent_ahead_waits_for_the_servers_word():
    book = RequestBook([0])
    known(book, "1+1", 1e-6)
    for i in (1, 2, 3):
        queued(book, i, None)
    assigned(book)
    assert book.cancel_ahead([3, 9]) == {0: [3]} and book.cancel_ahead() == {0: [2, 3]}
    assert 3 not in book.responses                  # it may have started: the server says
    book.released(0, [2], 0.0)                      # 3 had started: it runs on
    assert "cancelled while queued" in book.responses[2]["traceback"] and list(book.ahead[0]) == [3]


def test_what_a_dead_server_was_sent_ahead_goes_to_the_others_and_what_it_ran_fails():
    book = RequestBook([0, 1])
    known(book, "1+1", 1e-6)
    for i in range(1, 7):
        queued(book, i, None)
    assert assigned(book) == [(0, 1), (1, 2), (0, 3), (1, 4), (0, 5), (1, 6)]
    book.cancel_ahead([5])
    book.time_out(0, 30.0)                          # provisional answers: only for what runs
    assert book.responses[1]["status"] == protocol.TIMEOUT and 3 not in book.responses
    assert book.die(0, "MPIRankDied\n") == [1]
    assert list(book.any_queue) == [3] and not book.ahead[0] and 0 not in book.holding()
    assert "cancelled while queued" in book.responses[5]["traceback"]  # cancelled, not queued again
    assert book.requests[3]["status"] == protocol.HOLDING_QUEUE and book.requests[3]["server"] is None
    assert 3 not in book.responses                  # its provisional answer went with the queue
    answered(book, 1, 2)                            # 1 runs 4, sent ahead to it; 3 follows it there
    assert book.inflight[1] == 4 and assigned(book, servers=[1]) == [(1, 3)]


def test_holding_names_what_runs_and_what_was_sent_ahead():
    book = RequestBook([0, 1])
    known(book, "1+1", 1e-6)
    for i in (1, 2, 3):
        queued(book, i, None)
    assert assigned(book) == [(0, 1), (1, 2), (0, 3)]
    assert book.holding() == {0: [1, 3], 1: [2]} and book.holding([3]) == {0: [3]}


def test_costs_are_kept_for_a_bounded_number_of_commands():
    from mpi_kernel.framework.requests import COSTS
    book = RequestBook([0])
    for i in range(COSTS + 10):
        queued(book, i, 0, f"x = {i}")
        assigned(book)
        answered(book, 0, i, took=1e-6)
    assert len(book.cost[0]) == COSTS and hash(f"x = {COSTS + 9}") in book.cost[0]


def test_a_cost_counts_on_the_server_that_measured_it_and_a_replacement_starts_with_none():
    book = RequestBook([0, 1])
    known(book, "f()", 1e-6, servers=[0])          # measured on 0 only (on 1 its first call was slow)
    for i in (1, 2, 3, 4):
        queued(book, i, None, "f()")
    assert assigned(book) == [(0, 1), (1, 2), (0, 3), (0, 4)]  # ahead on 0 only
    book.die(0, "gone")
    book.replaced([0])
    assert book.cost[0] == {} and assigned(book, servers=[0]) == [(0, 3)]
    assert assigned(book) == [] and list(book.any_queue) == [4]  # f's cost is unknown on the new process
