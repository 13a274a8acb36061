"""One-sided communication: each rank puts its rank into its right neighbour's window."""
import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
memory = np.zeros(1, dtype="i")
win = MPI.Win.Create(memory, comm=comm)
win.Fence()
win.Put(np.array([rank], dtype="i"), target_rank=(rank + 1) % size)
win.Fence()
print(f"rank {rank}: window holds {int(memory[0])}")
win.Free()
