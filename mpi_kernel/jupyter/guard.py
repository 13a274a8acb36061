"""A small parent for each rank of a supervised job, which says how the rank ended.

A rank killed by SIGKILL (the OOM killer), a segfault or os._exit cannot report itself,
and the launchers' own messages name the wrong process or none. So each rank forks
before MPI starts: the child is the rank; the parent, on the same host, waits for it and
writes one line to the launcher's stderr when it ends abnormally:

    mpi-kernel-rank-ended {"rank": 1, "host": "hostB", "pid": 4242, "signal": 9}

The supervisor reads these lines from the launcher's output. Then the guard ends as its
rank did (same signal or exit code), so the launcher sees what it would have seen; but when
the job is to survive a rank's death (SURVIVE set: MPICH's `mpiexec -disable-auto-cleanup`),
it exits with 128 + the signal instead, because hydra's proxy kills all its local ranks when
one of its children dies by a signal, and it ignores the SIGUSR1 hydra then sends each rank's
process group as the failure notice. Under Open MPI's `--with-ft ulfm` (SURVIVE "ulfm") it is
the other way round: a non-zero exit becomes SIGKILL, which that launcher survives.
Signals the launcher sends the guard go on to the rank, and the rank never outlives its
guard (PR_SET_PDEATHSIG). Only Linux has that; elsewhere ranks run unguarded.

Once its rank has ended, the guard also removes the MPICH shared-memory segments of this
host that nobody maps any more (sweep_shared_memory): a killed rank cannot, and segments made
for a world rebuilt after a death were left by no one in particular (two per three restarts
here), 2 MB each, until the host reboots.
"""
from __future__ import annotations

import ctypes
import glob
import json
import os
import signal
import socket
import sys
import time

from ..framework import protocol  # (pure: no MPI, which must not start before the fork)

MARK = "mpi-kernel-rank-ended "
RANK_VARIABLE = "MPI_KERNEL_RANK"  # a replacement's rank in the job (PMI_RANK is among its own kind)
RANK_VARS = (RANK_VARIABLE, "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGCONT, signal.SIGTSTP)
PR_SET_PDEATHSIG = 1
SURVIVE = protocol.SURVIVE  # set by the supervisor for a launcher that keeps the survivors


def launcher_rank(environ: dict | None = None) -> int | None:
    """The rank the launcher gave this process, from its environment (MPI is not up yet)."""
    environ = os.environ if environ is None else environ
    for name in RANK_VARS:
        if environ.get(name, "").isdigit():
            return int(environ[name])
    return None


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send `sig` to this process when its parent ends; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def record(status: int, rank: int | None, pid: int) -> dict | None:
    """What to report for a waitpid() status; None for a clean exit."""
    entry = {"rank": rank, "host": socket.gethostname(), "pid": pid}
    if os.WIFSIGNALED(status):
        return {**entry, "signal": os.WTERMSIG(status)}
    code = os.waitstatus_to_exitcode(status)
    return {**entry, "code": code} if code else None


def abort_line(entry: dict) -> str:
    """The line a rank of a supervised job writes when it calls MPI_Abort itself (the
    framework's usercomm.abort_line while supervised): the supervisor reads it like ours."""
    return MARK + json.dumps(entry)


SEGMENTS = "/dev/shm/mpich_shm_*"


def mapped_segments() -> set[str] | None:
    """The MPICH segments some live process of this host maps; None if that cannot be read."""
    names: set[str] = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as maps:
                names.update(line.split()[-1] for line in maps if "/dev/shm/mpich_shm_" in line)
        except OSError:  # ended meanwhile, or another user's
            continue
    return names


def segments_since(since: float, before: float = float("inf")) -> list[str]:
    """This user's MPICH segments made since `since` (and before `before`)."""
    found = []
    for name in glob.glob(SEGMENTS):
        try:
            info = os.stat(name)
        except OSError:
            continue
        if info.st_uid == os.getuid() and since <= info.st_ctime < before:
            found.append(name)
    return found


SETTLED = 1.0  # seconds a segment must have existed before the scan: a new one is not yet mapped


def sweep_shared_memory(since: float) -> list[str]:
    """Unlink this user's MPICH segments made since `since` (the guard's start) that no live
    process maps: garbage of this job. Returns them. Only segments older than the scan of
    the mappings by SETTLED: one made meanwhile (a restart's world, while a guard sweeps after
    the death it replaces) may not be mapped yet, and unlinking it hung that restart."""
    scanned = time.time()
    mapped = mapped_segments()
    if mapped is None:
        return []
    swept = []
    for name in segments_since(since, before=scanned - SETTLED):
        if name not in mapped:
            try:
                os.unlink(name)
                swept.append(name)
            except OSError:  # another guard was first
                continue
    return swept


def guard() -> None:
    """Fork; return in the child, which goes on to be the rank. The parent never returns."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        if os.environ.get(SURVIVE):
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        die_with_parent()
        if os.getppid() != parent:  # the guard ended before prctl took effect
            os._exit(1)
        return
    _wait_and_report(pid)


def _wait_and_report(pid: int) -> None:
    # The guard keeps its copies of the launcher's descriptors (the PMI socket): a launcher
    # that sees the PMI socket close ends the job at once, before this report is written.
    survive = os.environ.get(SURVIVE)  # "hydra", "ulfm" (the supervisor's survives_deaths) or None
    for sig in FORWARDED:
        if survive and sig == signal.SIGUSR1:
            signal.signal(sig, signal.SIG_IGN)
        else:
            signal.signal(sig, lambda signum, _frame: _forward(pid, signum))
    started = time.time() - 1.0  # (ctime has the file system's granularity)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    entry = record(status, launcher_rank(), pid)
    if entry is not None:
        os.write(2, (MARK + json.dumps(entry) + "\n").encode())
    sweep_shared_memory(started)
    if os.WIFSIGNALED(status) and survive == "hydra":
        os._exit(128 + os.WTERMSIG(status))
    if not os.WIFSIGNALED(status) and status and survive == "ulfm":
        # Open MPI's launcher aborts the whole job when a rank exits non-zero, but under ULFM
        # it survives a rank killed by a signal.
        os.kill(os.getpid(), signal.SIGKILL)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those cannot be caught anyway
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _forward(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
