"""Start the real MPI kernel, installed into a temporary prefix, through jupyter_client.

Also used by the notebooks' session set-up (../conftest.py) and the benchmarks, which
import it as tests.kernel_helpers."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from jupyter_client.manager import KernelManager

from mpi_kernel.jupyter import kernelspec

KERNEL_NAME = "mpi-test"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def install_kernelspec(prefix: str | Path, ranks: int = 4, name: str = KERNEL_NAME,
                       env: dict[str, str] | None = None, **kernel_options: Any) -> Path:
    """Install into `prefix` and put it first on JUPYTER_PATH, for this process and its children.

    Test runs, benchmarks and CI must find the kernel without touching the user's own
    kernelspecs (the CLI itself is tested in tests/unit/test_kernelspec.py). `env` goes
    into kernel.json, `kernel_options` as for kernelspec.make_kernel_dict. Returns the
    kernelspec folder.
    """
    path = Path(kernelspec.install(name, prefix=str(prefix), ranks=ranks, env=env, **kernel_options))
    share = str(Path(prefix) / "share" / "jupyter")
    rest = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != share]
    os.environ["JUPYTER_PATH"] = os.pathsep.join([share, *rest])
    return path


def survival(survive: bool | None = None) -> str | None:
    """How a kernelspec installed here (with `survive`, as install's option) keeps the job when
    a server dies: "hydra" (MPICH's -disable-auto-cleanup), "ulfm" (Open MPI's --with-ft ulfm),
    or None."""
    flags = kernelspec.launcher_flags(kernelspec.default_mpiexec(), survive)
    return "hydra" if "-disable-auto-cleanup" in flags else "ulfm" if "--with-ft" in flags else None


def survives_deaths(survive: bool | None = None) -> bool:
    return survival(survive) is not None


def start_kernel(name: str = KERNEL_NAME, timeout: float = 60, attempts: int = 2) -> tuple[KernelManager, Any]:
    """Start a kernel through jupyter_client and wait until it answers: (manager, client).

    A start that dies is retried with new ports, as Jupyter's own
    restarter does: jupyter_client picks free ports and closes them for the kernel to bind,
    and mpiexec's TCP connections can take one in between ("Address already in use").
    """
    km = KernelManager(kernel_name=name)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=timeout)
    except RuntimeError as exc:  # "Kernel died before replying to kernel_info"
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        if attempts <= 1:
            raise
        print(f"kernel {name} died while starting ({exc}); retrying with new ports", file=sys.stderr)
        return start_kernel(name, timeout, attempts - 1)
    return km, kc


@contextlib.contextmanager
def running_kernel(name: str) -> Iterator[tuple[KernelManager, Any]]:
    """A started kernel (start_kernel), shut down as Jupyter does at the end (unless the
    test did so itself)."""
    km, kc = start_kernel(name)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=False)


def interrupt_cell(km: KernelManager, kc: Any, code: str, after: float = 1.0) -> tuple[dict, float]:
    """Send `code`, press Stop `after` seconds later: (the cell's reply, seconds from Stop to it).
    Replies to earlier requests (wait_for_ready's kernel_info) are passed over."""
    msg_id = kc.execute(code, stop_on_error=False)
    time.sleep(after)
    started = time.monotonic()
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=10)
    while reply["parent_header"]["msg_id"] != msg_id:
        reply = kc.get_shell_msg(timeout=10)
    return reply, time.monotonic() - started


def run(kc: Any, code: str, timeout: float = 60) -> tuple[str, list[dict]]:
    """Execute `code`; return the reply status and the iopub messages (type + content).

    Sent with stop_on_error=False: ipykernel 7 sends an error reply first and only then
    posts the marker that ends its "abort the queued cells" state, so a cell sent the moment
    the reply arrives can come back "aborted" when the kernel's threads are starved (as by
    Open MPI ranks busy-polling in a stuck Barrier). A user at the notebook is never that fast.
    """
    outputs: list[dict] = []

    def hook(msg: dict) -> None:
        if msg["msg_type"] in ("stream", "display_data", "update_display_data", "execute_result", "error"):
            outputs.append({"type": msg["msg_type"], **msg["content"]})

    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout, stop_on_error=False)
    return reply["content"]["status"], outputs


def text_of(outputs: list[dict], name: str = "stdout") -> str:
    return ANSI.sub("", "".join(o["text"] for o in outputs if o["type"] == "stream" and o["name"] == name))


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines()[1:]:
        p, pp = map(int, line.split())
        children.setdefault(pp, []).append(p)
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def job_pids(km: KernelManager) -> tuple[int, list[int]]:
    """(the supervisor's pid, every process of its MPI job: launcher, proxies, guards, ranks)."""
    supervisor = km.provisioner.process.pid
    return supervisor, [p for p in process_tree(supervisor) if p != supervisor]


def error_text(outputs: list[dict]) -> str:
    """The cell's error outputs and stderr, without colours."""
    errors = ["\n".join(o.get("traceback", [])) for o in outputs if o["type"] == "error"]
    return ANSI.sub("", text_of(outputs, "stderr") + "\n".join(errors))


@contextlib.contextmanager
def fake_jupyter(tmp_path: Path, kernel_name: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """A process that starts a kernel as Jupyter does and then just waits, to be killed:
    yields (that process, the supervisor's pid). Both are killed at the end."""
    script = tmp_path / "fake_jupyter.py"
    script.write_text(
        "import time\nfrom jupyter_client.manager import KernelManager\n"
        f"km = KernelManager(kernel_name={kernel_name!r})\nkm.start_kernel()\n"
        "kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=90)\n"
        "print(km.provisioner.process.pid, flush=True)\ntime.sleep(120)\n")
    jupyter = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    supervisor = None
    try:
        supervisor = int(jupyter.stdout.readline())
        yield jupyter, supervisor
    finally:
        jupyter.kill()
        jupyter.wait()
        if supervisor is not None and alive([supervisor]):
            os.kill(supervisor, signal.SIGKILL)


def alive(pids: list[int]) -> list[int]:
    left = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    left.append(pid)
        except FileNotFoundError:
            pass
    return left


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(pids)


def install_surviving_kernelspec(prefix: str | Path, name: str) -> Path:
    """A 4-rank kernelspec whose job keeps the other ranks when a server dies; the calling
    test (module) skips where this launcher cannot."""
    import pytest
    if not survives_deaths(True):
        pytest.skip("this launcher does not keep the other ranks when one dies")
    return install_kernelspec(prefix, ranks=4, name=name, survive=True)

