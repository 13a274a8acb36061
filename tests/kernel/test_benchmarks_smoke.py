"""The benchmark command still runs (a quick smoke run; no timing is asserted)."""
import json
import subprocess
import sys

import pytest

from kernel_helpers import survives_deaths


@pytest.mark.timeout(320)  # the run has its own 300 s limit; a first run also builds caches
def test_benchmarks_quick_run_writes_results(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "quick.json").read_text())
    assert {"core", "kernel", "table", "machine"} <= set(results)
    # Every figure is measured; only CPU use may honestly be 0 (a quick run idles for under a second).
    for row in results["table"]:
        assert row["ours"] >= 0 if row["unit"].startswith("%") else row["ours"] > 0, row
    assert (tmp_path / "quick.png").stat().st_size > 1000
    assert "| eval round trip, 1 server |" in proc.stdout


@pytest.mark.timeout(320)
def test_fault_matrix_quick_run(tmp_path):
    """The fault-matrix record still runs; every case leaves a usable kernel and no processes."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.faults", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "faults-quick.json").read_text())
    assert [r["case"] for r in results["rows"]] == ["syntax error", "Ctrl-C of while True",
                                                    "Barrier one server never reaches, Stop",
                                                    "server killed (SIGKILL)"]
    assert all(r["status"] == "error" and r["extra_processes"] == 0 for r in results["rows"]), results["rows"]
    assert "waits in the collective `comm.Barrier()`" in results["rows"][2]["saw"]
    assert [r["state_kept"] for r in results["rows"]] == ["all", "all", "all",
                                                          "all but the dead rank's" if survives_deaths() else "none"]
    assert results["left_after_shutdown"] == 0


@pytest.mark.timeout(240)
def test_a_one_minute_fault_soak_loses_nothing_and_leaves_nothing(tmp_path):
    """benchmarks/soak.py, seed 1 for 60 s: cells, maps, push/pull, requests for any server,
    Stop, SIGKILL + %mpi_restart_dead, SIGSTOP/SIGCONT through a real kernel. Every count
    must be zero."""
    if not survives_deaths(True):
        pytest.skip("the soak kills servers: this launcher does not keep the other ranks")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--minutes", "1", "--seed", "1",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    result = json.loads((tmp_path / "soak-1.json").read_text())
    counts, left = result["counts"], result["left"]
    assert counts["actions"] > 20, counts
    problems = {k: v for k, v in counts.items() if k != "actions" and v}
    assert not problems, (problems, result["examples"])
    assert left == {"processes": 0, "shm": [], "tmp": []}, left
    assert result["last"]["fds"] - result["first"]["fds"] <= 5, (result["first"], result["last"])
