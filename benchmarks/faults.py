"""`python -m benchmarks.faults [--quick]`: the fault matrix, kept as a record.

Drives a real 4-rank kernel (through jupyter_client, as a notebook would) through the
failures a notebook user meets: bad input, interrupts, stuck ranks, user code that ends
MPI, dead ranks. For each case it prints what the user saw (the error's first line), the
time until the kernel was usable again (a `%%px` cell answered by every server, after
the case's recovery step: the advice the cell gave), whose variables were kept (the
notebook's, the servers'), and how many processes were left beyond the job's own. Writes benchmarks/results/faults.{json,md}. Like the benchmarks
it asserts nothing; tests check the behaviour. `--quick` runs a few cheap cases.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.kernel_helpers import install_kernelspec, start_kernel

HERE = Path(__file__).resolve().parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclasses.dataclass
class Case:
    name: str
    code: str
    stop_after: float | None = None   # press Stop this many seconds after sending the cell
    recover: str | None = None        # the cell the error advised, run before the check
    setup: str | None = None          # a cell run first, outside the case
    quick: bool = False
    dies: bool = False                # a server dies: whose state is kept is read before the
                                      # recovery (%mpi_restart_dead), which starts it anew


RESTART = "%mpi_restart_dead"  # what a death's cell advises (it says so when the whole job restarted)
CASES = [
    Case("syntax error", "%%px\n1 +", quick=True),
    Case("exception on every rank", "%%px\n1/0"),
    Case("wrong target rank", "%%px --targets 9\n1"),
    Case("unbalanced quote in options", "%%px --targets '0\n1"),
    Case("unpicklable push", "g = (i for i in range(3))\n%mpi_push g"),
    Case("Ctrl-C of while True", "%%px\nwhile True: pass", stop_after=1.0, quick=True),
    Case("Barrier one server never reaches, Stop", "%%px --targets 0\ncomm.Barrier()", stop_after=1.0,
         recover="%%px --targets 1,2\ncomm.Barrier()", quick=True),
    Case("numpy eig in C, Stop", "%%px --targets 0\nimport numpy as np\n"
         "w = np.linalg.eig(np.random.rand(2000, 2000))", stop_after=1.0),
    Case("GIL held (huge power), --timeout 1", "%%px --targets 1 --timeout 1\nx = 7 ** (10**7)"),
    Case("a --local cell's world in a plain cell, --timeout 6", "%%px --timeout 6\nw.Barrier()",
         setup="%%px --local\nfrom mpi4py import MPI\nw = MPI.COMM_WORLD", recover="w.Barrier()"),
    Case("MPI.Finalize() on a server", "%%px --targets 0\nfrom mpi4py import MPI\nMPI.Finalize()"),
    Case("exit() in %%px", "%%px --targets 0\nexit()"),
    Case("--local, only the client fails", "%%px --local\nfrom mpi4py import MPI\n"
         "assert MPI.COMM_WORLD.Get_rank() != 3"),
    Case("input() on servers", "%%px\ninput()"),
    Case("server killed (SIGKILL)", "%%px --targets 1\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
         recover=RESTART, dies=True, quick=True),
    Case("server segfault", "%%px --targets 1\nimport ctypes\nctypes.string_at(0)", recover=RESTART, dies=True),
    Case("server os._exit(3)", "%%px --targets 1\nimport os\nos._exit(3)", recover=RESTART, dies=True),
    Case("server dies inside a Barrier", "%%px\nimport os\nif rank == 1: os._exit(2)\ncomm.Barrier()",
         recover="%mpi_restart_dead --end-busy", dies=True),
    Case("comm.Abort(7) on a server", "%%px --targets 2\ncomm.Abort(7)"),
]


def run_cell(kc: Any, code: str, stop: tuple[Any, float] | None = None, timeout: float = 120) -> dict:
    """Execute `code`; {status, saw: the first line of what went wrong}."""
    errors: list[str] = []
    msg_id = kc.execute(code)
    if stop is not None:
        km, after = stop
        time.sleep(after)
        km.interrupt_kernel()
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(1.0, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        content = msg["content"]
        if msg["msg_type"] == "error":
            errors.append(_gist(content))
        elif msg["msg_type"] == "stream" and content["name"] == "stderr" and "Error" in content["text"]:
            errors.append(content["text"])
        elif msg["msg_type"] == "status" and content["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:  # a late reply to an earlier request
        reply = kc.get_shell_msg(timeout=30)
    saw = ANSI.sub("", errors[-1]).strip().splitlines()[0] if errors else "(no error)"
    return {"status": reply["content"]["status"], "saw": saw if len(saw) <= 200 else saw[:199] + "…"}


def _gist(error: dict) -> str:
    """The error's name and first line, and the line that explains it: a stuck rank's
    diagnosis, or the exception message at the end of a remote traceback."""
    evalue = ANSI.sub("", error["evalue"])
    lines = [line.strip() for line in ANSI.sub("", "\n".join(error.get("traceback", []))).splitlines()]
    diagnosis = [line for line in evalue.splitlines()
                 if re.match(r"Ranks? \S+ (waits?|is in C|are in C|did not answer)", line)]
    messages = [line for line in lines if re.match(r"\w+(Error|Exit|Exception): \S", line)]
    extra = diagnosis[0] if diagnosis else messages[-1] if messages else ""
    first = f"{error['ename']}: {evalue.splitlines()[0] if evalue else ''}"
    return first + (f" / {extra}" if extra and extra not in first else "")


def usable(kc: Any, timeout: float = 180) -> bool:
    """True once a %%px cell is answered by every server (it waits for a restarted job)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = run_cell(kc, "%%px\nprint('usable')", timeout=max(5.0, deadline - time.monotonic()))
        except Exception:  # the queue timed out: try again
            continue
        if result["status"] == "ok":
            return True
    return False


def job_processes(km: Any) -> list[int]:
    """The supervisor's descendants: launcher, proxies, guards, ranks."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.split("\n"):
        if line.strip():
            pid, ppid = map(int, line.split())
            children.setdefault(ppid, []).append(pid)
    found, todo = [], [km.provisioner.process.pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def own_processes(km: Any) -> int:
    """The job's processes, less the launcher's helper of each replacement (%mpi_restart_dead:
    hydra starts one proxy per spawn, and it lives as long as its replacement does)."""
    pids = job_processes(km)
    out = subprocess.run(["ps", "-o", "pid=,ppid=,args=", "-p", ",".join(map(str, pids))],
                         capture_output=True, text=True).stdout if pids else ""
    rows = [line.split(None, 2) for line in out.splitlines() if line.strip()]
    parents = {int(r[1]) for r in rows}
    spawn_proxies = [r for r in rows if "hydra_pmi_proxy" in r[2] and "--pgid 0 " not in r[2]
                     and int(r[0]) in parents]
    return len(pids) - len(spawn_proxies)


def running(pids: list[int]) -> list[int]:
    """The processes among `pids` that still run (zombies do not)."""
    left = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                left.append(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return left


def state_kept(kc: Any, saw: str) -> str:
    """Whose variables set before the case are still there: the notebook's, the servers'
    (those left, when one died and the job went on without it)."""
    notebook = run_cell(kc, "fault_mark")["status"] == "ok"
    servers = run_cell(kc, "%%px --timeout 5\nfault_mark")["status"] == "ok"  # (ranks stuck for good: lost)
    if notebook and servers and "MPIRankDied" in saw:
        return "all but the dead rank's"
    return {(True, True): "all", (True, False): "notebook only", (False, True): "servers only"}.get(
        (notebook, servers), "none")


def run_case(km: Any, kc: Any, case: Case, steady: int) -> dict:
    run_cell(kc, "fault_mark = 1")
    run_cell(kc, "%%px\nfault_mark = 1")
    if case.setup:
        run_cell(kc, case.setup)
    t0 = time.monotonic()
    result = run_cell(kc, case.code, (km, case.stop_after) if case.stop_after is not None else None)
    case_s = time.monotonic() - t0
    kept = state_kept(kc, result["saw"]) if case.dies else None  # (not timed)
    t1 = time.monotonic()
    if case.recover:
        run_cell(kc, case.recover)
    recover_s = time.monotonic() - t1 if case.dies else None  # %mpi_restart_dead's own time
    ok = usable(kc)
    recovered = case_s + time.monotonic() - t1
    kept = kept or state_kept(kc, result["saw"])
    time.sleep(0.5)  # launchers tear a dead job down in 0.1-0.4 s
    left = own_processes(km) - steady
    return {"case": case.name, "status": result["status"], "saw": result["saw"],
            "usable_after_s": round(recovered, 2) if ok else None, "state_kept": kept,
            "restart_s": round(recover_s, 2) if recover_s is not None else None,
            "extra_processes": left}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few cheap cases (CI)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if c.quick or not args.quick]
    prefix = Path(tempfile.mkdtemp(prefix="mpi-kernel-faults-"))
    install_kernelspec(prefix, ranks=4, name="mpi-faults")
    km, kc = start_kernel("mpi-faults", timeout=120)
    rows = []
    try:
        usable(kc)
        steady = own_processes(km)
        for case in cases:
            rows.append(run_case(km, kc, case, steady))
            print(json.dumps(rows[-1]), flush=True)
        # The worst case for shutdown: a server holding the GIL cannot confirm the stop.
        run_cell(kc, "%%px --noblock --targets 0\nx = 7 ** (10**9)")
    finally:
        kc.stop_channels()
        supervisor = km.provisioner.process.pid
        processes = job_processes(km)
        t0 = time.monotonic()
        km.shutdown_kernel(now=False)
        deadline = time.monotonic() + 10
        while (alive := running([supervisor, *processes])) and time.monotonic() < deadline:
            time.sleep(0.05)
        shutdown = time.monotonic() - t0
    results = {"date": time.strftime("%Y-%m-%d"), "quick": args.quick, "rows": rows,
               "shutdown_s": round(shutdown, 2), "left_after_shutdown": len(alive)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "faults-quick" if args.quick else "faults"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    table = markdown(results)
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    return 1 if alive or any(r["usable_after_s"] is None for r in rows) else 0


def markdown(results: dict) -> str:
    lines = [f"Fault matrix, {results['date']} (4 ranks, `python -m benchmarks.faults`)", "",
             "| case | the cell | what the user saw | usable again after | state kept | processes left |",
             "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        saw = r["saw"].replace("|", "\\|")
        after = f"{r['usable_after_s']:.1f} s" if r["usable_after_s"] is not None else "never"
        if r.get("restart_s") is not None:
            after += f" (of which {r['restart_s']:.1f} s the restart of the dead rank)"
        lines.append(f"| {r['case']} | {r['status']} | {saw} | {after} | {r.get('state_kept', '?')} | "
                     f"{r['extra_processes']} |")
    lines += ["", f"Shutdown while a server held the GIL: every process was gone after "
                  f"{results['shutdown_s']:.1f} s (stop_timeout 1 s, then MPI_Abort); "
                  f"{results['left_after_shutdown']} left after 10 s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
