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
    from .framework.client import MPICommandClient
    from .framework.environment import abort
    if MPICommandClient().stop_services():
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
    from .jupyter import guard, link
    supervised = link.ENV in os.environ
    if supervised:  # a rank of a supervised job: a guard reports how it ends
        guard.guard()
    from . import framework
    from .errors import MPIEnvironmentError
    from .framework import usercomm
    try:
        env = framework.launch()
    except MPIEnvironmentError as exc:
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
