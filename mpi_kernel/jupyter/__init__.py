"""The Jupyter side of mpi-kernel, kept apart from the command framework.

    supervisor.py  the process Jupyter starts: binds the connection file's ports on the
                   Jupyter host, starts and owns the MPI job, reports its death in the cell
    relay.py       relays Jupyter's five channels to the kernel rank, wherever it runs
    link.py        the signed line protocol between the kernel rank and the supervisor
    guard.py       a small parent of every rank that reports how the rank died
    kernel.py      the IPython kernel on the client rank (the top rank)
    kernelspec.py  kernel.json and the installer

Nothing in mpi_kernel's framework modules imports from here.
"""
