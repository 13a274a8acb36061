"""`python -m mpi_kernel`: what each rank does.

    mpiexec -n N python -m mpi_kernel script.py [args]   run a script on the client
    mpiexec -n N python -m mpi_kernel -c CODE [args]     run code on the client
    mpiexec -n N python -m mpi_kernel -m MODULE [args]   run a module on the client
    python -m mpi_kernel supervise -f CONNECTION_FILE -- LAUNCHER...
                                                         what kernel.json starts: the supervisor
                                                         (jupyter/supervisor.py), which launches
    LAUNCHER -n N python -m mpi_kernel --kernel          the Jupyter kernel on the client
    mpiexec -n N python -m mpi_kernel -f CONNECTION_FILE the kernel without a supervisor (one host)
    python -m mpi_kernel install [...]                   write a kernelspec (no MPI needed)

Ranks 0..N-2 serve commands; the top rank runs the script, code or kernel, and
stops the servers when it ends, so the job exits with the client's status.
"""
from __future__ import annotations

import os
import runpy
import sys
import traceback

USAGE = __doc__.split("\n\n")[1]


def _run_client(argv: list[str]) -> int:
    """Run the script or code as __main__; return its exit status."""
    from .framework import logs
    logs.configure_console(os.environ.get("MPI_KERNEL_LOG_LEVEL", "WARNING").upper())
    try:
        if argv[0] in ("-c", "-m") and len(argv) < 2:
            print(f"error: {argv[0]} needs an argument\n{USAGE}", file=sys.stderr)
            return 2
        if argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        elif argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _stop_servers() -> None:
    from .framework.environment import abort
    try:
        from .framework.client import MPICommandClient
        stuck = MPICommandClient().stop_services()
    except BaseException:  # (a client that cannot even stop them: the servers would wait for ever)
        traceback.print_exc()
        stuck = True
    if stuck:
        abort(1)  # stuck servers would keep the job (and other hosts' ranks) alive for ever


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "install":
        from .jupyter.kernelspec import main as install
        return install(argv[1:])
    if argv and argv[0] == "supervise":
        from .jupyter.supervisor import main as supervise
        return supervise(argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 2
    # Nothing may load MPI before the guard forks (mpi4py's import initialises it): so
    # protocol (pure), not respawn, says how a replacement is started.
    from .framework.protocol import REPLACEMENT
    from .jupyter import guard, link
    replaces = [int(r) for r in argv[1].split(",")] if argv[0] == REPLACEMENT and len(argv) > 1 else None
    if replaces is not None:  # a replacement for dead servers (respawn.py): their rank numbers
        index = guard.launcher_rank({k: v for k, v in os.environ.items() if k != guard.RANK_VARIABLE})
        os.environ[guard.RANK_VARIABLE] = str(replaces[index or 0])
    supervised = link.ENV in os.environ
    if supervised:  # a rank of a supervised job: a guard reports how it ends
        guard.guard()
    from . import framework
    from .errors import MPIEnvironmentError
    from .framework import respawn, usercomm
    try:
        env = respawn.join(replaces) if replaces is not None else framework.launch()
    except MPIEnvironmentError as exc:
        if guard.launcher_rank() in (None, 0):  # once per job, not once per rank
            print(f"mpi_kernel: error: {exc}", file=sys.stderr)
        return 2
    if supervised:  # a user's MPI_Abort is reported in the guard's words
        usercomm.abort_line = guard.abort_line
    if not env.is_client:
        from .framework.server import MPICommandServer
        from .jupyter.cells import CellRunner
        MPICommandServer.cell_runner = CellRunner  # %%px cells: IPython's, from the layer above
        MPICommandServer().serve()
        return 0
    try:
        if argv[0] in ("-f", "--kernel"):
            from .jupyter.kernel import main as kernel_main
            return kernel_main(argv)
        return _run_client(argv)
    finally:
        _stop_servers()


def _exit(code: int) -> None:
    """Exit with `code`; a rank of a job that lost a rank skips MPI_Finalize (environment.py).
    Looked up, not imported: the supervisor and the installer never load MPI."""
    environment = sys.modules.get("mpi_kernel.framework.environment")
    if environment is None:
        sys.exit(code)
    environment.exit_process(code)


if __name__ == "__main__":
    _exit(main())
