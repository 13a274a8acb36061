"""Compute pi by integrating 4 / (1 + x^2) over [0, 1]; combine the parts with reduce."""
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
size = comm.Get_size()

n = 1_000_000
h = 1.0 / n
local = 0.0
for i in range(rank, n, size):
    x = h * (i + 0.5)
    local += 4.0 / (1.0 + x * x)
local *= h

pi = comm.reduce(local, op=MPI.SUM, root=0)
if rank == 0:
    print(f"pi is about {pi:.12f}, with {size} processes")
