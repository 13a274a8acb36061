"""The ipyparallel-style API (mpi_kernel.Client, views, AsyncResult, executor) in real jobs."""
from conftest import last_json


def test_direct_views_push_pull_apply_map_execute(job):
    out = job("""
        import json
        from mpi_kernel import Client
        rc = Client()
        dview = rc[:]
        dview.push({"a": 10})
        dview["b"] = 2
        scale = 3
        applied = dview.apply_sync(lambda x: rank * scale + x + a, 1)   # a closure, by value
        one = rc[1].apply_sync(lambda: (rank, size))
        mapped = dview.map_sync(lambda x, y: x * y, range(7), range(7))
        ar = rc[::2].execute("c = rank + b")
        ar.get()
        print(json.dumps([rc.ids, dview["a"], rc[0]["b"], applied, one, mapped, rc[[0, 2]].pull("c"),
                          rc[-1].targets, ar.successful(), ar.progress]))
    """)
    ids, a, b, applied, one, mapped, c, last, ok, progress = last_json(out)
    assert ids == [0, 1, 2] and a == [10, 10, 10] and b == 2
    assert applied == [11, 14, 17] and one == [1, 3]
    assert mapped == [x * x for x in range(7)] and c == [2, 4] and last == 2 and ok and progress == 2


def test_load_balanced_map_spreads_tasks_and_keeps_order(job):
    out = job("""
        import json
        from mpi_kernel import Client
        rc = Client()
        lview = rc.load_balanced_view()
        def who(x):
            import time
            time.sleep(0.01)
            return (x * x, rank)
        ar = lview.map_async(who, range(60), chunksize=2)
        res = ar.get(timeout=60)
        unordered = lview.map_sync(lambda x: x, range(20), ordered=False, chunksize=3)
        single = lview.apply_sync(pow, 2, 10)
        assert lview.map_sync(abs, []) == [] and rc[:].map_sync(abs, []) == []
        print(json.dumps([[r[0] for r in res], sorted({r[1] for r in res}), sorted(unordered), single,
                          ar.ready(), ar.elapsed > 0]))
    """)
    squares, ranks, unordered, single, ready, elapsed = last_json(out)
    assert squares == [x * x for x in range(60)] and ranks == [0, 1, 2]   # every server took tasks
    assert unordered == list(range(20)) and single == 1024 and ready and elapsed


def test_failed_tasks_name_task_and_rank_and_keep_the_other_results(job):
    out = job("""
        import json
        from mpi_kernel import Client, RemoteTaskError
        rc = Client()
        lview = rc.load_balanced_view()
        ar = lview.map_async(lambda x: 1 / (x % 3), range(7))
        try:
            ar.get()
        except RemoteTaskError as exc:
            error = [str(exc).splitlines()[0], sorted(i for i, _, _ in exc.failures), "ZeroDivisionError: division by zero" in str(exc)]
        partial = ar.get(return_exceptions=True)
        kept = [v for v in partial if not isinstance(v, Exception)]
        bad = [type(v).__name__ for v in partial if isinstance(v, Exception)]
        print(json.dumps([error, kept, bad, ar.successful()]))
    """)
    error, kept, bad, successful = last_json(out)
    assert error[0].startswith("ZeroDivisionError in tasks 0, 3, 6 on rank") and error[1] == [0, 3, 6] and error[2]
    assert kept == [1.0, 0.5, 1.0, 0.5] and bad == ["RemoteError"] * 3 and not successful


def test_executor_submit_map_and_cancel(job):
    out = job("""
        import json, time
        import concurrent.futures as cf
        from mpi_kernel import Client
        rc = Client()
        with rc.executor() as ex:
            f = ex.submit(sum, [1, 2, 3])
            results = list(ex.map(lambda x: x + 1, range(10), chunksize=4))
            value = f.result(timeout=30)
            failing = ex.submit(lambda: 1 / 0)
            exc = type(failing.exception(timeout=30)).__name__
        ex = rc.executor()
        slow = [ex.submit(time.sleep, 5) for _ in range(6)]   # 3 run, 3 queued
        time.sleep(0.5)
        t0 = time.monotonic()
        ex.shutdown(wait=True, cancel_futures=True)
        took = time.monotonic() - t0
        print(json.dumps([value, results, exc, [f.cancelled() for f in slow], took]))
    """, timeout=90)
    value, results, exc, cancelled, took = last_json(out)
    assert value == 6 and results == list(range(1, 11)) and exc == "RemoteError"
    assert all(cancelled) and took < 4   # queued ones never ran, running ones were interrupted


def test_unpicklable_function_is_a_clear_error_and_loses_nothing(job):
    out = job("""
        import json, threading
        from mpi_kernel import Client
        rc = Client()
        lock = threading.Lock()
        try:
            rc.load_balanced_view().apply_sync(lambda: lock)
        except TypeError as exc:
            message = str(exc)
        print(json.dumps([message, rc[:].apply_sync(lambda: rank)]))
    """)
    message, ranks = last_json(out)
    assert message.startswith("cannot send <function <lambda>") and "it cannot be pickled" in message
    assert ranks == [0, 1, 2]


def test_quick_tasks_are_sent_ahead_and_a_stop_skips_those_not_started(job):
    """After quick tasks each server is sent tasks ahead (requests.AHEAD); a stop skips those
    it has not started, so a slow task sent ahead never runs after it."""
    out = job("""
        import json
        from mpi_kernel import Client
        rc = Client()
        lview = rc.load_balanced_view()
        def task(x):
            import time
            if x >= 300:
                time.sleep(3)
            return time.time()
        ar = lview.map_async(task, range(320))
        time.sleep(1.0)   # the quick ones are done; each server runs a slow one, more sent ahead
        statuses = [rc.client.get_command_request_list()[i]["status"] for i in ar.msg_ids]
        t0 = time.time()
        ar.abort()
        results = ar.get(timeout=30, return_exceptions=True)
        took = time.time() - t0
        ran_after = [r for r in results if isinstance(r, float) and r > t0]
        errors = sorted({str(r).splitlines()[-1] for r in results if not isinstance(r, float)})
        print(json.dumps([statuses.count("request sent"), took, len(ran_after), errors,
                          sum(isinstance(r, float) for r in results)]))
    """, timeout=90)
    sent, took, ran_after, errors, done = last_json(out)
    assert sent > 3, "no task was sent ahead of the 3 running ones"
    assert took < 2.5 and ran_after == 0   # no slow task ran after the stop
    assert done == 300 and any("cancelled while queued" in e for e in errors), errors


def test_stop_in_the_notebook_cancels_queued_tasks_and_interrupts_running_ones(tmp_path):
    import time

    from kernel_helpers import ANSI, install_kernelspec, run, start_kernel
    install_kernelspec(tmp_path, name="mpi-views")
    km, kc = start_kernel("mpi-views")
    try:
        run(kc, "import time\nfrom mpi_kernel import Client\nrc = Client()\nlview = rc.load_balanced_view()\n"
                "ar = lview.map_async(time.sleep, [30] * 9)")
        msg_id = kc.execute("ar.get()", stop_on_error=False)
        time.sleep(2.0)     # long enough for the progress bar
        km.interrupt_kernel()
        shown = []
        while True:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id:
                shown.append(msg)
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
        assert any(m["msg_type"] == "display_data" and "application/vnd.jupyter.widget-view+json"
                   in m["content"]["data"] for m in shown), "no progress bar"
        assert [m["content"]["ename"] for m in shown if m["msg_type"] == "error"] == ["KeyboardInterrupt"]
        status, out = run(kc, "try:\n    ar.get(timeout=10)\nexcept Exception as exc:\n    print(exc)")
        text = ANSI.sub("", "".join(o.get("text", "") for o in out))
        assert "KeyboardInterrupt in tasks 0-2 on ranks 0-2; KeyboardInterrupt in tasks 3-8" in text, text
        assert text.count("cancelled while queued; it did not run") == 1   # merged: tasks 3-8
        status, out = run(kc, "rc[:].apply_sync(lambda: rank)")
        assert status == "ok" and out[-1]["data"]["text/plain"] == "[0, 1, 2]"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_ipyparallel_view_idioms_port_unchanged(job):
    """Idioms from ipyparallel's documentation and tests, as written."""
    out = job("""
        import json
        import numpy as np
        from mpi_kernel import Client, AsyncResult
        rc = Client()
        dview = rc[:]
        pushed = dview.push({"a": 5, "b": 6}, block=False)
        kinds = [type(pushed).__name__, pushed.get()]
        pulled = dview.pull("a", block=False)
        both = dview.pull(["a", "b"], block=False)
        scattered = dview.scatter("part", np.arange(7), block=False)
        scattered.get()
        gathered = dview.gather("part", block=False)
        applied = dview.apply_async(lambda f: f * 2, f=5)     # f is the user's keyword, not the function
        lview = rc.load_balanced_view()
        mapped = lview.map_async(lambda x: x * x, range(10), chunksize=3)
        in_order = [x for x in mapped]                          # iterates as results come
        executed = dview.execute("c = a + rank", block=True)    # blocking still returns the AsyncResult
        single = rc[1].apply_async(lambda: rank)
        print(json.dumps([kinds, pulled.get(), both.get(), gathered.get().tolist(), applied.get(),
                          len(mapped), in_order, mapped[2], len(applied), applied.engine_id,
                          type(executed).__name__, executed.get(), rc[:]["c"], single.get(), single.engine_id,
                          sorted(applied.metadata[0]), dview.execute("c * 10", block=True).get()]))
    """)
    (kinds, pulled, both, gathered, applied, n_mapped, in_order, third, n_applied, engines, executed_type,
     executed, c, single, single_engine, metadata_keys, values) = last_json(out)
    assert kinds == ["AsyncResult", [None, None, None]]
    assert pulled == [5, 5, 5] and both == [[5, 6]] * 3 and gathered == list(range(7))
    assert applied == [10, 10, 10] and n_applied == 3 and engines == [0, 1, 2]
    assert n_mapped == 10 and in_order == [x * x for x in range(10)] and third == 4
    assert executed_type == "AsyncResult" and executed == [None, None, None] and c == [5, 6, 7]
    assert single == 1 and single_engine == 1 and values == [50, 60, 70]
    assert metadata_keys == ["completed", "engine_id", "msg_id", "started", "status", "stderr", "stdout"]
