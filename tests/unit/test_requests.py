"""The request book (mpi_kernel/framework/requests.py) on its own: no MPI, no threads."""
from __future__ import annotations

import pytest

from mpi_kernel.framework import protocol
from mpi_kernel.framework.protocol import Reply
from mpi_kernel.framework.requests import RequestBook


def queued(book: RequestBook, request_id: int, server: int | None, command: str = "1+1") -> None:
    book.add(protocol.COMMAND, request_id, command, "eval", None, server, f"message {request_id}")


def test_a_request_is_queued_sent_and_answered():
    book = RequestBook([0, 1])
    queued(book, 1, 0)
    assert book.requests[1]["status"] == protocol.HOLDING_QUEUE and book.queued([1]) == {1: 0}
    assert book.take_next(0, now=5.0) == (1, "message 1")
    assert book.requests[1]["status"] == protocol.REQUEST_SENT and book.requests[1]["sent_at"] == 5.0
    assert book.running(0)["id"] == 1 and book.busy() == 1 and book.queued([1]) == {}
    response = book.answer(0, tuple(Reply(1, 2, True, None, 1.0, 2.0, "out", "")))
    assert response["ret"] == 2 and response["stdout"] == "out" and response["server"] == 0
    assert book.requests[1]["status"] == protocol.RESPONSE_RECEIVED and book.running(0) is None
    assert book.pop_responses([1]) == [response] and 1 not in book.requests


def test_a_busy_server_takes_nothing_and_its_own_queue_comes_before_any():
    book = RequestBook([0, 1])
    queued(book, 1, 0)
    queued(book, 2, None)
    queued(book, 3, 0)
    assert book.take_next(0, 0.0)[0] == 1
    assert book.take_next(0, 0.0) is None            # one request at a time
    assert book.take_next(1, 0.0)[0] == 2            # "any server": the first free one
    book.answer(0, tuple(Reply(1, successful=True)))
    assert book.take_next(0, 0.0)[0] == 3 and not book.encoded


def test_a_reply_without_an_id_answers_what_the_server_runs():
    book = RequestBook([0])
    queued(book, 7, 0)
    book.take_next(0, 0.0)
    response = book.answer(0, tuple(Reply(None, traceback="DecodeError: ...\n")))
    assert response["id"] == 7 and not response["successful"] and book.inflight[0] is None


def test_cancel_takes_only_queued_requests_and_says_they_never_ran():
    book = RequestBook([0])
    queued(book, 1, 0)
    queued(book, 2, 0)
    queued(book, 3, None)
    book.take_next(0, 0.0)
    assert book.cancel_queued([1, 2]) == [2]         # 1 already runs: an interrupt's job
    assert "cancelled while queued" in book.responses[2]["traceback"]
    assert book.cancel_queued() == [3] and not book.encoded and not book.any_queue
    assert book.unanswered([1, 2, 3]) == {1: 0}


def test_a_timeout_is_provisional_until_the_server_answers_again():
    book = RequestBook([0, 1])
    queued(book, 1, 0)
    queued(book, 2, 0)
    queued(book, 3, 1)
    book.take_next(0, 0.0)
    assert book.time_out(0, 30.0) == [1, 2]          # the running one and the one queued for it
    assert book.responses[1]["status"] == protocol.TIMEOUT
    in_timeout = {0}
    assert book.settled(1, in_timeout.__contains__)  # counts while the server is in timeout
    in_timeout.clear()
    assert not book.settled(1, in_timeout.__contains__)  # recovered: wait for the real one
    book.answer(0, tuple(Reply(1, 5, True)))
    assert book.settled(1, in_timeout.__contains__) and book.responses[1]["ret"] == 5
    assert not book.settled(3, in_timeout.__contains__)


def test_forgotten_requests_are_dropped_when_their_response_comes():
    book = RequestBook([0])
    queued(book, 1, 0)
    book.take_next(0, 0.0)
    book.forget([1])
    assert book.unanswered_ids() == [] and book.request_list() == {}
    assert book.answer(0, tuple(Reply(1, successful=True))) is None
    assert book.requests == {} and book.inflight[0] is None  # the server is free again


def test_stop_all_answers_every_open_request():
    book = RequestBook([0])
    queued(book, 1, 0)
    queued(book, 2, 0)
    book.take_next(0, 0.0)
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
    book.take_next(0, 3.0)
    assert book.request_list() == {1: {"id": 1, "command": "x = 1", "mode": "eval", "parameters": None,
                                       "server": 0, "status": protocol.REQUEST_SENT}}


def test_a_dead_server_fails_what_it_ran_and_what_waited_for_it_but_not_work_for_any():
    book = RequestBook([0, 1])
    queued(book, 1, 1)       # runs on 1
    queued(book, 2, 1)       # queued for 1
    queued(book, 3, None)    # for any server
    queued(book, 4, 0)       # another server's
    assert book.take_next(1, 0.0)[0] == 1
    book.time_out(1, 5.0)    # a provisional timeout first: the death makes it final
    assert sorted(book.die(1, "MPIRankDied: gone\n")) == [1, 2]
    for i in (1, 2):
        response = book.responses[i]
        assert not response["successful"] and response["status"] == protocol.RESPONSE_RECEIVED
        assert response["traceback"] == "MPIRankDied: gone\n" and response["server"] == 1
    assert book.settled(1, lambda server: False)   # final, whatever the monitor says
    assert 3 not in book.responses and 4 not in book.responses and book.running(1) is None
    assert book.take_next(0, 0.0)[0] == 4 and book.queued([3]) == {3: None}
    assert not book.queues[1] and 2 not in book.encoded
    queued(book, 5, 0)                             # behind 4, which server 0 runs
    book.forget([5])                               # nobody waits for it: no record is left
    book.die(0, "MPIRankDied: gone too\n")
    assert 5 not in book.requests and 5 not in book.responses


def answered_in(book: RequestBook, server: int, request_id: int, seconds: float) -> None:
    book.answer(server, tuple(Reply(request_id, None, True, None, 100.0, 100.0 + seconds)))


def test_requests_for_any_server_are_sent_ahead_by_how_quick_the_last_one_was():
    book = RequestBook([0])
    for i in range(1, 12):
        queued(book, i, None)
    assert book.take_next(0, 0.0)[0] == 1 and book.take_next(0, 0.0) is None  # its time is unknown
    answered_in(book, 0, 1, 50e-6)                  # quick: three more may wait behind the running one
    assert [book.take_next(0, 1.0)[0] for _ in range(4)] == [2, 3, 4, 5] and book.take_next(0, 1.0) is None
    assert book.running(0)["id"] == 2 and list(book.ahead[0]) == [3, 4, 5]
    assert all(book.requests[i]["status"] == protocol.REQUEST_SENT for i in (3, 4, 5))
    answered_in(book, 0, 2, 1e-3)                   # slower: one behind it
    assert book.running(0)["id"] == 3 and book.requests[3]["sent_at"] == 100.001  # it started then
    assert book.take_next(0, 2.0) is None           # 4 and 5 already wait
    answered_in(book, 0, 3, 0.01)                   # slow: nothing more is sent ahead
    answered_in(book, 0, 4, 0.01)
    answered_in(book, 0, 5, 0.01)
    assert book.take_next(0, 3.0)[0] == 6 and book.take_next(0, 3.0) is None


def test_requests_for_one_server_are_never_sent_ahead():
    book = RequestBook([0])
    for i in (1, 2, 3):
        queued(book, i, 0)
    queued(book, 4, None)
    book.take_next(0, 0.0)
    answered_in(book, 0, 1, 1e-6)
    assert book.take_next(0, 0.0)[0] == 2 and book.take_next(0, 0.0) is None  # 3 waits for it to end
    answered_in(book, 0, 2, 1e-6)
    assert book.take_next(0, 0.0)[0] == 3 and book.take_next(0, 0.0)[0] == 4  # any server's: ahead


def test_what_a_dead_server_was_sent_ahead_is_queued_again_first_and_what_it_ran_fails():
    book = RequestBook([0, 1])
    for i in range(1, 6):
        queued(book, i, None)
    book.take_next(0, 0.0)
    answered_in(book, 0, 1, 1e-6)
    assert [book.take_next(0, 0.0)[0] for _ in range(3)] == [2, 3, 4]
    assert book.sent_ahead([3, 5]) == {0: [3]} and book.sent_ahead() == {0: [3, 4]}
    book.time_out(0, 30.0)                          # provisional answers: dropped when queued again
    assert book.die(0, "MPIRankDied\n") == [2]
    assert list(book.any_queue) == [3, 4, 5] and not book.ahead[0] and not book.early
    assert all(book.requests[i]["status"] == protocol.HOLDING_QUEUE and book.requests[i]["server"] is None
               and i not in book.responses for i in (3, 4))
    assert book.take_next(1, 0.0) == (3, "message 3")
