"""MPIKernel: an IPython kernel on the client rank, with the servers behind it.

Thin on purpose: cells run in the client's namespace as in any IPython kernel;
the ipython_ext magics send work to the servers through the MPICommandClient.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from typing import Any

import zmq
from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp

from .. import __version__
from ..framework import environment
from ..framework.client import MPICommandClient
from . import deaths, link

log = logging.getLogger("mpi_kernel.kernel")
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")


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
                f"(rank {last + 1}); servers are ranks 0-{last}. Try %%px, %mpi_status, %mpi_monitor.\n"
                f"In %%px cells MPI.COMM_WORLD is the servers' world ({last + 1} ranks, as under "
                f"mpiexec -n {last + 1}), also named comm, with rank and size; in %%px --local cells "
                f"and here it is the whole job ({last + 2} ranks).")

    def _send_interrupt_children(self) -> None:
        # Jupyter's interrupt button (interrupt_mode "message") stops everything: queued
        # requests are cancelled (else they would start the moment a server is free), the
        # servers' running commands are interrupted over MPI, then this process's cell is
        # interrupted as ipykernel does.
        try:
            self.mpi.stop()
        except Exception:
            log.exception("could not relay the interrupt to the servers")
        super()._send_interrupt_children()

    async def do_shutdown(self, restart: bool) -> dict:
        self.mpi.stop_services()
        return super().do_shutdown(restart)


class SupervisorLink:
    """The kernel rank's end of the link to the supervisor on the Jupyter host (link.py).

    It writes the connection file this rank's ipykernel binds (the supervisor's key, the
    address the supervisor can reach, ports chosen by ipykernel), says hello with the
    ports, and then watches the link: if the supervisor is gone or asks for an abort, the
    whole job ends by MPI_Abort, on every host, within moments.
    """

    def __init__(self, info: link.LinkInfo) -> None:
        self.key = info.key.encode()
        self.sock, ip = link.connect(info)
        # Mode 0700: the key is in the file. A rank killed cannot remove it: so the file goes
        # as soon as ipykernel has read it (forget_files), and the folder then too, unless it
        # holds the sockets, on the supervisor's host, which removes it when the job ends.
        self.folder = folder = tempfile.mkdtemp(prefix=link.FOLDER_PREFIX)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        self.connection_file = os.path.join(folder, "kernel.json")
        # On the supervisor's host the channels are Unix sockets in that private folder;
        # from another host, TCP on the interface that reaches it, encrypted with CurveZMQ
        # (ipykernel's own support), so code and outputs do not cross the cluster in clear.
        self.transport, self.ip = ("ipc", os.path.join(folder, "ch")) if ip == "127.0.0.1" else ("tcp", ip)
        info_file = {"ip": self.ip, "key": info.key, "transport": self.transport,
                     "signature_scheme": info.signature_scheme,
                     **{f"{c}_port": 0 for c in CHANNELS}}
        self.curve_publickey = None
        if self.transport == "tcp" and zmq.has("curve"):
            public, secret = zmq.curve_keypair()
            self.curve_publickey = public.decode()
            info_file.update(curve_publickey=self.curve_publickey, curve_secretkey=secret.decode())
        with open(os.open(self.connection_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            json.dump(info_file, f)

    def forget_files(self) -> None:
        """Once ipykernel has bound its ports: remove what a killed rank would leave behind."""
        os.remove(self.connection_file)
        if self.transport == "tcp":
            os.rmdir(self.folder)

    def hello(self, app: IPKernelApp, client: MPICommandClient) -> None:
        """Tell the supervisor where this rank listens; then watch the link."""
        servers = {r: [s["host"], s["pid"]] for r, s in client.get_server_status().items()}
        ports = {c: getattr(app, f"{c}_port") for c in CHANNELS}
        env = environment.current()
        link.send(self.sock, self.key, "hello", rank=env.rank, host=env.host, pid=os.getpid(),
                  transport=self.transport, ip=self.ip, ports=ports, curve_publickey=self.curve_publickey,
                  servers=servers, library=env.library)
        threading.Thread(target=self._watch, name="mpi-kernel-link", daemon=True).start()

    def _server_died(self, entry: dict) -> None:
        client = MPICommandClient()
        rank = entry.get("rank")
        if rank not in client.servers():
            return
        failed = client.server_died(rank, deaths.survived(entry, environment.current().rank),
                                    (entry.get("host"), entry.get("pid")))
        log.info("server rank %s died; %d request(s) failed; the job goes on without it", rank, len(failed))

    def _watch(self) -> None:
        self.sock.setblocking(True)
        reader = link.LineReader(self.sock, self.key)
        reason = "the link to the supervisor on the Jupyter host closed (Jupyter is gone?)"
        while True:
            try:
                messages, closed = reader.read()
            except link.LinkError as exc:
                log.error("%s", exc)
                continue
            for message in messages:
                if message["kind"] == "rank-ended":
                    self._server_died(message["entry"])
            aborts = [m for m in messages if m["kind"] == "abort"]
            if aborts:
                reason = f"the supervisor asked: {aborts[0].get('reason')}"
            if aborts or closed:
                break
        print(f"mpi-kernel: aborting the MPI job: {reason}", file=sys.__stderr__, flush=True)
        environment.abort(1)


def main(argv: list[str]) -> int:
    """Start the servers' services, then run the kernel until Jupyter shuts it down.

    Under the supervisor (`--kernel`, with MPI_KERNEL_SUPERVISOR set) the connection file
    is this rank's own; with `-f FILE` (no supervisor, one host only) it is Jupyter's.
    """
    info = link.LinkInfo.from_env()
    if info is None and argv[:1] == ["--kernel"]:
        raise SystemExit(f"mpi-kernel: --kernel runs under the supervisor, which sets {link.ENV}; "
                         f"start it from Jupyter (python -m mpi_kernel install) or use -f CONNECTION_FILE")
    client = MPICommandClient()
    if info is not None:
        client.stop_timeout = info.stop_timeout
    client.start_services()
    supervisor = SupervisorLink(info) if info is not None else None
    if supervisor is not None:
        # parent_handle 1: ipykernel then neither watches a parent pid (the supervisor's is
        # on another host) nor prints its "connect another client" banner.
        argv = ["-f", supervisor.connection_file, "--IPKernelApp.parent_handle=1"]
    else:  # for the Jupyter server's log: MPICH names a dead process by pid only
        ranks = ", ".join(f"{r}: pid {s['pid']} on {s['host']}" for r, s in client.get_server_status().items())
        print(f"mpi-kernel: client rank {len(client.servers())} pid {os.getpid()}; servers {ranks}",
              file=sys.__stderr__, flush=True)
    app = IPKernelApp.instance(kernel_class=MPIKernel)
    app.initialize(argv)
    if supervisor is not None:
        supervisor.forget_files()
        supervisor.hello(app, client)
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
