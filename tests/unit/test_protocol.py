"""Unit tests of the pure protocol module (no MPI)."""
import pytest

from mpi_kernel.framework import protocol


def test_command_mode_eval_exec_and_syntax_error():
    assert protocol.command_mode("1+1") == "eval"
    assert protocol.command_mode("a + b") == "eval"
    assert protocol.command_mode("x = 1") == "exec"
    assert protocol.command_mode("import os\nos.getpid()") == "exec"
    with pytest.raises(SyntaxError):
        protocol.command_mode("1 +")
    with pytest.raises(TypeError, match="a command is a string of Python code, not a int"):
        protocol.command_mode(42)
    with pytest.raises(TypeError, match=r"not a list \(join a list of lines"):
        protocol.command_mode(["x = 1", "x"])
    cached = protocol._cached_mode.cache_info().currsize
    big = "x = 1\n" * 10_000  # longer than CACHED_COMMAND_SIZE: right, and not cached
    assert protocol.command_mode(big) == "exec"
    assert protocol._cached_mode.cache_info().currsize == cached


@pytest.mark.parametrize("target, expected", [(None, None), (0, [0]), ([0, 2], [0, 2]), ((1,), [1])])
def test_check_targets_valid(target, expected):
    assert protocol.check_targets(target, [0, 1, 2]) == expected


@pytest.mark.parametrize("target, error, text", [
    ("0", TypeError, "not str; valid server ranks are 0-2"),
    (1.5, TypeError, "not float"),
    (True, TypeError, "not bool"),
    ([], ValueError, "empty list; valid server ranks are 0-2"),
    (3, ValueError, "3 is not a server rank; valid server ranks are 0-2"),
    ([0, -1], ValueError, "-1 is not a server rank"),
    ([0, "1"], TypeError, "entries must be ints"),
    ([3], ValueError, "3 is not a server rank"),
    ([True], TypeError, "entries must be ints, not bool"),
    ([0, 1, 2, 3], ValueError, "3 is not a server rank"),
])
def test_check_targets_errors(target, error, text):
    with pytest.raises(error, match=text.replace("(", r"\(")):
        protocol.check_targets(target, [0, 1, 2])


def test_format_ranks():
    assert protocol.format_ranks([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert protocol.format_ranks([3]) == "3"
    assert protocol.format_ranks([]) == ""


def test_names_and_parameters():
    assert protocol.check_names("x", "pull") == ["x"]
    with pytest.raises(ValueError, match="'1x' is not a valid Python variable name"):
        protocol.check_names(["1x"], "pull")
    with pytest.raises(ValueError, match="'class'"):
        protocol.check_names(["class"], "push")
    assert protocol.check_parameters(None) is None
    assert protocol.check_parameters({"a": 1}) == {"a": 1}
    with pytest.raises(TypeError, match="parameters must be a dict"):
        protocol.check_parameters([("a", 1)])
    with pytest.raises(ValueError, match="not a valid Python variable name"):
        protocol.check_parameters({"a b": 1})


def test_response_from_reply_has_exactly_the_guide_keys():
    request = {"id": 7, "command": "a+b", "mode": "eval", "parameters": {"a": 1, "b": 2}}
    reply = protocol.Reply(7, 3, True, None, 1.0, 2.0, "out", "")
    assert protocol.as_reply(tuple(reply)) == reply and type(protocol.as_reply(tuple(reply))) is protocol.Reply
    response = protocol.response_from_reply(request, 1, reply)
    assert tuple(response) == protocol.RESPONSE_KEYS
    assert response == {"command": "a+b", "id": 7, "mode": "eval", "parameters": {"a": 1, "b": 2},
                        "ret": 3, "server": 1, "status": "response received", "successful": True,
                        "traceback": None, "command_start_time": 1.0, "command_stop_time": 2.0,
                        "stdout": "out", "stderr": ""}


def test_timeout_response():
    request = {"id": 3, "command": "f()", "mode": "eval", "parameters": None}
    response = protocol.timeout_response(request, 2, 1.5)
    assert response["status"] == "timeout"
    assert response["successful"] is False
    assert response["traceback"].startswith("Timeout of assigned server 2")
    assert "1.5 s" in response["traceback"]


def test_cancelled_response():
    request = {"id": 4, "command": "f()", "mode": "eval", "parameters": None, "server": None}
    response = protocol.cancelled_response(request)
    assert set(response) == set(protocol.RESPONSE_KEYS)
    assert (response["id"], response["server"], response["status"], response["successful"]) == \
        (4, None, "response received", False)
    assert response["traceback"] == "KeyboardInterrupt: cancelled while queued; it did not run\n"
