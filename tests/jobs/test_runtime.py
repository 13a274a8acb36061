"""Output, logging, variables, interrupts, load, monitor timeouts and idle CPU (real jobs)."""
import os
import subprocess
import sys
import time

from conftest import MPIEXEC, last_json



def test_output_is_captured_and_streamed_live(job):
    out = job(r"""
        import json
        c = MPICommandClient()
        events = []
        c.stream_callback = lambda server, rid, name, text: events.append((time.time(), server, rid, name, text))
        c.start_services()
        cmd = ("import sys, time\nprint('first', rank, flush=True)\ntime.sleep(0.6)\n"
               "print('second', rank)\nsys.stderr.write('err line\\n')")
        ids = c.push_command_request(cmd, False, [0, 1])
        t0 = time.time()
        while not any(e[4].startswith("first") for e in events):
            c.get_command_response(ids, False, False)
            time.sleep(0.01)
        first_seen = time.time() - t0
        res = c.get_command_response(ids, True)
        print(json.dumps([first_seen, [(r["stdout"], r["stderr"]) for r in res],
                          sorted({(e[1], e[2] in ids, e[3]) for e in events})]))
    """)
    first_seen, captured, streams = last_json(out)
    assert first_seen < 0.5  # shown while the command still runs
    assert captured == [["first 0\nsecond 0\n", "err line\n"], ["first 1\nsecond 1\n", "err line\n"]]
    assert streams == [[0, True, "stderr"], [0, True, "stdout"], [1, True, "stderr"], [1, True, "stdout"]]


def test_output_of_c_code_and_child_processes_is_captured_live(tmp_path):
    from conftest import check_ok, run_job
    proc = run_job(tmp_path, r"""
        import json
        c = MPICommandClient()
        events = []
        c.stream_callback = lambda server, rid, name, text: events.append((time.time(), rid, name, text))
        c.start_services()
        cmd = ("import ctypes, os\nctypes.CDLL(None).printf(b'printf %d\\n', rank)\n"
               "os.system('echo tick; sleep 0.6; echo tock >&2')")
        ids = c.push_command_request(cmd, False, [0, 1])
        t0 = time.time()
        while not any("tick" in e[3] for e in events):
            c.get_command_response(ids, False, False)
            time.sleep(0.01)
        tick_seen = time.time() - t0
        res = c.get_command_response(ids, True)
        # Between commands, fd output goes to the job's own stdout (the log), not to a response.
        c.push_command_request("import subprocess; subprocess.Popen('sleep 0.3; echo between-commands', "
                               "shell=True)", True, 0)
        time.sleep(1.0)
        print(json.dumps([tick_seen, [(r["stdout"], r["stderr"]) for r in res]]))
    """)
    tick_seen, captured = last_json(check_ok(proc))
    assert tick_seen < 0.5  # shown while the command still runs
    assert captured == [["printf 0\ntick\n", "tock\n"], ["printf 1\ntick\n", "tock\n"]]
    assert proc.stdout.count("between-commands") == 1


def test_nothing_reaches_mpiexec_stdout(tmp_path):
    from conftest import run_job
    proc = run_job(tmp_path, """
        c = MPICommandClient()
        c.start_services()
        c.push_command_request("print('SERVER-SECRET')", True, [0, 1, 2])
    """)
    assert proc.returncode == 0 and "SERVER-SECRET" not in proc.stdout + proc.stderr


def test_server_logs_are_forwarded_with_origin(tmp_path):
    from conftest import run_job
    proc = run_job(tmp_path, """
        import logging
        c = MPICommandClient(log_level=logging.INFO)
        c.start_services()
        c.push_command_request("import logging\\nlogging.getLogger('mpi_kernel.user').info('hello from %d', rank)", True, [1])
        c.push_command_request("import logging\\nlogging.warning('user warning on %d', rank)", True, [2])
    """, env={"MPI_KERNEL_LOG_LEVEL": "INFO"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(":MPIServer-1 hello from 1" in line and "INFO" in line for line in lines), proc.stderr
    assert any(":MPIServer-2 user warning on 2" in line for line in lines), proc.stderr
    assert any(":MPIClient MPI enabled at host" in line for line in lines), proc.stderr


def test_push_pull_numpy_arrays(job):
    out = job(r"""
        import json
        import numpy as np
        c = MPICommandClient()
        c.start_services()
        big = np.arange(2_000_000, dtype=np.float64)       # 16 MB: goes out of band
        small = {"n": 3, "name": "abc"}
        c.push({"big": big, "small": small})
        sums = [r["ret"] for r in c.push_command_request("float(big.sum()) + small['n']", True, [0, 1, 2])]
        c.push({"tag": "only-1"}, targets=[1])
        c.push_command_request("back = big[::2].copy() * rank", True, [0, 1, 2])
        pulled = c.pull("back", targets=[1, 2])
        both = c.pull(["small", "tag"], targets=1)
        ok = all(np.array_equal(pulled[r], big[::2] * r) for r in (1, 2))
        print(json.dumps([sums, sorted(pulled), ok, both]))
    """)
    sums, ranks, ok, both = last_json(out)
    expected = float(sum(range(2_000_000))) + 3
    assert sums == [expected] * 3
    assert ranks == [1, 2] and ok is True
    assert both == {"1": [{"n": 3, "name": "abc"}, "only-1"]}


def test_scatter_and_gather(job):
    out = job(r"""
        import json
        import numpy as np
        c = MPICommandClient()
        c.start_services()
        data = np.arange(1_000_000, dtype=np.float64)     # parts of 2.7 MB: out of band
        c.scatter("part", data)
        sizes = [r["ret"] for r in c.push_command_request("len(part)", True, [0, 1, 2])]
        c.push_command_request("part = part * 2", True, [0, 1, 2])
        doubled = bool((c.gather("part") == data * 2).all())
        c.scatter("names", ["a", "b", "c", "d"], targets=[0, 2])
        names = [c.pull("names", [0, 2]), c.gather("names", [0, 2])]
        errors = []
        for call in (lambda: c.scatter("x", 5), lambda: c.gather("rank"), lambda: c.scatter("1x", [1])):
            try:
                call()
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        print(json.dumps([sizes, doubled, names, errors]))
    """)
    sizes, doubled, names, errors = last_json(out)
    assert sizes == [333_334, 333_333, 333_333] and doubled is True
    assert names == [{"0": ["a", "b"], "2": ["c", "d"]}, ["a", "b", "c", "d"]]
    assert errors == [
        "TypeError: scatter needs a sequence that can be sliced (list, tuple, range, NumPy array), not int",
        "TypeError: gather joins NumPy arrays, lists, tuples or strings, not int; use pull() to get each "
        "server's value",
        "ValueError: scatter: '1x' is not a valid Python variable name"]


def test_cancel_queued_requests(job):
    out = job(r"""
        import json
        c = MPICommandClient()
        c.start_services()
        running = c.push_command_request("__import__('time').sleep(0.5) or 'ran'", False, [0, 1, 2])
        queued = c.push_command_request("'queued'", False, 0) + c.push_command_request("'any'", False, None)
        untouched = c.cancel_queued(running)
        cancelled = c.cancel_queued()
        responses = c.get_command_response(running + queued, True)
        after = c.push_command_request("'next'", True, None)[0]["ret"]
        print(json.dumps([untouched, cancelled == queued, [(r["ret"], r["successful"], r["traceback"])
                                                             for r in responses], after]))
    """)
    untouched, same, responses, after = last_json(out)
    cancelled = [None, False, "KeyboardInterrupt: cancelled while queued; it did not run\n"]
    assert untouched == [] and same is True and after == "next"
    assert responses == [["ran", True, None]] * 3 + [cancelled] * 2


def test_interrupt_busy_loop_on_all_servers(job):
    out = job(r"""
        import json
        c = MPICommandClient()
        c.start_services()
        ids = c.push_command_request("while True: pass", False, [0, 1, 2])
        queued = c.push_command_request("'after'", False, [0])
        time.sleep(0.3)
        t0 = time.monotonic()
        busy = c.interrupt()
        res = c.get_command_response(ids, True, timeout=5)
        elapsed = time.monotonic() - t0
        after = [r["ret"] for r in c.push_command_request("1+1", True, [0, 1, 2])]
        kept = c.get_command_response(queued, True)[0]["ret"]
        print(json.dumps([busy, elapsed, [(r["successful"], r["traceback"].strip().splitlines()[-1]) for r in res], after, kept]))
    """)
    busy, elapsed, results, after, kept = last_json(out)
    assert busy == [0, 1, 2]
    assert elapsed < 1.0
    assert results == [[False, "KeyboardInterrupt"]] * 3
    assert after == [2, 2, 2] and kept == "after"


def test_thousand_mixed_commands_each_answered_once(job):
    out = job(r"""
        import json, random
        rng = random.Random(7)
        c = MPICommandClient()
        c.start_services()
        expected, pending = {}, []
        for i in range(1000):
            target = rng.choice([None, 0, 1, 2, [0, 1], [1, 2], [0, 1, 2]])
            if rng.random() < 0.3:
                for r in c.push_command_request(f"{i} * 2", True, target):
                    expected[r["id"]] = (i * 2, r["ret"], r["status"])
            else:
                ids = c.push_command_request(f"{i} * 2", False, target)
                pending.append((i, ids))
        for i, ids in pending:
            for r in c.get_command_response(ids, True):
                expected[r["id"]] = (i * 2, r["ret"], r["status"])
        all_ids = set(c.get_command_request_list())
        responses = c.get_command_response_list()
        ok = all(want == got and status == "response received" for want, got, status in expected.values())
        print(json.dumps([len(all_ids), len(expected), set(expected) == all_ids == set(responses), ok]))
    """, timeout=120)
    n_ids, n_answered, same_sets, ok = last_json(out)
    assert n_ids == n_answered and n_ids > 1000
    assert same_sets and ok


def test_stopped_server_times_out_then_recovers(job):
    out = job(r"""
        import json
        c = MPICommandClient(ping_interval=0.1, server_timeout=1.0)
        c.start_services()
        pid = c.get_server_status(0)["pid"]
        ids = c.push_command_request("__import__('time').sleep(0.3) or 'real'", False, 0)
        queued = c.push_command_request("'queued'", False, 0)
        time.sleep(0.05)
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        first = c.get_command_response(ids + queued, True, timeout=10)
        detected = time.monotonic() - t0
        state = c.get_server_status(0)["state"]
        try:
            c.push_command_request("1", True, 0)
            refused = "no error"
        except RuntimeError as exc:
            refused = str(exc)
        others = c.push_command_request("'fine'", True, [1, 2])
        os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while c.get_server_status(0)["state"] == "timeout":  # the server answers pings again
            assert time.monotonic() < deadline, "no recovery"
            c.get_command_response([], False)
            time.sleep(0.01)
        # It has recovered: a blocking get waits for the real responses, not the stale ones.
        final = c.get_command_response(ids + queued, True, timeout=10)
        print(json.dumps([detected, [(r["status"], r["successful"], r["traceback"][:28]) for r in first],
                          state, refused, [r["ret"] for r in others],
                          [(r["status"], r["ret"]) for r in final], c.get_server_status(0)["state"]]))
    """, timeout=60)
    detected, first, state, refused, others, final, state_after = last_json(out)
    assert detected < 2.5  # limit 1 s, pings every 0.1 s
    assert first == [["timeout", False, "Timeout of assigned server 0"]] * 2
    assert state == "timeout"
    assert refused.startswith("server 0 is in timeout")
    assert others == ["fine", "fine"]
    assert final == [["response received", "real"], ["response received", "queued"]]
    assert state_after == "idle"


def test_gil_holding_command_times_out_but_heavy_client_work_does_not(job):
    out = job(r"""
        import json
        sys.set_int_max_str_digits(0)
        c = MPICommandClient(ping_interval=0.1, server_timeout=0.5)
        c.start_services()
        # the client holds the GIL for about a second: no server may be marked timeout
        t0 = time.monotonic()
        len(str(10 ** 300000))
        client_busy = time.monotonic() - t0
        c.get_command_response([], True)
        time.sleep(0.3)
        states_after_client_work = [s["state"] for s in c.get_server_status().values()]
        # a server command that holds the GIL for seconds: that server times out, then recovers
        ids = c.push_command_request("sum(range(2 * 10**8))", False, 1)
        time.sleep(0.2)
        seen = set()
        deadline = time.monotonic() + 30
        while True:
            (r,) = c.get_command_response(ids, False, False) or [None]
            seen.add(c.get_server_status(1)["state"])
            if r is not None and r["status"] == "response received":
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        print(json.dumps([client_busy, states_after_client_work, sorted(seen), r["ret"] == sum(range(2 * 10**8))]))
    """, timeout=90)
    client_busy, states, seen, ok = last_json(out)
    assert client_busy > 0.5  # the client really stalled for longer than the limit
    assert states == ["idle", "idle", "idle"]
    assert "timeout" in seen and ok


def test_idle_ranks_do_not_spin(tmp_path):
    """Each idle rank (client and servers) uses at most 2% of a core over 5 s."""
    script = tmp_path / "idle.py"
    script.write_text(
        "import time, os\nfrom mpi_kernel import MPICommandClient\n"
        "c = MPICommandClient(); c.start_services()\n"
        "pids = [s['pid'] for s in c.get_server_status().values()] + [os.getpid()]\n"
        "print(' '.join(map(str, pids)), flush=True)\n"
        "time.sleep(8)\n")
    proc = subprocess.Popen([MPIEXEC, "-n", "4", sys.executable, "-m", "mpi_kernel", str(script)],
                            stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        time.sleep(1.5)  # let the start-up spin settle: after 1 s idle the waits sleep longest

        def cpu_seconds(pid: int) -> float:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        before = [cpu_seconds(p) for p in pids]
        time.sleep(5)
        used = [(cpu_seconds(p) - b) / 5 for p, b in zip(pids, before)]
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    print("idle CPU per rank:", used)
    assert all(u <= 0.02 for u in used), f"CPU per rank over 5 s: {used}"


def test_late_response_to_a_forgotten_request_is_dropped(job):
    out = job(r"""
        import json
        c = MPICommandClient(ping_interval=0.1, server_timeout=0.5)
        c.start_services()
        pid = c.get_server_status(0)["pid"]
        ids = c.push_command_request("__import__('time').sleep(0.3) or 'late'", False, 0)
        time.sleep(0.05)
        os.kill(pid, signal.SIGSTOP)
        first = c.get_command_response(ids, True, timeout=10)[0]["status"]
        c.forget(ids)
        os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while c.get_server_status(0)["state"] != "idle":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        after = c.push_command_request("'next'", True, 0)[0]["ret"]
        print(json.dumps([first, ids[0] in c.get_command_request_list(), after]))
    """, timeout=60)
    assert last_json(out) == ["timeout", False, "next"]


def test_forgetting_pending_requests_drops_their_responses(job):
    out = job(r"""
        import json
        c = MPICommandClient()
        c.start_services()
        pending = c.push_command_request("__import__('time').sleep(0.2) or 'dropped'", False, [0, 1])
        queued = c.push_command_request("'queued'", False, 0)
        c.forget(pending + queued)
        after = c.push_command_request("'next'", True, [0, 1])   # served after the forgotten ones
        known = set(c.get_command_request_list()) | set(c.get_command_response_list())
        print(json.dumps([[r["ret"] for r in after], sorted(known & set(pending + queued))]))
    """)
    assert last_json(out) == [["next", "next"], []]
