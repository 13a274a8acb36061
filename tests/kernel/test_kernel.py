"""The MPI kernel driven through jupyter_client: magics, output, errors, interrupts."""
from __future__ import annotations

import re
import time

import pytest

from kernel_helpers import ANSI, error_text, install_kernelspec, run, start_kernel, text_of


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    install_kernelspec(tmp_path_factory.mktemp("prefix"))
    km, kc = start_kernel()
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=False)


@pytest.fixture
def kc(kernel):
    return kernel[1]


def test_local_cells_and_extension_loaded(kc):
    status, out = run(kc, "1+1")
    assert status == "ok" and out[-1]["data"]["text/plain"] == "2"
    status, out = run(kc, "from mpi4py import MPI\nMPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()")
    assert out[-1]["data"]["text/plain"] == "(3, 4)"   # the kernel is the top rank


def test_px_streams_and_results_per_rank(kc):
    status, out = run(kc, "%%px\nprint('hello', rank)\nrank * 10")
    assert status == "ok"
    text = text_of(out)
    for r in range(3):
        assert f"[stdout:{r}] hello {r}\n" in text
        assert f"Out[{r}:" in text and f"]: {r * 10}\n" in text


def test_px_live_output_arrives_before_the_cell_ends(kc):
    msg_id = kc.execute("%%px --targets 0\nimport time\nprint('early', flush=True)\ntime.sleep(1.5)\nprint('late')",
                        stop_on_error=False)  # (kernel_helpers.run says why)
    t0 = time.monotonic()
    seen_early = None
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream" and "early" in msg["content"]["text"]:
            seen_early = time.monotonic() - t0
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    assert seen_early is not None and seen_early < 1.2


def test_px_rich_output_html_and_matplotlib(kc):
    status, out = run(kc, "%%px --targets 0,2\nfrom IPython.display import HTML\n"
                          "display(HTML(f'<b>rank {rank}</b>'))\n"
                          "import matplotlib.pyplot as plt\nplt.plot([0, rank])\nplt.show()")
    assert status == "ok"
    html = [o["data"]["text/html"] for o in out if o["type"] == "display_data" and "text/html" in o["data"]]
    assert html == ["<b>rank 0</b>", "<b>rank 2</b>"]
    pngs = [o for o in out if o["type"] == "display_data" and "image/png" in o["data"]]
    assert len(pngs) == 2


def test_px_errors_are_merged_by_rank(kc):
    status, out = run(kc, "%%px\n1/0")
    assert status == "error"
    (err,) = [o for o in out if o["type"] == "error"]
    assert err["ename"] == "RemoteError"
    assert err["evalue"] == "ZeroDivisionError on ranks 0-2"
    tb = ANSI.sub("", "\n".join(err["traceback"]))
    assert tb.count("ZeroDivisionError: division by zero") == 1   # identical tracebacks shown once
    assert "[0-2:execute]: ZeroDivisionError on ranks 0-2" in tb and "----> 1 1/0" in tb
    status, out = run(kc, "%%px\nundefined_name if rank == 1 else 1/0")
    (err,) = [o for o in out if o["type"] == "error"]
    assert err["evalue"] == "ZeroDivisionError on ranks 0, 2; NameError on rank 1"


def test_error_shown_even_when_ipython_cannot_format_it(kc):
    # A cell that breaks the server's IPython formatter still gets Python's own traceback.
    status, out = run(kc, "%%px --targets 0\n_saved_tb = get_ipython().InteractiveTB\n"
                          "get_ipython().InteractiveTB = None\n1/0")
    (err,) = [o for o in out if o["type"] == "error"]
    assert status == "error" and err["evalue"] == "ZeroDivisionError on rank 0"
    assert "ZeroDivisionError: division by zero" in ANSI.sub("", "\n".join(err["traceback"]))
    # The kernel is shared by this module's tests: give rank 0 its formatter back.
    status, out = run(kc, "%%px --targets 0\nget_ipython().InteractiveTB = _saved_tb\nrank + 40")
    assert status == "ok" and "]: 40" in text_of(out)


@pytest.mark.parametrize("spec, ranks", [("0", [0]), ("0,2", [0, 2]), ("1-2", [1, 2]), ("all", [0, 1, 2])])
def test_px_targets(kc, spec, ranks):
    status, out = run(kc, f"%%px --targets {spec}\nrank")
    assert status == "ok"
    assert [int(line.split("]: ")[1]) for line in text_of(out).splitlines()] == ranks


def test_px_any_target_and_line_form(kc):
    status, out = run(kc, "%px --targets any print('one server')")
    assert status == "ok" and text_of(out).count("one server") == 1
    status, out = run(kc, "%px y = rank + 1")
    status, out = run(kc, '%px print("y is", y)')
    assert sorted(text_of(out).splitlines()) == [f"[stdout:{r}] y is {r + 1}" for r in range(3)]


@pytest.mark.parametrize("line, message", [
    ("%%px --targets 5\n1", "target '5' names ranks that are not servers: [5]; servers are 0-2"),
    ("%%px --targets 0;1\n1", "bad target '0;1': use 'all', 'any'"),
    ("%%px --targets __import__('os')\n1", "bad target"),
    ("%%px --timeout -1\n1", "--timeout must be a positive number of seconds"),
    ("%%px --group-outputs foo\n1", "invalid choice: 'foo'"),
    ("%%px --bogus\n1", "unrecognized arguments: --bogus"),
    ("%mpi_pull", "the following arguments are required: names"),
    ("%mpi_push undefined_on_client", "not defined on the client: undefined_on_client"),
    ("%pxresult nothing", "no pending %%px --noblock results named 'nothing'"),
])
def test_bad_magic_arguments_give_usage_errors(kc, line, message):
    status, out = run(kc, line)
    assert message in text_of(out, "stderr"), out
    assert "UsageError" in text_of(out, "stderr")


def test_noblock_and_pxresult(kc):
    status, out = run(kc, "%%px --noblock --out res\nimport time\ntime.sleep(0.3)\nrank + 100")
    assert status == "ok" and "%pxresult res" in text_of(out)
    status, out = run(kc, "%pxresult res")
    assert status == "ok" and "Out[1:" in text_of(out)
    status, out = run(kc, "res.get_dict()")
    assert out[-1]["data"]["text/plain"] == "{0: 100, 1: 101, 2: 102}"
    # ipyparallel's way: the AsyncResult is there at once, and %pxresult still works after it
    status, out = run(kc, "%%px --noblock -o ar\nimport time\ntime.sleep(0.3)\nrank * 2")
    status, out = run(kc, "ar.get(timeout=30), ar.progress, ar.ready()")
    assert out[-1]["data"]["text/plain"] == "([0, 2, 4], 3, True)"
    status, out = run(kc, "%pxresult ar")
    assert status == "ok" and "Out[2:" in text_of(out)


def test_push_and_pull_line_and_cell_forms(kc):
    status, out = run(kc, "a = 41\nb = 'text'\n%mpi_push a b --targets 0-1")
    assert status == "ok" and "pushed a, b to ranks 0-1" in text_of(out)
    status, out = run(kc, "%mpi_pull a --targets 0-1")
    assert out[-1]["data"]["text/plain"] == "{0: 41, 1: 41}"
    status, out = run(kc, "%%mpi_push\nimport math\nc = [1, 2]\nd, e = 3, math.pi")
    assert status == "ok" and "pushed math, c, d, e to ranks 0-2" in text_of(out)
    status, out = run(kc, "%mpi_pull c d")
    assert out[-1]["data"]["text/plain"] == "{0: [[1, 2], 3], 1: [[1, 2], 3], 2: [[1, 2], 3]}"
    status, out = run(kc, "%%px\nround(e, 2)")
    assert "]: 3.14" in text_of(out)


def test_scatter_and_gather_magics(kc):
    status, out = run(kc, "import numpy as np\nx = np.arange(8)\n%mpi_scatter x")
    assert status == "ok" and "scattered x over ranks 0-2" in text_of(out)
    run(kc, "%px x = x + 100 * rank")
    status, out = run(kc, "%mpi_gather x")
    assert out[-1]["data"]["text/plain"] == "array([  0,   1,   2, 103, 104, 105, 206, 207])"
    status, out = run(kc, "n = 3\n%mpi_scatter n")
    assert "UsageError: scatter needs a sequence that can be sliced" in text_of(out, "stderr")


def test_pulling_a_missing_name_is_a_merged_remote_error(kc):
    for line in ("%mpi_pull missing_name", "%mpi_gather missing_name"):
        status, out = run(kc, line)
        (err,) = [o for o in out if o["type"] == "error"]
        assert status == "error" and (err["ename"], err["evalue"]) == ("RemoteError", "NameError on ranks 0-2")
        assert ANSI.sub("", "\n".join(err["traceback"])).endswith("NameError: 'missing_name' not defined on the server\n")


def test_push_functions_and_classes_defined_in_the_notebook(kc):
    status, out = run(kc, "%%mpi_push\nclass Scaled:\n    def __init__(self, k): self.k = k\n"
                          "def scale(x): return Scaled(3).k * x")
    assert status == "ok" and "pushed Scaled, scale to ranks 0-2" in text_of(out)
    status, out = run(kc, "%%px\nscale(rank)")
    assert status == "ok" and [line.split(": ")[-1] for line in text_of(out).splitlines()] == ["0", "3", "6"]


def test_progress_line_for_slow_cells_is_replaced_by_the_results(kc):
    status, out = run(kc, "%%px\nimport time\ntime.sleep(1.7)\nrank")
    progress = [o for o in out if o["type"] in ("display_data", "update_display_data")]
    first, last = progress[0]["data"]["text/plain"], progress[-1]["data"]["text/plain"]
    assert status == "ok" and progress[0]["type"] == "display_data"
    assert re.fullmatch(r"\[px\] [0-2]/3 ranks done, \d+\.\d s elapsed; waiting for ranks? [-0-9, ]+", first), first
    assert progress[-1]["type"] == "update_display_data" and last == ""
    assert "Out[2:" in text_of(out)
    # Configurable (traitlets): off for runs that compare outputs, such as nbval.
    run(kc, "%config MPIMagics.progress_after = float('inf')")
    status, out = run(kc, "%%px\nimport time\ntime.sleep(1.3)")
    run(kc, "%config MPIMagics.progress_after = 1.0")
    assert status == "ok" and not [o for o in out if o["type"] != "stream"]


def test_ipython_syntax_in_px_cells(kc):
    status, out = run(kc, "%%px --targets 0-1\n!echo shell-says-hi\n%time x = rank\nx")
    text = text_of(out)
    # Each rank's %time line, or one merged line when both took the same time (CI saw "25 us" twice).
    walls = re.findall(r"^\[stdout:(0|1|0-1)\] Wall time", text, re.M)
    assert status == "ok" and "[stdout:0-1] shell-says-hi" in text and walls in (["0", "1"], ["0-1"]), text
    assert "Out[0:" in text and "Out[1:" in text
    status, out = run(kc, "%px --no-merge %time 1+1")
    assert status == "ok" and text_of(out).count("Wall time") == 3
    status, out = run(kc, "%%px --targets 0\n%%timeit -n 5 -r 1\nsum(range(10))")
    assert status == "ok" and text_of(out).startswith("[stdout:0] ") and "per loop" in text_of(out)


def test_output_written_between_cells_shows_in_the_next_px_cell(kc):
    run(kc, "%%px --targets 1\nimport threading, time\n"
            "threading.Thread(target=lambda: time.sleep(0.3) or print('from a thread')).start()")
    time.sleep(1.0)
    status, out = run(kc, "%%px --targets 0\n'next'")
    assert status == "ok" and "[stdout:1] from a thread" in text_of(out)


def test_output_of_c_code_on_servers_is_shown_per_rank(kc):
    status, out = run(kc, "%%px\nimport os\n_ = os.system(f'echo c-level {rank}')")
    assert status == "ok" and "[stdout:1] c-level 1" in text_of(out), out
    assert text_of(out).count("c-level") == 3


def test_input_on_servers_fails_at_once_with_a_clear_error(kc):
    status, out = run(kc, "%%px\nanswer = input('name? ')", timeout=20)
    (err,) = [o for o in out if o["type"] == "error"]
    assert status == "error" and err["evalue"] == "EOFError on ranks 0-2"
    assert "input() is not available on the MPI servers" in ANSI.sub("", "\n".join(err["traceback"]))
    status, out = run(kc, "%%px\nimport subprocess\nsubprocess.run(['cat'], capture_output=True).returncode")
    assert status == "ok" and text_of(out).count("Out[0-2:") == 1    # C-level reads of fd 0: end of file


def test_mpi_status_table(kc):
    status, out = run(kc, "%mpi_status")
    summary, *lines = text_of(out).splitlines()
    assert summary == "3 idle, 0 busy, 0 timeout"
    assert lines[0].split() == ["rank", "host", "pid", "state", "command", "elapsed"]
    assert [line.split()[0] for line in lines[1:]] == ["0", "1", "2"]
    assert all(line.split()[3] == "idle" for line in lines[1:])


def test_mpi_monitor_widget_and_autopx(kc):
    status, out = run(kc, "%mpi_monitor")
    assert status == "ok" and any(o["type"] == "display_data" for o in out)
    status, out = run(kc, "%autopx")
    assert "enabled" in text_of(out)
    status, out = run(kc, "print('auto', rank)")
    assert sorted(text_of(out).splitlines()) == [f"[stdout:{r}] auto {r}" for r in range(3)]
    status, out = run(kc, "%autopx")
    assert "disabled" in text_of(out)
    status, out = run(kc, "print('local')")
    assert text_of(out) == "local\n"


def test_px_local_with_comm_world_collective(kc):
    status, out = run(kc, "%%px --local\nfrom mpi4py import MPI\n"
                          "total = MPI.COMM_WORLD.allreduce(MPI.COMM_WORLD.Get_rank())\nprint('sum', total)")
    assert status == "ok"
    assert text_of(out).count("sum 6") == 2 and "[stdout:0-2] sum 6" in text_of(out)  # and the client


def test_px_timeout_names_busy_ranks_and_shows_their_stacks(kc):
    status, out = run(kc, "%%px --timeout 1\nimport time\n"
                          "time.sleep(30) if rank else None  # never returns on 1-2")
    assert status == "error"
    (err,) = [o for o in out if o["type"] == "error"]
    tb = ANSI.sub("", "\n".join(err["traceback"]))
    assert "--timeout 1 s expired; still busy: ranks 1-2" in tb
    assert 'File "<px-cell-' in tb and '", line 2' in tb     # the stack dump of the busy ranks
    assert "time.sleep(30) if rank else None" in tb
    assert "The servers were interrupted." in tb and "KeyboardInterrupt" not in tb  # the summary only
    status, out = run(kc, "%%px\n'alive'")
    assert status == "ok" and "Out[0-2:" in text_of(out) and "alive" in text_of(out)


def test_a_collective_the_client_does_not_join_is_recognised_from_the_stacks(kc):
    """An old world communicator kept from a --local cell, used in a plain cell: the cell's
    text does not say COMM_WORLD, the ranks' stacks do."""
    run(kc, "%%px --local\nfrom mpi4py import MPI\nw = MPI.COMM_WORLD")
    status, out = run(kc, "%%px --timeout 6.5\nw.Barrier()")
    progress = [o["data"]["text/plain"] for o in out if o["type"] == "update_display_data"]
    assert any("wait in the collective `w.Barrier()` on MPI_COMM_WORLD" in p for p in progress), progress
    (err,) = [o for o in out if o["type"] == "error"]
    tb = ANSI.sub("", "\n".join(err["traceback"]))
    assert "Ranks 0-2 did not stop after the interrupt" in tb
    assert "Ranks 0-2 wait in the collective `w.Barrier()` on MPI_COMM_WORLD (4 ranks: 0-3); " \
           "not in it: rank 3. The client (rank 3) is a member" in tb, tb
    assert "`MPI.COMM_WORLD.Barrier(...)` with matching arguments in a plain cell" in tb
    status, out = run(kc, "from mpi4py import MPI\nMPI.COMM_WORLD.Barrier()")  # the advice: it frees them
    assert status == "ok"
    status, out = run(kc, "%%px\n'alive'")
    assert status == "ok" and "Out[0-2:" in text_of(out) and "alive" in text_of(out)


def test_interrupt_while_true_on_all_servers(kernel):
    km, kc = kernel
    msg_id = kc.execute("%%px\nwhile True: pass", stop_on_error=False)
    time.sleep(1.0)
    t0 = time.monotonic()
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=10)
    elapsed = time.monotonic() - t0
    assert reply["parent_header"]["msg_id"] == msg_id
    assert elapsed < 1.0
    assert reply["content"]["status"] == "error"
    assert reply["content"]["evalue"] == "KeyboardInterrupt on ranks 0-2", ANSI.sub("", "\n".join(reply["content"]["traceback"]))
    status, out = run(kc, "%%px\nrank")
    assert status == "ok" and "Out[2:" in text_of(out)


def test_interrupt_of_the_idle_kernel_keeps_the_job(kernel):
    km, kc = kernel
    run(kc, "%px 1")               # %%px cells use the client's SIGINT guard in the main thread
    km.interrupt_kernel()          # the stop button while nothing runs
    time.sleep(0.5)
    status, out = run(kc, "%%px\nrank")
    assert km.is_alive() and status == "ok" and "Out[2:" in text_of(out)


def test_interrupt_cancels_queued_cells_and_stops_running_ones(kernel):
    km, kc = kernel
    status, out = run(kc, "%%px --noblock --targets 0 --out background\nimport time\ntime.sleep(30)")
    assert status == "ok"
    # Queued behind the sleep; stop_on_error=False as in kernel_helpers.run (ipykernel's abort race).
    msg_id = kc.execute("%%px --targets 0\nprint('must not run')", stop_on_error=False)
    time.sleep(0.5)
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=10)
    assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "error"
    assert reply["content"]["evalue"] == "KeyboardInterrupt on rank 0"
    assert "cancelled while queued; it did not run" in ANSI.sub("", "\n".join(reply["content"]["traceback"]))
    status, out = run(kc, "%pxresult background")     # the running one was interrupted
    (err,) = [o for o in out if o["type"] == "error"]
    assert err["evalue"] == "KeyboardInterrupt on rank 0"
    assert "time.sleep(30)" in ANSI.sub("", "\n".join(err["traceback"]))
    status, out = run(kc, "%%px --targets 0\n'served'")
    assert status == "ok" and "'served'" in text_of(out)


def test_timeout_of_a_cell_that_never_started(kernel):
    km, kc = kernel
    run(kc, "%%px --noblock --targets 0 --out blocker\nimport time\ntime.sleep(30)")
    time.sleep(1.2)  # busy long enough for the next cell to say it waits
    status, out = run(kc, "%%px --targets 0 --timeout 0.5\nprint('must not run')")
    (err,) = [o for o in out if o["type"] == "error"]
    text = ANSI.sub("", "\n".join(err["traceback"]))
    assert status == "error" and "%%px --timeout 0.5 s expired; it had not started" in text
    assert "it was cancelled: it will not run" in text and "must not run" not in text_of(out)
    assert "[px] rank 0 is still busy with an earlier request ('import time', running" in text_of(out)
    km.interrupt_kernel()                                  # the idle kernel's stop button
    status, out = run(kc, "%pxresult blocker")
    assert [o["evalue"] for o in out if o["type"] == "error"] == ["KeyboardInterrupt on rank 0"]


def test_monitor_without_ipywidgets_updates_in_place_for_its_own_cell(kc):
    """The HTML fallback is updated from a thread with the parent header of the cell that
    created it, not of the cell running at the time (ipykernel 7 routes by parent)."""
    run(kc, "import sys\n_saved_ipywidgets = sys.modules.get('ipywidgets')\nsys.modules['ipywidgets'] = None")
    monitor_id = kc.execute("%mpi_monitor", stop_on_error=False)
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == monitor_id and msg["msg_type"] == "status" \
                and msg["content"]["execution_state"] == "idle":
            break
    busy_id = kc.execute("%%px\nimport time\ntime.sleep(0.8)", stop_on_error=False)  # under 1 s: no progress line
    updates = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["msg_type"] == "update_display_data" and "text/html" in msg["content"]["data"]:
            updates.append((msg["parent_header"].get("msg_id"), msg["content"]["data"]["text/html"]))
        if msg["parent_header"].get("msg_id") == busy_id and msg["msg_type"] == "status" \
                and msg["content"]["execution_state"] == "idle":
            break
    time.sleep(0.6)  # the view refreshes every 0.25 s: let it show the servers idle again
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except Exception:
            break
        if msg["msg_type"] == "update_display_data" and "text/html" in msg["content"]["data"]:
            updates.append((msg["parent_header"].get("msg_id"), msg["content"]["data"]["text/html"]))
    run(kc, "sys.modules['ipywidgets'] = _saved_ipywidgets")
    assert updates, "the fallback monitor was never updated"
    assert {parent for parent, _ in updates} == {monitor_id}
    assert any('data-state="busy"' in page for _, page in updates)
    assert 'data-state="busy"' not in updates[-1][1]


def test_group_outputs_by_rank_and_blocking_out(kc):
    status, out = run(kc, "%%px --group-outputs rank --out squares\nimport time\n"
                          "for i in range(2):\n    print(f'r{rank} line {i}', flush=True)\n    time.sleep(0.05 * (3 - rank))\n"
                          "rank ** 2")
    assert status == "ok"
    lines = [line for line in text_of(out).splitlines() if line.startswith("[stdout:")]
    assert lines == [f"[stdout:{r}] r{r} line {i}" for r in range(3) for i in range(2)]  # grouped, rank order
    status, out = run(kc, "squares.get(), squares.get_dict(), squares.successful()")   # ipyparallel's -o
    assert out[-1]["data"]["text/plain"] == "([0, 1, 4], {0: 0, 1: 1, 2: 4}, True)"


def test_px_cells_do_not_grow_the_client_history(kc):
    run(kc, "from mpi_kernel import MPICommandClient\n_c = MPICommandClient()\n_before = len(_c.get_command_request_list())")
    for _ in range(5):
        run(kc, "%%px\nrank")
    run(kc, "%%px\n1/0")
    status, out = run(kc, "len(_c.get_command_request_list()) - _before, len(_c.get_command_response_list())")
    assert out[-1]["data"]["text/plain"].startswith("(0, ")


@pytest.mark.parametrize("spec, ranks", [("::2", [0, 2]), ("1:3", [1, 2]), ("[0,2]", [0, 2]), ("-1", [2])])
def test_px_targets_as_ipyparallel_writes_them(kc, spec, ranks):
    status, out = run(kc, f"%%px --targets {spec}\nprint(rank)")
    assert status == "ok" and text_of(out) == "".join(f"[stdout:{r}] {r}\n" for r in ranks)


def test_px_options_ipyparallel_users_reach_for(kc):
    code = "import sys, time\nprint('out', rank, flush=True)\ntime.sleep(0.05 * (3 - rank))\nprint('err', rank, file=sys.stderr)"
    status, out = run(kc, f"%%px --no-stream --block\n{code}")
    assert status == "ok"
    assert [line for line in text_of(out).splitlines()] == [f"[stdout:{r}] out {r}" for r in range(3)]
    assert text_of(out, "stderr").splitlines() == [f"[stderr:{r}] err {r}" for r in range(3)]
    status, out = run(kc, f"%%px --group-outputs type\n{code}")
    assert text_of(out).splitlines() == [f"[stdout:{r}] out {r}" for r in range(3)]
    status, out = run(kc, "%%px --verbose --targets 0\n1")
    assert "Parallel execution on engine(s): [0] (request " in text_of(out) and "[px] done in " in text_of(out)
    status, out = run(kc, "%%px --progress-after 0 --targets 0\nimport time\ntime.sleep(0.8)")
    assert any(o["type"] == "display_data" and "[px] 0/1 ranks done" in o["data"]["text/plain"] for o in out)
    status, out = run(kc, "%%px --targets 0\nfrom IPython.display import HTML\ndisplay(HTML('<i>x</i>'))")
    assert "[output:0]\n" in text_of(out)


def test_pxconfig_sets_defaults_for_later_cells(kc):
    status, out = run(kc, "%pxconfig --targets 1 --verbose")
    assert status == "ok" and "targets=1" in text_of(out)
    try:
        status, out = run(kc, "%%px\nprint(rank)")
        assert "[stdout:1] 1\n" in text_of(out) and "[stdout:0]" not in text_of(out) and "[px] done" in text_of(out)
        status, out = run(kc, "%%px --targets all\nprint(rank)")
        assert text_of(out).count("[stdout:") == 3
        status, out = run(kc, "%pxconfig --targets 9")
        assert status == "error" and "servers are 0-2" in text_of(out, "stderr")
    finally:
        run(kc, "%pxconfig --targets all --no-verbose")


def test_identical_output_of_all_ranks_is_shown_once_with_their_rank_set(kc):
    status, out = run(kc, "%%px\nprint('done')\nprint('rank', rank % 2)\n'same'")
    text = text_of(out)
    assert status == "ok" and "[stdout:0-2] done\n" in text and text.count("done") == 1, text
    assert "[stdout:0,2] rank 0\n[stdout:1] rank 1\n" in text and "Out[0-2:" in text
    status, out = run(kc, "%%px --no-merge\nprint('done')")
    assert [line for line in text_of(out).splitlines()] == [f"[stdout:{r}] done" for r in range(3)]
    status, out = run(kc, "%%px --no-stream\nprint('done')\nprint(rank)")
    assert status == "ok" and "[stdout:0] done\n[stdout:0] 0\n[stdout:1] done\n" in text_of(out)
    status, out = run(kc, "%%px\nfrom IPython.display import HTML, display\ndisplay(HTML('<b>x</b>'))")
    assert status == "ok" and text_of(out).count("[output:0-2]") == 1, out


def test_output_over_the_cap_goes_to_a_file_that_the_cell_names(kc):
    status, out = run(kc, "%%px --max-lines 5\nfor i in range(20):\n    print(rank, i)")
    text = text_of(out)
    assert status == "ok" and all(text.count(f"[stdout:{r}] ") == 5 for r in range(3)), text
    (note,) = [line for line in text.splitlines() if line.startswith("[px] output limited")]
    assert "5 lines per rank: 45 more lines from ranks 0-2 are in " in note, note
    path = re.search(r"are in (\S+)", note).group(1)
    spilled = open(path).read().splitlines()
    assert len(spilled) == 45 and spilled[:2] == ["[stdout:0] 0 5", "[stdout:0] 0 6"], spilled[:3]
    status, out = run(kc, "%%px --max-lines bad\n1")
    assert status == "error" and "--max-lines" in error_text(out), out


def test_a_hundred_thousand_lines_per_rank_end_in_a_short_cell_and_a_file(kc):
    status, out = run(kc, "%%px\nfor i in range(100_000):\n    print('line', i)", timeout=120)
    text = text_of(out)
    assert status == "ok" and text.count("[stdout:0-2] line ") == 1000, text[-500:]
    assert "299,700 more lines" not in text and "297,000 more lines from ranks 0-2" in text, text[-400:]
    status, out = run(kc, "%%px\nprint(rank)")   # the kernel and the servers carry on
    assert status == "ok" and "[stdout:2] 2" in text_of(out)


def test_ipyparallel_magic_idioms_port_unchanged(kc):
    """Idioms from ipyparallel's magics documentation, as written."""
    try:
        status, out = run(kc, "%pxconfig --noblock")
        status, out = run(kc, "ar = %px 6*7")                 # a non-blocking %px returns its AsyncResult
        assert status == "ok", out
        status, out = run(kc, "ar.get(timeout=30), len(ar)")
        assert out[-1]["data"]["text/plain"] == "([42, 42, 42], 3)"
        status, out = run(kc, "%px --verbose 1")
        assert "Async parallel execution on engine(s): [0, 1, 2]" in text_of(out)
        status, out = run(kc, "%%px\nimport threading\nthreading.Lock()")  # a value that cannot travel back
        status, out = run(kc, "_.get(timeout=30)")
        assert status == "ok" and out[-1]["data"]["text/plain"] == "[None, None, None]", out
    finally:
        status, out = run(kc, "%pxconfig --block")
    assert "block=True" in text_of(out)
    status, out = run(kc, "%%px\nprint('back to blocking')")  # every %pxconfig option round-trips
    assert text_of(out).count("back to blocking") == 1 and "[stdout:0-2] back to blocking" in text_of(out)
    for flags in ("--verbose", "--no-verbose", "--no-merge", "--merge", "--targets 0", "--targets all"):
        status, out = run(kc, f"%pxconfig {flags}")
        assert status == "ok", (flags, out)
    status, out = run(kc, "%%px\nprint(rank)")
    assert text_of(out) == "".join(f"[stdout:{r}] {r}\n" for r in range(3))
    # IPython expands {name} and $name in line magics: %px gets the client's value
    status, out = run(kc, "name = 'world'\n%px y = '{name}'")
    status, out = run(kc, "%%px\ny")
    assert "Out[0-2:" in text_of(out) and "'world'" in text_of(out)


def test_group_outputs_engine_and_order_show_one_block_per_engine(kc):
    for group in ("engine", "order"):
        status, out = run(kc, f"%%px --group-outputs {group}\nprint('same')")
        assert text_of(out) == "".join(f"[stdout:{r}] same\n" for r in range(3)), (group, out)
    status, out = run(kc, "%%px --group-outputs engine --merge\nprint('same')")   # unless asked for
    assert text_of(out) == "[stdout:0-2] same\n"
