"""Message tags, request/response shapes and status values.

Pure Python: nothing here touches MPI, so it is unit-tested without mpiexec.
The response keys and status strings follow the mpi4casa guide (section 5.4).
"""
from __future__ import annotations

import functools
import keyword
from typing import Any, Callable, NamedTuple


class Tag:
    """Tags on the framework's private communicator (a Dup of COMM_WORLD).

    Plain ints, not an IntEnum: reading an enum member costs 175 ns, and each message
    reads one or two."""

    REQUEST = 11   # client -> server main thread: command, push, pull
    CONTROL = 12   # client -> server service thread: start, ping, interrupt, stop
    RESPONSE = 13  # server main thread -> client
    EVENT = 14     # server -> client: hello, pong, stream, log, stopped
    DATA = 15      # out-of-band buffers that follow a REQUEST or RESPONSE header
    BCAST = 16     # client -> server (whichever thread is free): a broadcast starts (broadcast.py)


# Request status values, as in the guide.
HOLDING_QUEUE = "holding queue"
REQUEST_SENT = "request sent"
RESPONSE_RECEIVED = "response received"
TIMEOUT = "timeout"

# Server states reported by the monitor ("timeout" as above; "dead": its process ended).
IDLE, BUSY, DEAD = "idle", "busy", "dead"

# Request kinds. "command" is the guide's; push/pull move persistent variables;
# "cell" runs IPython-style (the %%px magic): the last expression's value comes
# back as a mime bundle, errors as IPython-style tracebacks.
# "calls" is a view's task: a pickled function and the (args, kwargs) to call it on.
# "rebuild" makes a server join the world rebuilt around replacements for dead ranks (respawn.py).
COMMAND, PUSH, PULL, CELL, CALLS, REBUILD = "command", "push", "pull", "cell", "calls", "rebuild"

# `python -m mpi_kernel --replacement 1,3` starts replacements for dead ranks 1 and 3 (respawn.py).
REPLACEMENT = "--replacement"
# Set in the job's environment by whoever launched it when replacements cannot be started
# (srun without --overlap would wait for ever for a job step): why, for the user.
NO_RESPAWN = "MPI_KERNEL_NO_RESPAWN"
# How the launcher keeps the others when a rank dies ("hydra", "ulfm", "srun"), set in the
# job's environment by the supervisor (jupyter/supervisor.py: survives_deaths).
SURVIVE = "MPI_KERNEL_SURVIVE"

# Control and event kinds.
# DEATH tells the survivors a rank died: MPI_Finalize would then wait for it for ever. EXIT
# ends a server that cannot stop (it waits for a dead rank), so that it can be replaced.
# RECALL names requests sent ahead to a server (cancelled, or to run elsewhere): those it
# has not started it gives back at once, RELEASED, and never runs (claims.py).
# INTERRUPT names the request (or a list of them) to interrupt if it is the one running.
START, PING, INTERRUPT, STOP, STACK, DEATH, EXIT, RECALL = (
    "start", "ping", "interrupt", "stop", "stack", "death", "exit", "recall")
HELLO, PONG, STREAM, LOG, STOPPED, DISPLAY, RELEASED = (
    "hello", "pong", "stream", "log", "stopped", "display", "released")

RESPONSE_KEYS = (
    "command", "id", "mode", "parameters", "ret", "server", "status",
    "successful", "traceback", "command_start_time", "command_stop_time",
    "stdout", "stderr",
)


# Commands up to this size have their mode cached: loops send the same short text again
# and again. A longer one is compiled each time (that costs no more than sending it), so
# the cache never holds big texts (1,024 cached 1 MB commands would be 1 GB).
CACHED_COMMAND_SIZE = 4096


def command_mode(command: str) -> str:
    """Return "eval" if `command` compiles as an expression, else "exec".

    Raises SyntaxError when it is neither, TypeError when it is not a string.
    """
    if not isinstance(command, str):
        raise TypeError(f"a command is a string of Python code, not a {type(command).__name__} "
                        f"(join a list of lines with '\\n'.join(lines))")
    if len(command) <= CACHED_COMMAND_SIZE:
        return _cached_mode(command)
    return _mode(command)


def _mode(command: str) -> str:
    try:
        compile(command, "<command>", "eval")
        return "eval"
    except SyntaxError:
        pass
    compile(command, "<command>", "exec")  # raises SyntaxError with the details
    return "exec"


_cached_mode = functools.lru_cache(maxsize=1024)(_mode)


def check_names(names: Any, what: str) -> list[str]:
    """Validate variable names for push/pull/parameters; return them as a list."""
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise ValueError(f"{what}: no variable names given")
    for name in names:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"{what}: {name!r} is not a valid Python variable name")
    return names


def check_parameters(parameters: Any) -> dict | None:
    """Parameters are None or a dict whose keys are variable names."""
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise TypeError(
            f"parameters must be a dict of variable names to values, not {type(parameters).__name__}")
    check_names(list(parameters) or ["_"], "parameters")
    return parameters


def check_targets(target: Any, servers: list[int]) -> list[int] | None:
    """Turn the guide's target_server argument into a list of ranks (None = any server).

    `servers` are the server ranks, 0..N-2. Raises TypeError/ValueError with the valid
    ranks in the message.
    """
    if target is None:
        return None
    # The common cases, checked cheaply (a range test, not a search): every command's path.
    if type(target) is list and target:
        if len(target) == 1:
            first = target[0]
            if type(first) is int and 0 <= first < len(servers):
                return target
        elif all(type(r) is int and 0 <= r < len(servers) for r in target):
            return target
    valid = f"valid server ranks are {format_ranks(servers)}"
    if isinstance(target, bool) or not isinstance(target, (int, list, tuple)):
        raise TypeError(
            f"target_server must be None, an int or a list of ints, not {type(target).__name__}; {valid}")
    ranks = [target] if isinstance(target, int) else list(target)
    if not ranks:
        raise ValueError(f"target_server is an empty list; {valid}")
    for rank in ranks:
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise TypeError(f"target_server entries must be ints, not {type(rank).__name__}; {valid}")
        if rank not in servers:
            raise ValueError(f"{rank} is not a server rank; {valid}")
    return ranks


def format_ranks(ranks: list[int]) -> str:
    """Format [0, 1, 2, 5] as "0-2, 5" (used in messages)."""
    ranks = sorted(set(ranks))
    parts: list[str] = []
    start = prev = None
    for r in ranks + [None]:
        if start is not None and (r is None or r != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if r is not None and start is None:
            start = r
        prev = r
    return ", ".join(parts)


class Staged(int):
    """A push's payload when its value came by broadcast: the broadcast's id."""

    __slots__ = ()


def make_request(kind: str, request_id: int, command: str, mode: str, payload: Any) -> tuple:
    """What a server receives: (kind, id, command, mode, payload).

    A tuple, not a dict: it pickles in half the time, and this is on every command's path.
    `payload` is the parameters dict, the pushed variables or the pulled names.
    """
    return (kind, request_id, command, mode, payload)


class Reply(NamedTuple):
    """What a server sends back for a request; the client turns it into a response dict.

    Built as Reply(...) (or as_reply on the hot path) by server and client alike; read on
    the client only, by RequestBook.answer through as_reply and response_from_reply.
    On the wire it is a plain tuple in this order (`tuple(reply)`): pickling the named
    tuple itself took 4.3 us against 0.4 us, on every command's path."""

    request_id: int | None  # None: the request the server was running (it could not read the id)
    ret: Any = None
    successful: bool = False
    traceback: str | None = None
    start: float | None = None
    stop: float | None = None
    stdout: str = ""
    stderr: str = ""


# A Reply from a tuple of all its fields in order (what travelled), made in C: Reply(...)
# and Reply._make run Python code, and each request's path makes one on each side.
as_reply: Callable[[tuple], Reply] = functools.partial(tuple.__new__, Reply)


def response_from_reply(request: dict, server: int, reply: Reply) -> dict:
    """The guide's response dict, from the client's request record and a server reply."""
    return {
        "command": request["command"], "id": request["id"], "mode": request["mode"],
        "parameters": request["parameters"], "ret": reply.ret, "server": server,
        "status": RESPONSE_RECEIVED, "successful": reply.successful, "traceback": reply.traceback,
        "command_start_time": reply.start, "command_stop_time": reply.stop, "stdout": reply.stdout,
        "stderr": reply.stderr,
    }


CANCELLED = "KeyboardInterrupt: cancelled while queued; it did not run\n"


def cancelled_response(request: dict) -> dict:
    """The response of a request cancelled while still queued: it never ran."""
    return response_from_reply(request, request["server"], Reply(request["id"], traceback=CANCELLED))


def stopped_response(request: dict) -> dict:
    """The response of a request left unanswered when the services stopped: the servers have
    exited, so it never will be (a wait for it then ends instead of hanging)."""
    reply = Reply(request["id"], traceback="RuntimeError: the services were stopped "
                                                "(stop_services()) before this request was answered; "
                                                "the servers have exited\n")
    return response_from_reply(request, request["server"], reply)


def dead_response(request: dict, server: int, reason: str) -> dict:
    """The response of a request whose server died before answering: final, it never will."""
    return response_from_reply(request, server, Reply(request["id"], traceback=reason))


def timeout_response(request: dict, server: int, timeout: float) -> dict:
    """The synthetic response a pending request gets when its server times out."""
    text = (f"Timeout of assigned server {server}: it did not answer the monitor for more than "
            f"{timeout:g} s (busy in code that holds the GIL, or gone). If it answers again, a "
            f"blocking get_command_response() waits for the real response; a non-blocking one "
            f"returns this one until the real one arrives.")
    response = response_from_reply(request, server, Reply(request["id"], traceback=text))
    response["status"] = TIMEOUT
    return response
