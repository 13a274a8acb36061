"""Write and install the MPI kernelspec: `python -m mpi_kernel install [...]`.

A chain of small functions, as in ipykernel: make the argv, make the kernel dict,
write the folder, install it with jupyter_client. No MPI is started here.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

from ..framework import protocol
from . import link

DEFAULT_NAME = "mpi"
DEFAULT_RANKS = 4


def default_mpiexec() -> str:
    """The mpiexec of this environment (the one that matches mpi4py), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    if local.exists():
        return str(local)
    return shutil.which("mpiexec") or "mpiexec"


@functools.lru_cache(maxsize=None)
def mpi_family(mpiexec: str) -> str | None:
    """"Open MPI" or "MPICH" (hydra), from `mpiexec --version`; None if it cannot say."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout + out.stderr
    return "Open MPI" if "Open MPI" in text else "MPICH" if "HYDRA" in text else None


def is_srun(mpiexec: str) -> bool:
    return os.path.basename(mpiexec) == "srun"


def launcher_flags(mpiexec: str, survive: bool | None = None, user_args: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Flags the launcher needs: Open MPI's mpiexec passes only the variables named with -x
    to other hosts (hydra and srun pass them all), so the kernel rank finds the supervisor.
    With `survive` the launcher keeps the other ranks when one dies, and the job goes on
    without it: MPICH's hydra with -disable-auto-cleanup (the default: None), Open MPI's with
    --with-ft ulfm (only when asked, True: under ULFM, MPI_Abort no longer ends every rank,
    so a rank stuck in C outlives the job's end; tests/kernel/test_kernel_lifecycle.py).
    srun: srun_flags."""
    if is_srun(mpiexec):
        return srun_flags(survive, user_args)
    family = mpi_family(mpiexec)
    if family == "Open MPI":
        return ("-x", link.ENV, "-x", protocol.SURVIVE, "--with-ft", "ulfm") if survive else ("-x", link.ENV)
    return ("-disable-auto-cleanup",) if survive is not False and family == "MPICH" else ()


def srun_flags(survive: bool | None = None, user_args: tuple[str, ...] = ()) -> tuple[str, ...]:
    """srun's flags for this environment's MPI: the PMI it speaks (MPICH's wheel pmi2, Open
    MPI's pmix; Slurm's default, none, gives each rank a world of its own), unless the
    user's arguments name one; --overlap, so that the job's step may share the CPUs of a step
    that holds them all (Jupyter's own, under batchspawner's srun), and a replacement's step
    those of the job. With MPICH a job survives a server's death unless `survive` is False
    (srun keeps the step without --kill-on-bad-exit). Open MPI's PMIx ends the step."""
    family = mpi_family(default_mpiexec())
    if survive and family != "MPICH":
        raise ValueError("under srun only MPICH keeps the other ranks when a server dies (Open MPI's "
                         "PMIx ends the whole step); leave out --survive, or use Open MPI's own "
                         "mpiexec --with-ft ulfm inside the allocation")
    flags = [] if any(a.startswith("--mpi") for a in user_args) else ["--mpi=pmix" if family == "Open MPI"
                                                                        else "--mpi=pmi2"]
    flags.append("--overlap")
    if family == "MPICH" and survive is not False:
        return tuple(flags)
    if any(a.startswith(("-K", "--kill-on-bad-exit")) for a in user_args):
        return tuple(flags)  # (the user's choice stays)
    return (*flags, "--kill-on-bad-exit=1")


def make_argv(ranks: int, mpiexec: str, mpiexec_args: list[str], python: str,
              supervisor_args: list[str] | None = None, survive: bool | None = None,
              salloc: list[str] | None = None) -> list[str]:
    """The supervisor on the Jupyter host, then the launcher line it runs (inside salloc,
    which asks Slurm for an allocation of `ranks` tasks first, when `salloc` is given)."""
    around = ["salloc", "-n", str(ranks), *salloc] if salloc is not None else []
    return [python, "-m", "mpi_kernel", "supervise", "-f", "{connection_file}", *(supervisor_args or []),
            "--", *around, mpiexec, *launcher_flags(mpiexec, survive, tuple(mpiexec_args)), *mpiexec_args,
            "-n", str(ranks), python, "-m", "mpi_kernel", "--kernel"]


def supervisor_args(prelude: str | None = None, stop_timeout: float | None = None,
                    link_address: str | None = None) -> list[str]:
    args = []
    if prelude:
        args += ["--prelude", prelude]
    if stop_timeout is not None:
        args += ["--stop-timeout", f"{stop_timeout:g}"]
    if link_address:
        args += ["--link-address", link_address]
    return args


def make_kernel_dict(ranks: int = DEFAULT_RANKS, mpiexec: str | None = None,
                     mpiexec_args: list[str] | None = None, display_name: str | None = None,
                     env: dict[str, str] | None = None, python: str | None = None,
                     prelude: str | None = None, stop_timeout: float | None = None,
                     link_address: str | None = None, survive: bool | None = None,
                     salloc: list[str] | None = None) -> dict:
    """kernel.json's content, from the template in kernelspec/."""
    template = json.loads(resources.files("mpi_kernel.spec_template").joinpath("kernel.json").read_text())
    template["argv"] = make_argv(ranks, mpiexec or default_mpiexec(), mpiexec_args or [],
                                 python or sys.executable,
                                 supervisor_args(prelude, stop_timeout, link_address), survive, salloc)
    template["display_name"] = display_name or template["display_name"].replace("{ranks}", str(ranks))
    template["env"] = dict(env or {})
    return template


def write_kernel_spec(path: Path, kernel: dict) -> Path:
    """Write kernel.json and the logos into `path`."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "kernel.json").write_text(json.dumps(kernel, indent=2) + "\n")
    for logo in ("logo-32x32.png", "logo-64x64.png"):
        (path / logo).write_bytes(resources.files("mpi_kernel.spec_template").joinpath(logo).read_bytes())
    return path


def install(name: str = DEFAULT_NAME, user: bool = False, prefix: str | None = None,
            **kernel_options: object) -> str:
    """Install the kernelspec; return the folder it went to."""
    if not re.fullmatch(r"[a-zA-Z0-9._-]+", name):
        raise ValueError(f"kernel name {name!r} may only hold letters, digits, '.', '_' and '-'")
    with tempfile.TemporaryDirectory() as tmp:
        source = write_kernel_spec(Path(tmp) / name, make_kernel_dict(**kernel_options))  # type: ignore[arg-type]
        return KernelSpecManager().install_kernel_spec(str(source), name, user=user, prefix=prefix)


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--env takes KEY=VALUE, got {text!r}")
    return key, value


def _ranks(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ranks takes a whole number, got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"--ranks must be at least 2 (1 client + 1 server), got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpi_kernel install", allow_abbrev=False,
                                     description="Install the MPI kernelspec for Jupyter.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user only")
    where.add_argument("--sys-prefix", action="store_true", help=f"install into {sys.prefix}")
    where.add_argument("--prefix", help="install under this prefix (share/jupyter/kernels)")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"kernelspec name (default {DEFAULT_NAME})")
    parser.add_argument("--display-name", help="name shown in Jupyter (default shows the rank count)")
    parser.add_argument("--ranks", type=_ranks, default=DEFAULT_RANKS,
                        help=f"MPI processes: 1 client + N-1 servers (default {DEFAULT_RANKS})")
    parser.add_argument("--launcher", choices=("mpiexec", "slurm"), default="mpiexec",
                        help="mpiexec (default), or slurm: srun with the flags this environment's "
                             "MPI needs (MPICH: --mpi=pmi2; Open MPI: --mpi=pmix), run "
                             "inside an allocation (salloc, sbatch, a batch spawner) or with --salloc")
    parser.add_argument("--salloc", metavar="ARGS", default=None,
                        help='with --launcher slurm: ask for an allocation first, e.g. '
                             '--salloc="-N 2 -t 1:00:00 -p debug" (the kernel waits in the queue)')
    parser.add_argument("--mpiexec", default=None,
                        help="launcher, e.g. srun (default: the mpiexec of this environment, or srun "
                             "with --launcher slurm)")
    parser.add_argument("--mpiexec-args", default="",
                        help='extra launcher arguments, e.g. "-f hostfile"; write '
                             '--mpiexec-args="--mpi=pmix" when they start with a dash')
    parser.add_argument("--env", type=_env_pair, action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for the kernel (repeatable)")
    parser.add_argument("--prelude", help="shell commands run before the launcher, e.g. "
                                          "'module load openmpi' (as sites' kernel helper scripts do)")
    parser.add_argument("--stop-timeout", type=float, default=None,
                        help="seconds the servers have to confirm a stop before the job is aborted "
                             "(default 1)")
    parser.add_argument("--link-address", help="address of the Jupyter host that the kernel rank "
                                               "connects back to (default: the host's name)")
    survive = parser.add_mutually_exclusive_group()
    survive.add_argument("--survive", dest="survive", action="store_true", default=None,
                         help="when a server dies, the job goes on without it: the default with "
                              "MPICH (its mpiexec, or srun); with Open MPI's mpiexec it adds --with-ft "
                              "ulfm (experimental)")
    survive.add_argument("--no-survive", dest="survive", action="store_false",
                         help="when a server dies, end and restart the whole job, as with other launchers")
    args = parser.parse_args(argv)
    if args.salloc is not None and args.launcher != "slurm":
        parser.error("--salloc needs --launcher slurm")
    mpiexec = args.mpiexec or ("srun" if args.launcher == "slurm" else default_mpiexec())
    if os.sep in mpiexec and not os.access(mpiexec, os.X_OK):
        parser.error(f"--mpiexec {mpiexec} is not an executable file")
    if os.sep not in mpiexec and shutil.which(mpiexec) is None:
        print(f"warning: {mpiexec} is not on PATH here; the kernel will fail to start unless it "
              f"is on the PATH Jupyter runs with", file=sys.stderr)
    prefix = sys.prefix if args.sys_prefix else args.prefix
    try:
        path = install(args.name, user=args.user, prefix=prefix, ranks=args.ranks, mpiexec=mpiexec,
                       mpiexec_args=shlex.split(args.mpiexec_args), display_name=args.display_name,
                       env=dict(args.env), prelude=args.prelude, stop_timeout=args.stop_timeout,
                       link_address=args.link_address, survive=args.survive,
                       salloc=shlex.split(args.salloc) if args.salloc is not None else None)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"Installed kernelspec {args.name} in {path}")
    return 0
