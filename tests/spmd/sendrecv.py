"""Shift NumPy buffers one rank to the right with Sendrecv (no deadlock)."""
import numpy as np
from mpi4py import MPI


def main():
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    send = np.full(3, rank, dtype="i")
    recv = np.empty(3, dtype="i")
    comm.Sendrecv(send, dest=(rank + 1) % size, recvbuf=recv, source=(rank - 1) % size)
    print(f"rank {rank} got {recv.tolist()} from rank {(rank - 1) % size}")


if __name__ == "__main__":
    main()
