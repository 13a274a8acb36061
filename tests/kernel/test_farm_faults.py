"""Deaths and stops in the middle of work through a real kernel: a task farm that loses a
server, Stop during a map, a death shown in the running cell at once, and a --local cell
after a death that was never restarted. The policy they exercise is the request book's
(mpi_kernel/framework/requests.py); the plain survival cases are in test_survival.py."""
from __future__ import annotations

import time

import pytest

from kernel_helpers import (error_text, install_surviving_kernelspec, interrupt_cell, running_kernel, run, survival,
                            text_of)

NAME = "mpi-farm-faults"
SETUP = "import time\nfrom mpi_kernel import Client\nrc = Client()\nlview = rc.load_balanced_view()"


@pytest.fixture(scope="module", autouse=True)
def kernelspec_installed(tmp_path_factory):
    return install_surviving_kernelspec(tmp_path_factory.mktemp("prefix"), NAME)


@pytest.fixture
def kernel():
    with running_kernel(NAME) as (km, kc):
        assert run(kc, SETUP)[0] == "ok"
        yield km, kc


def test_a_map_that_loses_a_server_ends_and_the_next_map_uses_every_server(kernel):
    """Rank 1 dies 0.5 s into its first task, with tasks sent ahead to it and the others
    idle: those tasks run on the others (they once waited for ever, and restart_dead then
    refused with "work queued" although nothing ran)."""
    km, kc = kernel
    status, out = run(kc, "def task(x):\n"
                          "    import os, time\n"
                          "    if rank == 1 and x >= 100:\n"
                          "        time.sleep(0.5)\n"
                          "        os.kill(os.getpid(), 9)\n"
                          "    return rank\n"
                          "for _ in range(2):\n"
                          "    rc[:].apply_sync(task, 0)\n"   # measured quick everywhere: tasks go ahead
                          "ar = lview.map_async(task, range(100, 112))\n"
                          "results = ar.get(timeout=30, return_exceptions=True)\n"
                          "failed = [str(r) for r in results if not isinstance(r, int)]\n"
                          "print('failed', len(failed), 'by', sorted({r for r in results if isinstance(r, int)}))\n"
                          "print(failed[0])", timeout=60)
    said = text_of(out)
    assert status == "ok", error_text(out)
    assert "failed 1 by [0, 2]" in said and "MPIRankDied" in said and "server rank 1" in said, said
    status, out = run(kc, "%mpi_restart_dead", timeout=60)
    assert status == "ok", error_text(out) + text_of(out, "stderr")
    status, out = run(kc, "print(sorted(set(lview.map_sync(lambda x: rank, range(30)))))")
    assert status == "ok" and "[0, 1, 2]" in text_of(out), error_text(out)


def test_stop_during_a_map_leaves_every_server_idle_within_a_second(kernel):
    km, kc = kernel
    reply, took = interrupt_cell(km, kc, "def quick(x):\n    time.sleep(0.001)\n    return x\n"
                                          "rc[:].apply_sync(quick, 0)\n"  # known quick: sent ahead
                                          "ar = lview.map_async(quick, range(20_000))\nar.get()", after=1.5)
    assert reply["content"]["status"] == "error" and took < 3, (reply["content"], took)
    status, out = run(kc, "time.sleep(1.0)\ns = rc.client.get_server_status()\n"
                          "print('busy', [r for r in s if s[r]['busy']], 'queued', len(rc.client._book.encoded),"
                          " 'ahead', sum(map(len, rc.client._book.ahead.values())))")
    assert status == "ok" and "busy [] queued 0 ahead 0" in text_of(out), text_of(out) + error_text(out)
    status, out = run(kc, "print(sorted(set(lview.map_sync(lambda x: rank, range(30)))))")
    assert status == "ok" and "[0, 1, 2]" in text_of(out), error_text(out)


def test_a_death_is_shown_in_the_running_cell_at_once(kernel):
    """Rank 1 is killed 1 s into a 6 s cell: a live line says so then (not when the others
    end), the progress line counts it dead, and the cell's error stays as it was."""
    km, kc = kernel
    code = ("%%px --progress-after 0.5\nimport os, time\n"
            "if rank == 1:\n    time.sleep(1.0)\n    os.kill(os.getpid(), 9)\ntime.sleep(6)")
    msg_id = kc.execute(code, stop_on_error=False)
    start, seen, error = time.monotonic(), [], None
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            seen.append((time.monotonic() - start, content["text"]))
        elif kind in ("display_data", "update_display_data"):
            seen.append((time.monotonic() - start, content["data"].get("text/plain", "")))
        elif kind == "error":
            error = "\n".join(content["traceback"])
        elif kind == "status" and content["execution_state"] == "idle":
            break
    total = time.monotonic() - start
    died = [(t, text) for t, text in seen if "server rank 1 on" in text and "killed by signal 9" in text]
    assert died, seen
    at, line = died[0]
    assert at < total - 2.0, (at, total, line)        # told while the others still ran
    assert "Ranks 0, 2 go on; Stop ends the cell." in line, line
    assert any("rank 1 dead" in text for _, text in seen), seen
    assert error is not None and "MPIRankDied on rank 1" in error, error


def test_a_local_cell_after_an_unrestarted_death_does_not_hang_the_kernel(kernel):
    """A --local collective over the whole world includes the rank that died before the cell:
    it never completes under MPICH, so the watch ends the job with the reason."""
    km, kc = kernel
    status, out = run(kc, "%%px --targets 1\nimport os\nos._exit(3)")
    assert status == "error" and "exited with code 3" in error_text(out)
    started = time.monotonic()
    status, out = run(kc, "%%px --local\nfrom mpi4py import MPI\nMPI.COMM_WORLD.Barrier()", timeout=40)
    took, text = time.monotonic() - started, error_text(out)
    assert status == "error" and took < 15, (took, text)
    if survival(True) == "ulfm":
        assert "MPI_ERR_PROC_FAILED" in text or "MPIRankDied" in text, text
        return
    assert "MPIJobDied" in text and "with dead rank 1, which MPICH never returns" in text, text


def test_restart_dead_end_busy_works_with_tasks_sent_ahead_to_the_dead_server(kernel):
    """A death while every server is busy with a map's long tasks and more are sent ahead:
    --end-busy cancels what is queued, ends the busy servers and replaces them (the tasks sent
    ahead to the dead one once went back to the queue, and the busy check then refused)."""
    km, kc = kernel
    status, out = run(kc, "def task(x):\n    import time\n    time.sleep(x)\n    return rank\n"
                          "for _ in range(2):\n    rc[:].apply_sync(task, 0)\n"
                          "ar = lview.map_async(task, [5.0] * 12)\ntime.sleep(0.3)\n"
                          "print('ahead', sum(map(len, rc.client._book.ahead.values())))\n"
                          "import os, signal\nos.kill(rc.client.get_server_status(1)['pid'], signal.SIGKILL)\n"
                          "deadline = time.time() + 10\n"
                          "while 1 not in rc.client.dead() and time.time() < deadline:\n    time.sleep(0.05)\n"
                          "print('dead', list(rc.client.dead()))")
    assert status == "ok" and "dead [1]" in text_of(out), text_of(out) + error_text(out)
    assert "ahead 0" not in text_of(out), text_of(out)
    status, out = run(kc, "%mpi_restart_dead --end-busy", timeout=60)
    assert status == "ok", error_text(out) + text_of(out, "stderr")
    status, out = run(kc, "r = ar.get(timeout=10, return_exceptions=True)\n"
                          "print('cancelled', sum('cancelled while queued' in str(e) for e in r))\n"
                          "print(sorted(set(lview.map_sync(lambda x: rank, range(30)))))")
    assert status == "ok" and "[0, 1, 2]" in text_of(out), text_of(out) + error_text(out)
    assert "cancelled 0" not in text_of(out), text_of(out)
