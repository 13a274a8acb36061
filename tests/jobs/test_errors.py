"""Bad input gets a clear error and loses nothing (real 4-rank jobs)."""
from conftest import last_json, run_job


def test_bad_input_errors_keep_queued_work(job):
    out = job(r"""
        import json
        c = MPICommandClient()
        errors = {}
        def attempt(name, f):
            try:
                f()
                errors[name] = "no error"
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
        attempt("before start", lambda: c.push_command_request("1", True))
        c.start_services()
        queued = c.push_command_request("__import__('time').sleep(0.3) or 'kept'", False, [0, 1, 2])
        attempt("string target", lambda: c.push_command_request("1", True, "0"))
        attempt("client rank", lambda: c.push_command_request("1", True, 3))
        attempt("negative", lambda: c.push_command_request("1", True, [-1]))
        attempt("empty list", lambda: c.push_command_request("1", True, []))
        attempt("syntax", lambda: c.push_command_request("1 +* 2", True))
        attempt("unknown id", lambda: c.get_command_response([9999], True))
        attempt("bad parameters", lambda: c.push_command_request("a", True, 0, ["a"]))
        attempt("unpicklable parameter",
                lambda: c.push_command_request("f", True, 0, {"f": __import__("threading").Lock()}))
        attempt("push not dict", lambda: c.push([1, 2]))
        attempt("pull bad name", lambda: c.pull("1x"))
        attempt("pull missing", lambda: c.pull("not_there", 1))
        attempt("status bad rank", lambda: c.get_server_status(7))
        attempt("timeout", lambda: c.get_command_response(
            c.push_command_request("__import__('time').sleep(2)", False, 2), True, timeout=0.2))
        kept = [r["ret"] for r in c.get_command_response(queued, True)]
        after = [r["ret"] for r in c.push_command_request("1+1", True, [0, 1, 2])]
        print(json.dumps([errors, kept, after]))
    """)
    errors, kept, after = last_json(out)
    assert kept == ["kept"] * 3 and after == [2, 2, 2]
    expected = {
        "before start": "RuntimeError: the client services are not started: call start_services() first",
        "string target": "TypeError: target_server must be None, an int or a list of ints, not str; "
                         "valid server ranks are 0-2",
        "client rank": "ValueError: 3 is not a server rank; valid server ranks are 0-2",
        "negative": "ValueError: -1 is not a server rank; valid server ranks are 0-2",
        "empty list": "ValueError: target_server is an empty list; valid server ranks are 0-2",
        "push not dict": "TypeError: push() takes a dict of names to values, not list",
        "pull bad name": "ValueError: pull: '1x' is not a valid Python variable name",
        "status bad rank": "ValueError: 7 is not a server rank; valid server ranks are 0-2",
    }
    for name, text in expected.items():
        assert errors[name] == text, (name, errors[name])
    assert errors["syntax"].startswith("SyntaxError: invalid syntax")
    assert errors["unknown id"].startswith("KeyError: 'unknown command request ids [9999]")
    assert errors["bad parameters"].startswith("TypeError: parameters must be a dict")
    assert errors["unpicklable parameter"].startswith("TypeError: cannot send 'f' to the servers")
    assert "cannot be pickled" in errors["unpicklable parameter"]
    assert errors["pull missing"].startswith("ServerError: <pull not_there> failed on server 1")
    assert errors["pull missing"].endswith("failed on server 1:\nNameError: 'not_there' not defined on the server\n")
    assert errors["timeout"].startswith("TimeoutError: no response within 0.2 s for command request ids")
    assert "(server 2, request sent)" in errors["timeout"]


def test_base_exceptions_and_unpicklable_results(job):
    out = job(r"""
        import json
        c = MPICommandClient()
        c.start_services()
        res = {}
        for name, cmd in [("exit", "raise SystemExit(4)"), ("kbd", "raise KeyboardInterrupt"),
                          ("base", "raise BaseException('deep')"), ("gen", "(i for i in range(3))"),
                          ("lock", "__import__('threading').Lock()")]:
            r = c.push_command_request(cmd, True, 0)[0]
            res[name] = [r["successful"], r["traceback"].strip().splitlines()[-1], r["ret"]]
        res["alive"] = c.push_command_request("'still serving'", True, 0)[0]["ret"]
        print(json.dumps(res))
    """)
    res = last_json(out)
    assert res["exit"] == [False, "SystemExit: 4", None]
    assert res["kbd"] == [False, "KeyboardInterrupt", None]
    assert res["base"] == [False, "BaseException: deep", None]
    assert res["gen"][0] is False and res["gen"][2] is None
    assert res["gen"][1].startswith("TypeError: the result of command")
    assert "(a generator) cannot be sent to the client" in res["gen"][1]
    assert "(a lock) cannot be sent" in res["lock"][1]
    assert res["alive"] == "still serving"


def test_script_definitions_travel_by_value(job):
    """Functions, lambdas and classes defined on one side work on the other (cloudpickle)."""
    out = job(r"""
        import json
        c = MPICommandClient()
        c.start_services()
        def square(x):
            return x * x
        class Point:
            def __init__(self, x):
                self.x = x
        c.push({"square": square, "inc": lambda y: y + 1, "p": Point(3)})
        on_servers = [r["ret"] for r in c.push_command_request("square(4) + inc(1) + p.x", True, [0, 1, 2])]
        c.push_command_request("class Q:\n    def __init__(self): self.v = rank\ndef g(): return 10", True, [1])
        q = c.pull("Q", [1])[1]()
        pulled = [c.pull("g", [1])[1](), c.push_command_request("Q()", True, [1])[0]["ret"].v, q.v]
        print(json.dumps([on_servers, pulled]))
    """)
    assert last_json(out) == [[21, 21, 21], [10, 1, 1]]


def test_values_that_cannot_be_unpickled_on_the_other_side(job, tmp_path):
    """A module present on one side only: a clear failed response, the server keeps serving,
    and the request queued behind it still runs."""
    for side in ("client", "server"):
        (tmp_path / f"{side}_only").mkdir()
        (tmp_path / f"{side}_only" / f"{side}_mod.py").write_text("class Thing:\n    pass\n")
    out = job(r"""
        import json, sys
        sys.path.insert(0, "client_only")
        import client_mod
        c = MPICommandClient()
        c.start_services()
        first = c.push_command_request("t", False, 0, {"t": client_mod.Thing()})
        queued = c.push_command_request("1+1", False, 0)
        sent, after = c.get_command_response(first + queued, True)
        c.push_command_request("import sys; sys.path.insert(0, 'server_only'); import server_mod", True, 0)
        back = c.push_command_request("server_mod.Thing()", True, 0)[0]
        last = c.push_command_request("'serving'", True, 0)[0]["ret"]
        print(json.dumps([[sent["successful"], sent["traceback"]], after["ret"],
                          [back["successful"], back["traceback"]], last]))
    """)
    sent, after, back, last = last_json(out)
    assert sent[0] is False and sent[1].startswith(
        "DecodeError: the request could not be unpickled on the server: "
        "ModuleNotFoundError: No module named 'client_mod'")
    assert back[0] is False and back[1].startswith(
        "DecodeError: the result from server 0 could not be unpickled on the client: "
        "ModuleNotFoundError: No module named 'server_mod'")
    assert after == 2 and last == "serving"


def test_traceback_through_a_function_from_an_earlier_command_shows_its_lines(job):
    out = job(r"""
        import json
        c = MPICommandClient()
        c.start_services()
        c.push_command_request("x = 1\n\n\ndef f(a):\n    return 1 / a", True, 0)
        print(json.dumps(c.push_command_request("y = 2\nf(0)", True, 0)[0]["traceback"]))
    """)
    lines = [line.strip() for line in last_json(out).splitlines()]
    assert lines[1:3] == ['File "<server 0>", line 2, in <module>', "f(0)"]
    assert lines[3].startswith('File "<server 0 command-') and lines[3].endswith('", line 5, in f')
    assert lines[4] == "return 1 / a"


def test_an_abort_on_a_server_names_its_rank_and_ends_the_job(tmp_path):
    proc = run_job(tmp_path, """
        c = MPICommandClient(); c.start_services()
        c.push_command_request("print('before'); comm.Abort(5)", True, 1)
        print("not reached")
    """, timeout=60)
    assert proc.returncode != 0 and "not reached" not in proc.stdout
    assert "mpi-kernel: rank 1 on " in proc.stderr and "called MPI_Abort: Abort(5) on the servers' world" \
        in proc.stderr, proc.stderr


def test_a_server_holding_the_gil_at_the_end_of_a_script_does_not_hang_the_job(tmp_path):
    import time
    t0 = time.monotonic()
    proc = run_job(tmp_path, """
        c = MPICommandClient(stop_timeout=1); c.start_services()
        c.push_command_request("x = 7 ** (10**9)", False, 0)   # minutes, holding the GIL
        time.sleep(0.3)
        print("script done", flush=True)
    """, timeout=60)
    assert "script done" in proc.stdout and proc.returncode != 0  # aborted: not a clean end
    assert "servers 0 did not confirm the stop within 1 s" in proc.stderr
    assert time.monotonic() - t0 < 15


def test_a_wait_in_another_thread_ends_when_the_script_stops_the_servers(tmp_path):
    proc = run_job(tmp_path, """
        import threading
        c = MPICommandClient(); c.start_services()
        c.push_command_request("import time; time.sleep(30)", False, 0)
        queued = c.push_command_request("'never sent'", False, 0)
        def wait():
            print(repr(c.get_command_response(queued, True)[0]["traceback"]), flush=True)
        threading.Thread(target=wait).start()    # not a daemon: the interpreter waits for it
        time.sleep(0.5)
        print("script done", flush=True)
    """, timeout=60)
    assert "script done" in proc.stdout, proc.stderr
    assert "the services were stopped (stop_services()) before this request was answered" in proc.stdout
