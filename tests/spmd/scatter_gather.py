"""Scatter rows of a NumPy array, square them, gather the result on rank 0."""
import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
size = comm.Get_size()

data = None
if rank == 0:
    data = np.arange(size * 4, dtype="d").reshape(size, 4)
row = np.empty(4, dtype="d")
comm.Scatter(data, row, root=0)
print(f"rank {rank} has row {row.tolist()}")
row **= 2
result = np.empty((size, 4), dtype="d") if rank == 0 else None
comm.Gather(row, result, root=0)
if rank == 0:
    print(f"gathered sum {result.sum():.0f}")
