"""Kernel measurements through jupyter_client: start, cells, interrupt, restart, shutdown."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from jupyter_client.kernelspec import NATIVE_KERNEL_NAME
from jupyter_client.manager import KernelManager

from tests.kernel_helpers import install_kernelspec, start_kernel

from .stats import summarize


def install(prefix: Path, ranks: int) -> str:
    name = f"mpi-bench-{ranks}"
    install_kernelspec(prefix, ranks=ranks, name=name)
    return name


def install_unsupervised(prefix: Path, ranks: int) -> str:
    """The same kernel launched by mpiexec straight from kernel.json (one host, no supervisor,
    no relay): the baseline for what the supervisor's relay adds."""
    name = f"mpi-bench-direct-{ranks}"
    path = install_kernelspec(prefix, ranks=ranks, name=name)
    spec = json.loads((path / "kernel.json").read_text())
    launcher = spec["argv"][spec["argv"].index("--") + 1:]
    spec["argv"] = [*launcher[:-1], "-f", "{connection_file}"]  # "--kernel" -> Jupyter's file
    (path / "kernel.json").write_text(json.dumps(spec))
    return name


def cells(name: str, reps: int, codes: dict[str, str]) -> dict:
    """Cell times of one kernel: {label: summary}."""
    km, kc, _ = start(name)
    try:
        return {label: summarize(cell_times(kc, code, reps)) for label, code in codes.items()}
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def start(name: str) -> tuple[KernelManager, object, float]:
    """Start a kernel; the time to ready (a start retried for a taken port counts whole)."""
    t0 = time.perf_counter()
    km, kc = start_kernel(name, timeout=120)
    return km, kc, time.perf_counter() - t0


def cell_times(kc: object, code: str, reps: int) -> list[float]:
    samples = []
    for _ in range(reps + 5):
        t0 = time.perf_counter()
        reply = kc.execute_interactive(code, output_hook=lambda msg: None, timeout=60)
        samples.append(time.perf_counter() - t0)
        assert reply["content"]["status"] == "ok", reply["content"]
    return samples[5:]


def interrupt_latency(km: KernelManager, kc: object) -> float:
    kc.execute("%%px\nwhile True: pass")
    time.sleep(1.0)
    t0 = time.perf_counter()
    km.interrupt_kernel()
    kc.get_shell_msg(timeout=30)
    return time.perf_counter() - t0


def start_time(ranks: int, reps: int) -> list[float]:
    """Kernel start-to-ready at a given world size (each kernel shut down after)."""
    with tempfile.TemporaryDirectory() as tmp:
        name = install(Path(tmp), ranks)
        samples = []
        for _ in range(reps):
            km, kc, elapsed = start(name)
            samples.append(elapsed)
            kc.stop_channels()
            km.shutdown_kernel(now=False)
        return samples


def px_cell_cpu(ranks: int, reps: int = 30) -> float:
    """The kernel's (the client rank's) CPU time per `%%px 1+1` cell, in us, read by the kernel
    process itself around `reps` cells."""
    with tempfile.TemporaryDirectory() as tmp:
        km, kc, _ = start(install(Path(tmp), ranks))
        try:
            cell_times(kc, "%%px\n1+1", 0)  # warm-up (5 cells)
            kc.execute_interactive("import time as _t; _c0 = _t.process_time()", timeout=60)
            cell_times(kc, "%%px\n1+1", reps - 5)
            reply = kc.execute_interactive("", user_expressions={"cpu": "_t.process_time() - _c0"}, timeout=60)
            return float(reply["content"]["user_expressions"]["cpu"]["data"]["text/plain"]) / reps * 1e6
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=False)


def run(reps: int, ranks: int = 4) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        name = install(Path(tmp), ranks)
        km, kc, elapsed = start(name)
        out["kernel_start_s"] = elapsed
        out["cell_local"] = summarize(cell_times(kc, "1+1", reps))
        out["cell_px"] = summarize(cell_times(kc, "%%px\n1+1", reps))
        out["interrupt_s"] = interrupt_latency(km, kc)
        t0 = time.perf_counter()
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=120)
        out["kernel_restart_s"] = time.perf_counter() - t0
        kc.execute_interactive("%%px\n1", timeout=60)
        kc.stop_channels()
        t0 = time.perf_counter()
        km.shutdown_kernel(now=False)
        out["kernel_shutdown_s"] = time.perf_counter() - t0
        # Baselines in the same run: a plain ipykernel, and this kernel without the relay.
        out["plain_ipykernel"] = cells(NATIVE_KERNEL_NAME, reps, {"cell": "1+1"})
        out["unsupervised"] = cells(install_unsupervised(Path(tmp), ranks), reps,
                                    {"cell_local": "1+1", "cell_px": "%%px\n1+1"})
    return out
