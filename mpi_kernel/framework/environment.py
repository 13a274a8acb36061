"""MPI initialisation, world checks and the client/server split.

The client is the top rank (N-1) and ranks 0..N-2 are servers, as in the
mpi4casa guide (section 5.2). Every rank must call `launch()` once, because
creating the framework's communicators is collective; then `usercomm.install` gives
user code its world (mpi_kernel.framework.launch does both).
"""
from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time

import mpi4py

mpi4py.rc.thread_level = "multiple"  # must be set before MPI is imported
from mpi4py import MPI  # noqa: E402

from ..errors import MPIEnvironmentError  # noqa: E402

_LEVELS = {MPI.THREAD_SINGLE: "MPI_THREAD_SINGLE", MPI.THREAD_FUNNELED: "MPI_THREAD_FUNNELED",
           MPI.THREAD_SERIALIZED: "MPI_THREAD_SERIALIZED", MPI.THREAD_MULTIPLE: "MPI_THREAD_MULTIPLE"}
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "HYDRA_CONTROL_FD",
                  "SLURM_PROCID")


@dataclasses.dataclass(frozen=True)
class MPIEnvironment:
    world: MPI.Comm       # COMM_WORLD, for user code
    framework: MPI.Comm   # private Dup: framework traffic only
    bcast: MPI.Comm       # private Dup: broadcasts from the client (broadcast.py)
    servers: MPI.Comm     # servers-only communicator (COMM_NULL on the client)
    rank: int
    size: int
    host: str
    library: str
    local_size: int       # ranks on this host

    @property
    def cores(self) -> int:
        """Cores this process may run on."""
        return len(os.sched_getaffinity(0))

    @property
    def oversubscribed(self) -> bool:
        """More ranks on this host than cores: spinning ranks would starve each other."""
        return self.local_size > self.cores

    @property
    def client_rank(self) -> int:
        return self.size - 1

    @property
    def server_ranks(self) -> list[int]:
        return list(range(self.size - 1))

    @property
    def is_client(self) -> bool:
        return self.rank == self.client_rank

    @property
    def origin(self) -> str:
        """Log origin, as in the guide: host:MPIClient or host:MPIServer-N."""
        role = "MPIClient" if self.is_client else f"MPIServer-{self.rank}"
        return f"{self.host}:{role}"


_current: MPIEnvironment | None = None


def library_name() -> str:
    return MPI.Get_library_version().splitlines()[0].strip()


def check_world(provided: int, size: int, library: str) -> None:
    """Raise MPIEnvironmentError if this world cannot host a client and servers."""
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if provided < MPI.THREAD_MULTIPLE:
        raise MPIEnvironmentError(
            f"mpi-kernel needs MPI_THREAD_MULTIPLE, but {library} granted only "
            f"{_LEVELS.get(provided, provided)}. Install an MPI built with thread support, "
            f"for example `pip install mpich` into this environment.")
    if size >= 2:
        return
    launched = [v for v in _LAUNCHER_VARS if v in os.environ]
    library = " ".join(library.split(",")[0].split())  # "Open MPI v5.0.11", "MPICH Version: 5.0.2"
    if "SLURM_PROCID" in launched:
        hint = (f"srun started this process (SLURM_PROCID is set), but with a PMI that {library} "
                f"does not speak, so each process starts its own world of size 1. MPICH's wheel needs "
                f"srun --mpi=pmi2, Open MPI's srun --mpi=pmix; `srun --mpi=list` shows what this "
                f"Slurm offers (python -m mpi_kernel install --launcher slurm writes the right one)")
    elif launched:
        hint = (f"This process was started by a launcher ({', '.join(launched)} is set), so that "
                f"mpiexec probably belongs to another MPI than the one mpi4py uses ({library}): each "
                f"process then starts its own world of size 1. Use the matching launcher: {mpiexec}")
    else:
        hint = f"Start it with an MPI launcher, e.g. {mpiexec} -n 4 {sys.executable} -m mpi_kernel ..."
    raise MPIEnvironmentError(
        f"mpi-kernel needs at least 2 MPI processes (1 client + 1 or more servers), but the MPI "
        f"world has size {size}. {hint}")


def launch() -> MPIEnvironment:
    """Initialise MPI on this rank and build the framework communicators (collective)."""
    if _current is not None:
        return _current
    check_world(MPI.Query_thread(), MPI.COMM_WORLD.Get_size(), library_name())
    return build(MPI.COMM_WORLD)


def build(world: MPI.Intracomm) -> MPIEnvironment:
    """Make the framework's communicators over `world` (collective over it) and make them
    this process's environment: at start-up, and over the world rebuilt after a rank's
    death (respawn.py), where every rank keeps its number."""
    global _current
    library = library_name()
    rank, size = world.Get_rank(), world.Get_size()
    framework = world.Dup()
    framework.Set_name("mpi_kernel.framework")
    bcast = world.Dup()
    bcast.Set_name("mpi_kernel.bcast")
    servers = world.Split(MPI.UNDEFINED if rank == size - 1 else 0, rank)
    if servers != MPI.COMM_NULL:
        servers.Set_name("the servers' world")
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    local_size = node.Get_size()
    node.Free()
    _current = MPIEnvironment(world, framework, bcast, servers, rank, size, socket.gethostname(), library,
                              local_size)
    return _current


def current() -> MPIEnvironment:
    """The environment set up by `launch()`; a clear error if this process was not launched."""
    if _current is None:
        raise MPIEnvironmentError(
            "mpi-kernel is not running in this process. Start the job with its launcher, e.g. "
            f"mpiexec -n 4 {sys.executable} -m mpi_kernel script.py, so that the other ranks "
            "serve commands.")
    return _current


# Ranks of this job whose processes ended while it went on (the client's monitor heard of
# them, or told this server): MPI_Finalize would wait for them for ever (MPICH).
lost_ranks: set[int] = set()


def exit_process(code: int) -> None:
    """End this rank with `code`: normally (MPI_Finalize at exit) while the world is whole;
    once a rank was lost, after the atexit handlers but without MPI_Finalize (mpi4py calls
    it after them, from Py_AtExit), which MPICH would never finish. Open MPI's ULFM does
    finish it (50-400 ms) and its launcher wants it, but it hung in 2 of ~20 runs
    (../shared/reference/fault-tolerance/): an alarm ends a Finalize that hangs."""
    if not lost_ranks:
        sys.exit(code)
    if "Open MPI" in library_name():
        import signal
        signal.alarm(3)
        sys.exit(code)
    import atexit
    atexit._run_exitfuncs()
    release_shared_memory()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def release_shared_memory() -> None:
    """Unlink the MPICH shared-memory segments this process maps (/dev/shm/mpich_shm_*), for a
    rank that ends without MPI_Finalize, which is what unlinks them: else each job that lost
    a rank or aborted leaves them in the host's memory until it reboots (2 MB each here; a
    thousand of them made MPICH's next start fail with "Out of memory"). The processes that
    still map them keep their memory; new communicators make segments of their own."""
    try:
        with open("/proc/self/maps") as maps:
            names = {line.split()[-1] for line in maps if "/dev/shm/mpich_shm_" in line}
    except OSError:  # not Linux
        return
    for name in names:
        try:
            os.unlink(name)
        except OSError:  # another rank of this host was first
            pass


def let_launcher_forward() -> None:
    """Flush, then wait a moment before an MPI_Abort: the launcher reads our output from a
    pipe, and its teardown after the abort can kill the forwarder before it has passed on the
    last lines, which say why the job ends (CI lost them twice)."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(0.2)


def abort(code: int = 1) -> None:
    """End the whole job on every host (MPI_Abort), when an orderly stop cannot work: the
    launchers do not end ranks on other hosts when one rank just exits."""
    let_launcher_forward()
    release_shared_memory()
    (_current.world if _current is not None else MPI.COMM_WORLD).Abort(code)
