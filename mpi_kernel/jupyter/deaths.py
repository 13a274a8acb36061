"""Words for a job that died: which ranks, where, how, and what they printed last (pure)."""
from __future__ import annotations

import re
import signal

HINTS = {
    signal.SIGKILL: "out of memory, or killed by the batch system?",
    signal.SIGSEGV: "a crash in C or Fortran code",
    signal.SIGBUS: "a crash in C or Fortran code (bad memory access)",
    signal.SIGFPE: "an arithmetic error in C or Fortran code",
    signal.SIGABRT: "abort() in C code: a failed assertion?",
    signal.SIGTERM: "terminated: the batch system's time limit, or a user?",
}
ERROR_NAME = "MPIJobDied"
# Launcher banners that name the wrong process (hydra names whichever rank it saw first,
# with the signal it sent itself) and ipykernel's note on plain TCP: kept in the kernel
# log, left out of the cell.
NOISE = re.compile(r"^(=+|=   .*|YOUR APPLICATION TERMINATED WITH THE EXIT STRING.*|This typically "
                   r"refers to a problem with your application\.|Please see the FAQ page for "
                   r"debugging suggestions|\[IPKernelApp\] WARNING \| Kernel is running over TCP.*)$")


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def how(entry: dict) -> str:
    """'killed by signal 9 (SIGKILL): out of memory, ...?' or 'exited with code 3'."""
    if "signal" in entry:
        number = entry["signal"]
        hint = HINTS.get(number)
        return f"killed by signal {number} ({signal_name(number)})" + (f": {hint}" if hint else "")
    code = entry.get("code")
    if "abort" in entry:  # the rank said so itself (mpi_kernel.framework.usercomm)
        return f"called MPI_Abort with errorcode {code} ({entry['abort']})"
    return f"exited with code {code}" + (" (MPI_Abort, sys.exit or os._exit?)" if code else "")


def who(entry: dict, client_rank: int | None) -> str:
    rank = entry.get("rank")
    if rank is None:
        name = "a rank"
    elif rank == client_rank:
        name = f"the kernel's own rank {rank}"
    else:
        name = f"server rank {rank}"
    return f"{name} on {entry.get('host', '?')} (pid {entry.get('pid', '?')})"


def summary(ended: list[dict], launcher_code: int | None, client_rank: int | None,
            launcher: str = "the launcher") -> str:
    """One sentence: the first rank that ended is the cause; the others follow it."""
    if not ended:
        if launcher_code is None:
            return f"the MPI job ended without a rank reporting why; {launcher} is still running"
        if launcher_code > 0:  # the launchers end every rank, guards too, on MPI_Abort
            return (f"a rank called MPI_Abort with errorcode {launcher_code}, or {launcher} failed "
                    f"(it exited with code {launcher_code}; no rank reported its own end)")
        return f"the MPI job ended without a rank reporting why; {launcher} {how(_launcher_entry(launcher_code))}"
    # Reports come in no reliable order (across hosts a bystander's can come first), so the
    # cause is the likeliest: a rank that said it aborts, one killed by a signal, one that exited with an error
    # (ranks whose MPI lost a peer exit so), then one the launcher terminated (SIGTERM).
    ended = sorted(ended, key=likeliest_cause)
    first, rest = ended[0], ended[1:]
    text = f"{who(first, client_rank)} {how(first)}"
    if rest:  # what the launcher or MPI did to the others once the first had gone
        text += "; then " + ", ".join(f"rank {e.get('rank')} on {e.get('host')} ({_short(e)})" for e in rest)
    return text


def likeliest_cause(entry: dict) -> int:
    if "abort" in entry:  # a rank that called Abort is the cause of every other end
        return -1
    if "signal" in entry:
        return 2 if entry["signal"] == signal.SIGTERM else 0
    return 1


def _short(entry: dict) -> str:
    return signal_name(entry["signal"]) if "signal" in entry else f"exit code {entry.get('code')}"


def _launcher_entry(code: int) -> dict:
    # Popen gives -N for a launcher killed by signal N.
    return {"signal": -code} if code < 0 else {"code": code}


DIED_NAME = "MPIRankDied"


def survived(entry: dict, client_rank: int | None) -> str:
    """The error of the requests a dead server had, when the job goes on without it: the
    last line names the exception, as a Python traceback's does."""
    rank = entry.get("rank")
    return (f"Only rank {rank}'s variables are lost: the notebook's and the other servers' are kept, "
            f"and later cells run on the servers that are left. %mpi_restart_dead starts a new "
            f"rank {rank}, with empty variables.\n{DIED_NAME}: {who(entry, client_rank)} {how(entry)}\n")


NO_SURVIVAL = ("This job's launcher does not keep the other ranks when a server dies: MPICH's "
               "mpiexec does with -disable-auto-cleanup (python -m mpi_kernel install writes it, "
               "unless --no-survive), Open MPI's with --with-ft ulfm (install --survive).")
NO_SURVIVAL_SRUN = ("Under srun the other ranks go on after a server's death only with MPICH and "
                    "without --kill-on-bad-exit (python -m mpi_kernel install --launcher slurm writes "
                    "that line); Open MPI's PMIx ends the whole step.")


def survival_hint(launcher: str) -> str:
    """What would have kept the other ranks, for a job that ended over a server's death."""
    return NO_SURVIVAL_SRUN if launcher == "srun" else NO_SURVIVAL


def report(ended: list[dict], launcher_code: int | None, client_rank: int | None,
           tail: list[str], restarting: bool, hint: str | None = None) -> tuple[str, list[str]]:
    """(evalue, traceback lines) for the cell's error and the kernel log. `hint`: for a job
    that ended over a server's death, what would have kept the other ranks."""
    cause = summary(ended, launcher_code, client_rank)
    lines = [f"{ERROR_NAME}: the MPI job died: {cause}.",
             "Every rank's variables are lost." + (f" {hint}" if hint else "")]
    tail = [t for t in tail if not NOISE.match(t)]
    if tail:
        lines += ["", "The job's last output (outside cells):", *(f"    {t}" for t in tail)]
    lines += ["", "The supervisor is starting a new MPI job; run the notebook's set-up cells again."
              if restarting else "The kernel has stopped; Jupyter's restarter may start a new one."]
    return cause, lines
