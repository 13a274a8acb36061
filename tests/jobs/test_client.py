"""Behaviour of MPICommandClient on real 4-rank jobs (each with a timeout)."""
import os
import subprocess
import sys

from conftest import MPIEXEC, last_json, run_job



def test_persistent_namespace_parameters_and_comm(job):
    out = job("""
        import json
        c = MPICommandClient()
        c.start_services()
        c.push_command_request("x = 1", True, [0, 1, 2])
        two = [r["ret"] for r in c.push_command_request("x + 1", True, [0, 1, 2])]
        # a parameter shadows x for one command, then x is back
        shadow = c.push_command_request("x * 10", True, 0, {"x": 5})[0]["ret"]
        back = c.push_command_request("x", True, 0)[0]["ret"]
        ranks = [r["ret"] for r in c.push_command_request("(rank, size, comm.Get_size())", True, [0, 1, 2])]
        total = [r["ret"] for r in c.push_command_request("comm.allreduce(rank)", True, [0, 1, 2])]
        print(json.dumps([two, shadow, back, ranks, total]))
    """)
    assert last_json(out) == [[2, 2, 2], 50, 1, [[0, 3, 3], [1, 3, 3], [2, 3, 3]], [3, 3, 3]]


def test_user_messages_on_comm_world_are_not_framework_messages(job):
    out = job("""
        import json
        from mpi4py import MPI
        c = MPICommandClient()
        c.start_services()
        # servers 0 and 1 exchange messages on COMM_WORLD with the framework's tag numbers
        ids = c.push_command_request(
            "[MPI.COMM_WORLD.send('user', dest=1 - rank, tag=t) for t in range(10, 20)]"
            " and [MPI.COMM_WORLD.recv(source=1 - rank, tag=t) for t in range(10, 20)]", False, [0, 1])
        # the client receives a user message on the job's world from server 2 while commands flow
        c.push_command_request("__import__('mpi_kernel').job_world().send('to client', dest=3, tag=13)", True, 2)
        got = MPI.COMM_WORLD.recv(source=2, tag=13)
        res = c.get_command_response(ids, True)
        print(json.dumps([got, [r["ret"] for r in res], c.push_command_request("1+1", True, 2)[0]["ret"]]))
    """)
    assert last_json(out) == ["to client", [["user"] * 10] * 2, 2]


def test_queueing_behind_a_busy_server_keeps_fifo_order(job):
    out = job("""
        import json
        c = MPICommandClient()
        c.start_services()
        c.push_command_request("log = []", True, 0)
        slow = c.push_command_request("__import__('time').sleep(0.5) or log.append('slow')", False, 0)
        queued = [c.push_command_request(f"log.append({i})", False, 0)[0] for i in range(5)]
        statuses = [c.get_command_request_list()[i]["status"] for i in queued]
        other = c.push_command_request("'free'", True, 1)[0]["ret"]   # not blocked by server 0
        slow_status = c.get_command_request_list()[slow[0]]["status"]
        c.get_command_response(slow + queued, True)
        print(json.dumps([statuses, other, slow_status, c.push_command_request("log", True, 0)[0]["ret"]]))
    """)
    statuses, other, slow_status, log = last_json(out)
    assert statuses == ["holding queue"] * 5
    assert other == "free"
    assert slow_status == "request sent"
    assert log == ["slow", 0, 1, 2, 3, 4]


def test_any_target_uses_idle_servers(job):
    out = job("""
        import json
        c = MPICommandClient()
        c.start_services()
        ids = c.push_command_request("__import__('time').sleep(0.3) or rank", False, None)
        ids += c.push_command_request("__import__('time').sleep(0.3) or rank", False, None)
        ids += c.push_command_request("rank", False, None)
        print(json.dumps(sorted(r["server"] for r in c.get_command_response(ids, True))))
    """)
    assert last_json(out) == [0, 1, 2]


def test_the_fast_path_leaves_the_queued_paths_records_and_falls_back_to_it(job):
    """A blocking request to an idle server is sent at once (pump.send_now): its records are
    those the queue leaves; behind busy work it queues; past the quick wait the general wait
    takes over, where Ctrl-C surfaces and the request stays recorded."""
    out = job(r"""
        import json, threading
        c = MPICommandClient()
        c.start_services()

        def same(a, b):  # records and responses, ids and times aside
            drop = ("id", "command_start_time", "command_stop_time")
            return {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}

        (fast,) = c.push_command_request("y + 1", True, 0, {"y": 1})
        ids = c.push_command_request("y + 1", False, 0, {"y": 1})
        (queued,) = c.get_command_response(ids, True)
        records = c.get_command_request_list()
        alike = [same(fast, queued), same(records[fast["id"]], records[ids[0]]), fast["ret"],
                 records[fast["id"]]["status"]]
        fan = [(r["server"], r["ret"]) for r in c.push_command_request("rank", True, [0, 1, 2])]
        anyone = c.push_command_request("rank", True)[0]["ret"] in (0, 1, 2)
        slow = c.push_command_request("__import__('time').sleep(0.3) or 'slow'", False, 0)
        (after,) = c.push_command_request("'after'", True, 0)  # queues behind it
        (slow_response,) = c.get_command_response(slow, True)
        fifo = after["command_start_time"] >= slow_response["command_stop_time"]
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            c.push_command_request("__import__('time').sleep(1) or 'late'", True, 1)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        last = max(c.get_command_request_list())
        status = c.get_command_request_list()[last]["status"]
        late = c.get_command_response([last], True)[0]["ret"]
        print(json.dumps([alike, fan, anyone, after["ret"], fifo, interrupted, status, late]))
    """)
    alike, fan, anyone, after, fifo, interrupted, status, late = last_json(out)
    assert alike == [True, True, 2, "response received"]
    assert fan == [[0, 0], [1, 1], [2, 2]] and anyone
    assert after == "after" and fifo
    assert interrupted and status == "request sent" and late == "late"


def test_singleton_and_server_side_construction(job):
    out = job("""
        import json
        c = MPICommandClient()
        same = MPICommandClient() is c
        c.start_services()
        c.start_services()  # second call is harmless
        r = c.push_command_request("from mpi_kernel import MPICommandClient\\nMPICommandClient()", True, 1)[0]
        from mpi_kernel import MPICommandServer
        try:
            MPICommandServer()
            server_on_client = "no error"
        except RuntimeError as exc:
            server_on_client = str(exc)
        print(json.dumps([same, r["successful"], r["traceback"].splitlines()[-1], server_on_client]))
    """)
    same, ok, last, server_on_client = last_json(out)
    assert same is True and ok is False
    assert last.startswith("RuntimeError: MPICommandClient cannot be created on server rank 1")
    assert "cannot be created on rank 3: it is the client rank" in server_on_client


def test_stop_services_then_calls_fail_and_job_exits(tmp_path):
    proc = run_job(tmp_path, """
        c = MPICommandClient()
        c.start_services()
        c.push_command_request("1", True)
        c.stop_services()
        c.stop_services()  # idempotent
        try:
            c.push_command_request("1", True)
        except RuntimeError as exc:
            print("after stop:", exc)
        try:
            c.start_services()
        except RuntimeError as exc:
            print("restart:", exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "after stop: the client services were stopped" in proc.stdout
    assert "restart: the services were stopped and the servers have exited" in proc.stdout


def test_atexit_and_script_errors_stop_the_servers(tmp_path):
    # never stopped by the script: atexit / the launcher stops the servers
    proc = run_job(tmp_path, """
        c = MPICommandClient()
        c.start_services()
        c.push_command_request("1", False, [0, 1, 2])
    """, timeout=30)
    assert proc.returncode == 0, proc.stderr
    # a failing script: traceback shown, job exits 1, nothing left behind
    proc = run_job(tmp_path, """
        c = MPICommandClient()
        c.start_services()
        raise ValueError("boom")
    """, timeout=30)
    assert proc.returncode == 1
    assert "ValueError: boom" in proc.stderr
    # sys.exit(3) gives the job status 3; a script that never starts the client still exits
    assert run_job(tmp_path, "sys.exit(3)", timeout=30).returncode == 3
    assert run_job(tmp_path, "print('no client')", timeout=30).stdout.strip() == "no client"


def test_dash_c_runs_code_with_args(tmp_path):
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "mpi_kernel", "-c",
           "import sys; from mpi_kernel import MPICommandClient as C; c = C(); c.start_services(); "
           "print(sys.argv[1:], c.push_command_request('rank', True)[0]['ret'])", "a", "b"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['a', 'b'] 0"


def test_world_of_size_one_fails_clearly():
    proc = subprocess.run([sys.executable, "-m", "mpi_kernel", "-c", "pass"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2
    assert "needs at least 2 MPI processes" in proc.stderr
    assert "world has size 1" in proc.stderr
    assert "mpiexec -n 4" in proc.stderr


def mpi_settings() -> dict:
    """What an MPI needs from the environment to start at all (Open MPI: HOME, and its
    run-as-root variables)."""
    return {k: v for k, v in os.environ.items() if k == "HOME" or k.startswith(("OMPI_", "PRTE_"))}


def test_mismatched_launcher_hint():
    code = ("from mpi_kernel.framework import environment as e\n"
            "from mpi4py import MPI\n"
            "try:\n    e.check_world(MPI.THREAD_MULTIPLE, 1, 'Open MPI v5')\n"
            "except e.MPIEnvironmentError as exc:\n    print(exc)\n"
            "try:\n    e.check_world(MPI.THREAD_SINGLE, 4, 'Some MPI')\n"
            "except e.MPIEnvironmentError as exc:\n    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          env={**mpi_settings(), "PATH": "/usr/bin:/bin", "PMI_RANK": "0"})
    assert proc.returncode == 0, proc.stderr
    assert "probably belongs to another MPI than the one mpi4py uses (Open MPI v5)" in proc.stdout
    assert "needs MPI_THREAD_MULTIPLE, but Some MPI granted only MPI_THREAD_SINGLE" in proc.stdout


def test_client_outside_the_launcher_fails_clearly():
    code = "from mpi_kernel import MPICommandClient\nMPICommandClient()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "mpi-kernel is not running in this process" in proc.stderr
    assert "-m mpi_kernel script.py" in proc.stderr


def test_a_stop_cuts_short_a_first_cell_still_loading_ipython(job):
    """A kernel shut down as it starts: the servers are still loading IPython for their first
    cell, which an interrupt does not cut short (it waits until user code runs). A stop does:
    the servers confirm within its grace instead of finishing the import, and nothing aborts."""
    out = job("""
        import json, time
        c = MPICommandClient(stop_timeout=0.4)   # the servers' grace is half of it
        c.start_services()
        c.execute_cell("None", c.servers())
        time.sleep(0.05)
        print(json.dumps(c.stop_services()))
    """, n=8)   # 7 servers on 2 cores: loading IPython takes them 0.5 s and more
    assert last_json(out) == []


def test_a_wait_with_no_time_left_still_takes_what_has_come(job):
    """wait(ids, timeout=0) answers at once: True for a request that has been answered (it
    receives what is waiting, as the service thread may not have yet), False for one running."""
    out = job("""
        import json, time
        c = MPICommandClient()
        c.start_services()
        ids = c.push_command_request("1+1", False, [0])
        time.sleep(0.3)   # the answer waits in MPI; the service thread may or may not have it
        print(json.dumps([c.wait(ids, timeout=0), c.wait(c.push_command_request("__import__('time').sleep(5)", False, [1]), timeout=0)]))
        c.interrupt()
    """)
    assert last_json(out) == [True, False]
