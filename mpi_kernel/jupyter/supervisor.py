"""The supervisor: the process Jupyter starts as "the kernel", on the Jupyter host.

    python -m mpi_kernel supervise -f CONNECTION_FILE [options] -- LAUNCHER ARGV...

It binds the connection file's ports (relay.py), starts the MPI job with the site's
launcher (`mpiexec ...`, `srun ...`, any argv, after an optional shell prelude such as
`module load ...`), and waits for the kernel rank to call back over the signed link
(link.py) with the ports it bound, wherever the launcher put it. From then on it:

- relays Jupyter's channels to the kernel rank;
- ends the job when Jupyter shuts the kernel down, restarts it, or goes away (even by
  SIGKILL): first by asking the kernel rank to MPI_Abort, then by killing the launcher,
  whose own teardown ends the ranks on every host. It never signals a pid on another host;
- tells the kernel rank at once when a server dies, if the launcher keeps the survivors
  (`mpiexec -disable-auto-cleanup`, MPICH): the job goes on without it (guard.py);
- reports a job that dies by itself: the cells in flight end with an error that names the
  ranks that died (guard.py), where and how, and then it starts a new job, so the
  notebook goes on with a fresh kernel (Jupyter sees a kernel "restarting");
- passes everything the job prints outside cells to its own stdout and stderr, which
  is the Jupyter server's log.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import zmq

from . import deaths, guard, link
from ..framework.protocol import NO_RESPAWN

log = logging.getLogger("mpi_kernel.supervisor")
TAIL_LINES = 12
# Open MPI's launcher now and then fails to start a job at all, a race in PMIx's listener
# thread (openpmix/openpmix#112): nothing of ours has run, so the start is simply tried again.
LAUNCH_RACE = "PMIx server's listener thread failed to start"
LAUNCH_RETRIES = 2
# What a job that fails before the kernel starts printed, and how to fix it (the kernel's own
# checks say so themselves: this is for failures inside MPI_Init).
START_HINTS = {"unsupported PMI version PMIx": "MPICH does not speak srun's --mpi=pmix: use --mpi=pmi2 "
                                              "(python -m mpi_kernel install --launcher slurm writes it)"}
# How a rank says that its world cannot host the kernel (__main__.py): no new start helps.
CANNOT_START = "mpi_kernel: error:"
# A job may span hosts when its launcher line names hosts, or a batch system or hostfile
# variable is set (MPICH's mpiexec reads PBS_NODEFILE and HYDRA_HOST_FILE by itself).
HOST_OPTIONS = {"-host", "-hosts", "--host", "-H", "-f", "-hostfile", "--hostfile", "-machinefile",
                "--machinefile", "--default-hostfile", "-launcher", "-launcher-exec", "-bootstrap"}
# Launcher options that keep the other ranks running when one dies (MPICH's hydra).
SURVIVE_OPTIONS = {"-disable-auto-cleanup", "--disable-auto-cleanup"}
# A job whose launcher keeps the other ranks waiting for a dead one without ever ending
# (srun without --kill-on-bad-exit, under Open MPI) is ended this long after the death.
DOOMED_GRACE = 1.0
HOST_VARIABLES = ("HYDRA_HOST_FILE", "PBS_NODEFILE", "SLURM_JOB_ID", "LSB_HOSTS", "LSB_MCPU_HOSTS",
                  "COBALT_NODEFILE", "PE_HOSTFILE", "PRTE_MCA_prte_default_hostfile",
                  "OMPI_MCA_orte_default_hostfile")


@dataclasses.dataclass
class Job:
    """One launch of the MPI job."""
    proc: subprocess.Popen
    link: socket.socket | None = None
    reader: link.LineReader | None = None
    hello: dict | None = None
    ended: list = dataclasses.field(default_factory=list)  # the guards' records, in order
    survived: list = dataclasses.field(default_factory=list)  # those the job went on without
    aborting: bool = False  # a rank called MPI_Abort: the whole job ends, whatever the launcher
    survive: str | None = None  # how this job outlives a server's death (survives_deaths), once up
    doomed: float | None = None  # a server died in a job that cannot go on: end it by then
    partial: dict = dataclasses.field(default_factory=dict)  # fd -> bytes of an unfinished line
    started: float = dataclasses.field(default_factory=time.time)  # wall clock (file times)


class Supervisor:
    def __init__(self, connection_file: str, launcher: list[str], prelude: str | None = None,
                 stop_timeout: float = 1.0, link_address: str | None = None,
                 relaunch: bool = True) -> None:
        with open(connection_file) as f:
            self.connection = json.load(f)
        self.launcher, self.prelude, self.relaunch = launcher, prelude, relaunch
        self.survive = survives_deaths(launcher)
        self.launcher_name = "srun" if srun_args(launcher) is not None else os.path.basename(launcher[0])
        # salloc releases its allocation (and so ends the steps in it) on SIGTERM; killed, it
        # would leave both behind. The others end their ranks when killed.
        self.end_signal = signal.SIGTERM if os.path.basename(launcher[0]) == "salloc" else signal.SIGKILL
        self.stop_timeout = stop_timeout
        self.key = self.connection.get("key", "").encode()
        self.context = zmq.Context()
        self.relay = None  # opened once the job is starting (see run)
        # The kernel rank calls back here: over loopback when the job surely stays on this
        # host, else on every interface (or the one given), for whichever host it lands on.
        local = link_address is None and single_host(launcher, os.environ)
        self.listener = socket.create_server(("127.0.0.1" if local else link_address or "", 0))
        self.listener.setblocking(False)
        self.link_addresses = [link_address] if link_address else _own_addresses()
        self.job: Job | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.launch_retries = LAUNCH_RETRIES
        self.stop_deadline: float | None = None  # set once Jupyter asked for a shutdown
        self.standing_in = False  # the job cannot start: the relay answers cells with why
        self.terminate_reason: str | None = None
        self.parent = os.getppid()

    # -- the job ----------------------------------------------------------------------------
    def link_info(self) -> link.LinkInfo:
        return link.LinkInfo(host=socket.gethostname(), addresses=self.link_addresses,
                             port=self.listener.getsockname()[1], key=self.key.decode(),
                             signature_scheme=self.connection.get("signature_scheme", "hmac-sha256"),
                             stop_timeout=self.stop_timeout)

    def start_job(self) -> None:
        argv = list(self.launcher)
        if self.prelude:  # the site's set-up runs in the shell that then becomes the launcher
            argv = ["/bin/sh", "-c", f"{self.prelude}\nexec \"$@\"", "mpi-kernel-prelude", *argv]
        env = job_environment(self.launcher, os.environ)
        env[link.ENV] = self.link_info().to_env()
        if self.survive:
            env[guard.SURVIVE] = self.survive
        if self.survive == "srun" and not srun_overlaps(self.launcher):
            env[NO_RESPAWN] = ("srun was started without --overlap, so a replacement rank would wait "
                               "for ever for a job step (python -m mpi_kernel install --launcher slurm "
                               "writes --overlap)")
        log.info("starting the MPI job: %s", " ".join(argv))
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True,  # the launcher dies with us:
                                preexec_fn=functools.partial(guard.die_with_parent, self.end_signal))
        for pipe in (proc.stdout, proc.stderr):
            os.set_blocking(pipe.fileno(), False)
        self.job = Job(proc)

    def terminate_job(self, reason: str) -> None:
        """End the job on every host: MPI_Abort from the kernel rank, then the launcher's teardown."""
        job = self.job
        if job is None or job.proc.poll() is not None:
            return
        log.warning("ending the MPI job: %s", reason)
        if job.link is not None:
            try:
                link.send(job.link, self.key, "abort", reason=reason)
            except OSError:
                pass
            self._wait_exit(0.5)
        if job.proc.poll() is None:  # a launcher stuck or without the link: its own teardown
            _killpg(job.proc.pid, self.end_signal)
            self._wait_exit(2.0 if self.end_signal == signal.SIGKILL else 5.0)
        if job.proc.poll() is None and self.end_signal != signal.SIGKILL:
            _killpg(job.proc.pid, signal.SIGKILL)
            self._wait_exit(2.0)

    def _wait_exit(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.job.proc.poll() is None and time.monotonic() < deadline:
            self._read_output(0.02)
        self._read_output(0)

    # -- the main loop -------------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts come as messages
        guard.die_with_parent(signal.SIGTERM)  # Jupyter gone, even by SIGKILL
        self.start_job()  # first, so the ranks start up while this process does
        try:
            self.relay = _open_relay(self.context, self.connection)
            return self._loop()
        finally:
            self.terminate_job("the supervisor is exiting")
            if self.job is not None:
                self._clean_up(self.job)
            if self.relay is not None:
                self.relay.close()
            self.listener.close()
            self.context.term()

    @staticmethod
    def _clean_up(job: Job) -> None:
        """What the job's ranks on this host may have left: the kernel rank's folder, and
        shared memory no one maps. The guards sweep too, but the last two ranks to end can
        each see the other's mapping, and a launcher ended by SIGKILL takes the guards with
        it: ranks still ending may map them for a moment, so this looks again for up to 1 s."""
        remove_kernel_folder(job.hello)
        for _ in range(5):
            guard.sweep_shared_memory(job.started - 1.0)
            if not guard.segments_since(job.started - 1.0):
                break
            time.sleep(0.2)

    def _on_sigterm(self, signum: int, _frame: object) -> None:
        self.terminate_reason = "the supervisor got SIGTERM (Jupyter shut the kernel down or is gone)"

    def _loop(self) -> int:
        watched, poller = None, zmq.Poller()
        while True:
            items = [*self.relay.sockets(), *self._job_fds()]
            if items != watched:  # a new poller only when the set changes: not per message
                watched, poller = items, zmq.Poller()
                for item in items:
                    poller.register(item, zmq.POLLIN)
            for item, _ in poller.poll(100):
                self._on_ready(item)
            if self.terminate_reason is None and os.getppid() != self.parent:
                self.terminate_reason = "Jupyter is gone"
            stopping = self.stop_deadline is not None and time.monotonic() < self.stop_deadline
            if self.terminate_reason is not None and not stopping:  # an orderly stop may finish
                self.terminate_job(self.terminate_reason)  # (jupyter console exits right after
                return 0                                   # asking for it)
            if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
                self.terminate_job(f"the job did not end within {self._end_grace():.3g} s of "
                                   f"Jupyter's shutdown request")
            status = self._check_job()
            if status is not None:
                return status

    def _job_fds(self) -> list:
        job = self.job
        fds: list = [self.listener]
        if job is not None:
            fds += [p.fileno() for p in (job.proc.stdout, job.proc.stderr) if not p.closed]
            if job.link is not None:
                fds.append(job.link)
        return fds

    def _on_ready(self, item: object) -> None:
        if isinstance(item, zmq.Socket):
            for kind, detail in self.relay.forward(item):
                if kind == "shutdown":
                    self._on_shutdown(*detail)
        elif item == self.listener.fileno():  # zmq's poller gives back plain sockets as fds
            self._accept()
        elif self.job.link is not None and item == self.job.link.fileno():
            self._read_link()
        else:
            self._read_output(0)

    def _end_grace(self) -> float:
        """Seconds an orderly end of the job may take after Jupyter's shutdown request: the
        servers' stop, then MPI_Finalize, which takes longer the more ranks share the cores
        (2 s cut 16 ranks on 2 cores short now and then; with this, 16 ranks ended in 1.2 s
        and 64 in 3.1 s, both without an abort)."""
        hello = self.job.hello if self.job is not None else None
        ranks = len(hello["servers"]) + 1 if hello else 1
        return self.stop_timeout + 1.0 + 0.1 * max(ranks - (os.cpu_count() or 1), 0)

    def _on_shutdown(self, idents: list, header: dict, restart: bool) -> None:
        self.stop_deadline = time.monotonic() + self._end_grace()
        if not self.relay.attached:  # no kernel to answer: answer for it, and end the job now
            self.relay.reply_shutdown(idents, header, restart)
            self.stop_deadline = time.monotonic()
            self.terminate_reason = "Jupyter shut the kernel down while the job was starting"

    def _not_started(self, code: int | None) -> int | None:
        """The job ended before the kernel rank called back. A cause that starting again cannot
        cure (the kernel's own check of its world, or a known MPI_Init failure) is told in every
        cell until Jupyter restarts the kernel; otherwise the supervisor exits, and Jupyter's
        restarter may try again."""
        hints = [hint for text, hint in START_HINTS.items() if any(text in line for line in self.tail)]
        said = [line[line.index(CANNOT_START):] for line in self.tail if CANNOT_START in line]
        log.error("the MPI job ended before the kernel started (launcher exit %s); its output "
                  "is above%s", code, "".join(f". {hint}" for hint in hints))
        lines = [f"{deaths.ERROR_NAME}: the MPI job ended before the kernel started (launcher exit "
                 f"{code}); its output is in the Jupyter server's log.", *said, *hints]
        self.relay.fail_executing(deaths.ERROR_NAME, "the MPI job did not start", lines)
        if not (said or hints):
            return code or 1
        self.relay.stand_in(deaths.ERROR_NAME, "the MPI job cannot start", [
            *lines, "Fix the kernelspec (python -m mpi_kernel install ...), then restart the kernel."])
        self.standing_in = True
        return None

    def _check_job(self) -> int | None:
        """Handle a job that has ended; the exit status to return, or None to go on."""
        job = self.job
        if self.standing_in:
            return None
        if job.doomed is not None and time.monotonic() > job.doomed and job.proc.poll() is None:
            job.doomed = None
            dead = next(e for e in reversed(job.ended) if e.get("rank") != job.hello["rank"])
            self.terminate_job(f"server rank {dead.get('rank')} died, and {self.launcher_name} keeps "
                               f"the other ranks waiting for it")
        if job.proc.poll() is None and (job.hello is None or job.link is not None):
            return None  # starting, or running
        if job.proc.poll() is None:  # the kernel rank is gone but the launcher is not
            if self.stop_deadline is not None:
                return None  # the other ranks are finishing; the stop deadline still holds
            self._wait_exit(1.0)  # on one host the launcher ends the other ranks itself
            self.terminate_job("the kernel rank is gone")  # across hosts hydra would not
        self._read_output(0.3)  # the guards' last lines
        self._clean_up(job)
        code = job.proc.returncode
        if self.stop_deadline is not None:
            log.info("the MPI job ended (launcher exit %s)", code)
            return 0
        if job.hello is None and self.launch_retries and any(LAUNCH_RACE in line for line in self.tail):
            self.launch_retries -= 1
            log.warning("the launcher failed to start the job (Open MPI's PMIx listener race); "
                        "starting it again")
            self.tail.clear()
            self.start_job()
            return None
        if job.hello is None:
            return self._not_started(code)
        restarting = self.relaunch
        client_rank = job.hello.get("rank")
        ended = [e for e in job.ended if e not in job.survived] or job.ended
        first = min(ended, key=deaths.likeliest_cause) if ended else {}
        survivable = not job.survive and first.get("rank") not in (None, client_rank) and "abort" not in first
        hint = deaths.survival_hint(self.launcher_name) if survivable else None
        cause, lines = deaths.report(ended, code, client_rank, list(self.tail), restarting, hint)
        log.error("%s", "\n".join(lines))
        cells = self.relay.fail_executing(deaths.ERROR_NAME, cause, lines)
        log.info("the death was reported in %d running cell(s)", cells)
        self.relay.detach()
        if not restarting:
            return 1
        self.relay.publish_status("restarting")
        self.tail.clear()
        self.start_job()
        return None

    # -- the kernel rank's link --------------------------------------------------------------
    def _accept(self) -> None:
        try:
            sock, peer = self.listener.accept()
        except BlockingIOError:
            return
        if self.job.link is not None:
            log.warning("a second link connection from %s refused", peer)
            sock.close()
            return
        sock.setblocking(False)
        self.job.link, self.job.reader = sock, link.LineReader(sock, self.key)

    def _read_link(self) -> None:
        job = self.job
        try:
            messages, closed = job.reader.read()
        except link.LinkError as exc:
            log.warning("%s (from %s)", exc, job.link.getpeername())
            messages, closed = [], True
        for message in messages:
            if message["kind"] == "hello" and job.hello is None:
                self._on_hello(message)
        if closed:
            job.link.close()
            job.link = job.reader = None
            if job.hello is None:
                log.warning("a link connection closed before saying hello")

    def _on_hello(self, hello: dict) -> None:
        self.job.hello = hello
        # Under srun only MPICH goes on after a death (Open MPI's PMIx ends the step).
        library = hello.get("library", "")
        self.job.survive = None if self.survive == "srun" and "MPICH" not in library else self.survive
        self.relay.attach(hello["transport"], hello["ip"], hello["ports"], hello.get("curve_publickey"))
        log.info("kernel rank %s is up on %s (pid %s, %s %s%s, %s); servers: %s", hello["rank"],
                 hello["host"], hello["pid"], hello["transport"], hello["ip"],
                 ", CurveZMQ" if hello.get("curve_publickey") else "", library or "MPI",
                 ", ".join(f"{r} on {h} pid {p}" for r, (h, p) in sorted(hello["servers"].items(),
                                                                         key=lambda i: int(i[0]))))

    def _tell_kernel(self, job: Job, entry: dict) -> None:
        """A server died. In a job that survives it, the kernel rank fails its requests and
        goes on with the others (the guards see a death long before MPI would, if ever). In
        one that cannot, the job is ended soon, whether or not the launcher would end it."""
        if "abort" in entry and not job.aborting:  # MPI_Abort means the whole job, always
            job.aborting = True  # (every other rank's end follows: none of them is told)
            if self.survive:  # a launcher that keeps the others (Open MPI's ULFM does) is overruled
                self.terminate_job(f"rank {entry.get('rank')} called MPI_Abort")
            return
        if job.aborting or job.link is None or job.hello is None or entry.get("rank") == job.hello["rank"]:
            return  # (the kernel rank's own end: its link closes, and _check_job ends the job)
        if not job.survive:
            if job.doomed is None:  # (srun, for one, would keep the others waiting for ever)
                job.doomed = time.monotonic() + DOOMED_GRACE
            return
        log.warning("server rank %s on %s died; the job goes on without it", entry.get("rank"), entry.get("host"))
        try:
            link.send(job.link, self.key, "rank-ended", entry=entry)
            job.survived.append(entry)
        except OSError:
            pass  # the kernel rank is gone as well: the job's end is reported as usual

    # -- the job's output --------------------------------------------------------------------
    def _read_output(self, wait: float) -> None:
        """Pass the launcher's output on to ours; keep its tail; pick out the guards' lines."""
        job = self.job
        deadline = time.monotonic() + wait
        while True:
            got = False
            for pipe, out in ((job.proc.stdout, sys.stdout.buffer), (job.proc.stderr, sys.stderr.buffer)):
                if pipe.closed:
                    continue
                try:
                    data = os.read(pipe.fileno(), 65536)
                except BlockingIOError:
                    continue
                if not data:
                    if job.partial.get(pipe.fileno()):  # a last line without a newline
                        self._take_lines(job, pipe.fileno(), b"\n", out)
                    pipe.close()
                    continue
                got = True
                self._take_lines(job, pipe.fileno(), data, out)
            if not got and time.monotonic() >= deadline:
                return
            if not got:
                time.sleep(0.01)

    def _take_lines(self, job: Job, fd: int, data: bytes, out) -> None:
        *lines, job.partial[fd] = (job.partial.get(fd, b"") + data).split(b"\n")
        for raw in lines:
            text = raw.decode("utf-8", "replace")
            mark = text.find(guard.MARK)  # launchers may put their own text before it
            if mark >= 0:
                try:
                    entry = json.loads(text[mark + len(guard.MARK):])
                except ValueError:
                    continue
                job.ended.append(entry)
                self._tell_kernel(job, entry)
                continue
            out.write(raw + b"\n")
            if text.strip():
                self.tail.append(text)
        out.flush()


def single_host(launcher: list[str], environ: dict) -> bool:
    """True when the job surely runs on this host only: mpiexec/mpirun with no host options
    and no batch system or hostfile variables (srun and others: never sure)."""
    name = os.path.basename(launcher[0]) if launcher else ""
    if name not in ("mpiexec", "mpirun", "mpiexec.hydra"):
        return False
    options = {a.split("=", 1)[0] for a in launcher[1:]}
    return not options & HOST_OPTIONS and not any(v in environ for v in HOST_VARIABLES)


def survives_deaths(launcher: list[str]) -> str | None:
    """How the launcher line keeps the other ranks when one dies: "hydra" (MPICH's
    -disable-auto-cleanup), "ulfm" (Open MPI's --with-ft ulfm), "srun" (Slurm's srun without
    --kill-on-bad-exit: MPICH's ranks go on, Open MPI's not, which the supervisor learns
    from the kernel rank's hello), or None."""
    if any(arg in SURVIVE_OPTIONS for arg in launcher):
        return "hydra"
    pairs = zip(launcher, launcher[1:])
    if any(a == "--with-ft" and b == "ulfm" for a, b in pairs) or "--with-ft=ulfm" in launcher:
        return "ulfm"
    srun = srun_args(launcher)
    if srun is not None and not any(_kills_on_bad_exit(arg) for arg in srun):
        return "srun"
    return None


def srun_args(launcher: list[str]) -> list[str] | None:
    """srun's own options in the launcher line (also under salloc), or None without srun."""
    names = [os.path.basename(arg) for arg in launcher]
    if "srun" not in names:
        return None
    rest = launcher[names.index("srun") + 1:]
    end = next((i for i, arg in enumerate(rest) if not arg.startswith("-")), len(rest))
    return rest[:end]  # (options with a separate value stop it early: those are not looked for)


def srun_overlaps(launcher: list[str]) -> bool:
    return "--overlap" in (srun_args(launcher) or []) or os.environ.get("SLURM_OVERLAP") == "1"


def _kills_on_bad_exit(arg: str) -> bool:
    """Whether an srun option ends the step when a task dies (srun keeps it by default)."""
    name, _, value = arg.partition("=")
    if name == "--kill-on-bad-exit":
        return value != "0"
    return arg.startswith("-K") and arg[2:] != "0"  # -K, -K1 (-K0: keep the step)


def remove_kernel_folder(hello: dict | None) -> None:
    """Remove the kernel rank's private folder (its sockets) if it is on this host: a rank
    killed (or ended by MPI_Abort) cannot."""
    if not hello or hello.get("transport") != "ipc" or hello.get("host") != socket.gethostname():
        return
    folder = os.path.dirname(hello["ip"])
    if os.path.basename(folder).startswith(link.FOLDER_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)


def job_environment(launcher: list[str], environ: dict) -> dict:
    """The launcher's environment: Jupyter's pid left out (it means nothing on another host);
    for a job on this host only, MPICH's UCX listens on loopback instead of every interface
    (set MPI_KERNEL_LOOPBACK_ONLY=0 to keep UCX's default)."""
    env = {k: v for k, v in environ.items() if k != "JPY_PARENT_PID"}
    loopback = env.get("MPI_KERNEL_LOOPBACK_ONLY", "1") != "0"
    if loopback and single_host(launcher, env) and "UCX_NET_DEVICES" not in env:
        env["UCX_NET_DEVICES"] = "lo"
    return env


def _open_relay(context: zmq.Context, connection: dict):
    """Bind Jupyter's ports. jupyter_client's Session and the relay are imported here, not at
    the top: 0.15 s that the job's start-up overlaps (frontends retry until the ports answer)."""
    from jupyter_client.session import Session

    from .relay import Relay
    session = Session(key=connection.get("key", "").encode(),
                      signature_scheme=connection.get("signature_scheme", "hmac-sha256"))
    return Relay(context, connection, session)


def _own_addresses() -> list[str]:
    """How another host may reach this one: its names, then its non-loopback addresses."""
    names = [socket.gethostname(), socket.getfqdn()]
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        names += [i[4][0] for i in infos if not i[4][0].startswith("127.")]
    except OSError:
        pass
    return list(dict.fromkeys(names))


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the launcher leads its own session: its local helpers go too
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpi_kernel supervise", allow_abbrev=False,
                                     description="Run the MPI kernel's job for Jupyter (kernel.json "
                                                 "starts this).")
    parser.add_argument("-f", dest="connection_file", required=True, help="Jupyter's connection file")
    parser.add_argument("--prelude", help="shell commands run before the launcher, e.g. 'module load mpi'")
    parser.add_argument("--stop-timeout", type=float, default=1.0,
                        help="seconds the servers have to confirm a stop before the job is aborted")
    parser.add_argument("--link-address", help="address of this host that the kernel rank connects "
                                               "back to (default: this host's name and addresses)")
    parser.add_argument("--no-relaunch", action="store_true",
                        help="exit when the job dies instead of starting a new one")
    parser.add_argument("launcher", nargs=argparse.REMAINDER, help="-- then the launcher's argv")
    args = parser.parse_args(argv)
    launcher = args.launcher[1:] if args.launcher[:1] == ["--"] else args.launcher
    if not launcher:
        parser.error("give the launcher's argv after --, e.g. -- mpiexec -n 4 python -m mpi_kernel --kernel")
    logging.basicConfig(level=os.environ.get("MPI_KERNEL_SUPERVISOR_LOG", "INFO").upper(),
                        format="[mpi-kernel supervisor %(levelname)s %(asctime)s] %(message)s",
                        stream=sys.stderr)
    return Supervisor(args.connection_file, launcher, args.prelude, args.stop_timeout,
                      args.link_address, relaunch=not args.no_relaunch).run()
