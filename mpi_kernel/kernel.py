"""MPIKernel: an IPython kernel on the client rank, with the servers behind it.

Thin on purpose: cells run in the client's namespace as in any IPython kernel;
the ipython_ext magics send work to the servers through the MPICommandClient.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp

from . import __version__
from .client import MPICommandClient

log = logging.getLogger("mpi_kernel.kernel")


class MPIKernel(IPythonKernel):
    implementation = "mpi_kernel"
    implementation_version = __version__

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mpi = MPICommandClient()
        self.shell.extension_manager.load_extension("ipython_ext")

    @property
    def banner(self) -> str:
        last = self.mpi.servers()[-1]
        return (f"{super().banner}\nmpi-kernel {__version__}: this kernel is the MPI client "
                f"(rank {last + 1}); servers are ranks 0-{last}. Try %%px, %mpi_status, %mpi_monitor.")

    def _send_interrupt_children(self) -> None:
        # Jupyter's interrupt button (interrupt_mode "message") stops everything: queued
        # requests are cancelled (else they would start the moment a server is free), the
        # servers' running commands are interrupted over MPI, then this process's cell is
        # interrupted as ipykernel does.
        try:
            self.mpi.cancel_queued()
            self.mpi.interrupt()
        except Exception:
            log.exception("could not relay the interrupt to the servers")
        super()._send_interrupt_children()

    async def do_shutdown(self, restart: bool) -> dict:
        self.mpi.stop_services()
        return super().do_shutdown(restart)


def watch_jupyter(client: MPICommandClient, interval: float = 1.0) -> None:
    """Stop the whole job if the Jupyter process that started it is gone.

    ipykernel's own parent poller cannot see it: under mpiexec the kernel's parent is
    the launcher's proxy, which outlives a crashed Jupyter server and would leave an
    orphaned MPI job behind.
    """
    parent = int(os.environ.get("JPY_PARENT_PID", "0") or 0)
    if parent <= 1:
        return

    def poll() -> None:
        while True:
            time.sleep(interval)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                log.warning("Jupyter (pid %d) is gone: stopping the MPI job", parent)
                client.stop_services()
                os._exit(1)
            except PermissionError:
                pass  # it exists, as another user

    threading.Thread(target=poll, name="mpi-kernel-parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    """Start the servers' services, then run the kernel until Jupyter shuts it down."""
    client = MPICommandClient()
    client.start_services()
    # For the Jupyter server's log: MPICH names a dead process by pid only.
    ranks = ", ".join(f"{r}: pid {s['pid']} on {s['host']}" for r, s in client.get_server_status().items())
    print(f"mpi-kernel: client rank {len(client.servers())} pid {os.getpid()}; servers {ranks}",
          file=sys.__stderr__, flush=True)
    watch_jupyter(client)
    app = IPKernelApp.instance(kernel_class=MPIKernel)
    app.initialize(argv)
    # Load IPython on the servers now rather than in the user's first %%px cell, which
    # queues behind it. Not earlier: on few cores the servers would slow the client's own
    # set-up; and not waited for, so the kernel is ready sooner (0.5 s at 16 ranks on 2 cores).
    idle_handler = signal.getsignal(signal.SIGINT)  # ipykernel's choice between cells
    client.forget(client.execute_cell("None", client.servers()))
    # Sending installed the client's SIGINT guard; ipykernel would save it before each cell
    # and restore it after, so an interrupt of the idle kernel would raise and end the job.
    signal.signal(signal.SIGINT, idle_handler)
    app.start()
    return 0
