"""`python -m benchmarks [--quick]`: measure mpi-kernel against raw MPI, write
benchmarks/results/latest.{json,md,png} and print the table.

Every comparison is a ratio of medians measured in the same run on this machine.
Benchmarks are not tests: nothing here asserts a timing; missed goals are shown.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from . import kernel_bench, peers, report

HERE = Path(__file__).resolve().parent
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


def run_core(reps: int, idle_seconds: float, ranks: int = 4) -> dict:
    """The core job: one `mpiexec -n 4` run of core_job.py (raw baselines in the same job)."""
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi_kernel", str(HERE / "core_job.py"),
           str(reps), str(idle_seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"core benchmark job failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_scaling(reps: int, sizes: list[int]) -> list[dict]:
    """Fan-out and kernel start at several world sizes (beyond 2 ranks a core: oversubscribed)."""
    out = []
    for n in sizes:
        cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "mpi_kernel", str(HERE / "scaling_job.py"),
               str(reps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            out.append({"ranks": n, "error": proc.stderr[-2000:]})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["kernel_start"] = summarize_seconds(kernel_bench.start_time(n, 3))
        row["px_cell_cpu_us"] = kernel_bench.px_cell_cpu(n)
        out.append(row)
    return out


def summarize_seconds(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few repetitions: proves it runs")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where results go")
    parser.add_argument("--no-peers", action="store_true", help="skip ipyparallel and mpi4py.futures")
    parser.add_argument("--report", type=Path, help="only redraw the table and plot from a results JSON")
    args = parser.parse_args(argv)
    if args.report:
        results = json.loads(args.report.read_text())
        write(results, args.report.parent, args.report.stem)
        return 0
    started = time.monotonic()
    reps = 50 if args.quick else 2000
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "quick": args.quick,
        "core": run_core(reps, 1.0 if args.quick else 5.0),
        "kernel": kernel_bench.run(10 if args.quick else 200),
    }
    if not (args.quick or args.no_peers):
        results["peers"] = {"mpi4py_futures": peers.futures(500), "ipyparallel": peers.ipyparallel(500),
                            "ipyparallel_cell": peers.ipyparallel_cell(100)}
    results["scaling"] = run_scaling(20 if args.quick else 500,
                                     [2, 4] if args.quick else [2, 4, 8, 16, 32, 64])
    results["leftover_processes"] = leftovers(time.monotonic() - started)
    write(results, args.out, "quick" if args.quick else "latest")
    if results["leftover_processes"]:
        print("WARNING: processes left behind:\n" + "\n".join(results["leftover_processes"]), file=sys.stderr)
        return 1
    return 0


def leftovers(seconds: float) -> list[str]:
    """Processes of the kinds the benchmark starts, younger than the run, still running."""
    time.sleep(1.0)  # launchers tear jobs down in 0.1-0.4 s
    markers = ("core_job.py", "scaling_job.py", "mpi_kernel -f", "mpi_kernel --kernel",
               "mpi_kernel supervise", "ipyparallel", "ipengine",
               "ipcontroller", "mpi4py.futures")
    out = subprocess.run(["ps", "-eo", "etimes=,pid=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()]
    return [f"{pid} {args}" for age, pid, args in (r for r in rows if len(r) == 3)
            if int(age) <= seconds + 1 and any(m in args for m in markers)]


def write(results: dict, out: Path, stem: str) -> None:
    """results/STEM.json, the Markdown table (also printed) and the plot."""
    rows = report.rows(results)
    results["table"] = rows
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    table = report.markdown(results, rows)
    (out / f"{stem}.md").write_text(table)
    report.plot(rows, out / f"{stem}.png", results["date"], results["machine"]["cores"])
    print(table)


if __name__ == "__main__":
    sys.exit(main())
