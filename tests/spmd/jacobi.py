"""1-D Jacobi iteration for u'' = 0 with u(0) = 0, u(1) = 1: halo exchange, allreduce to converge."""
import numpy as np
from mpi4py import MPI


def main():
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    n_local = 20
    u = np.zeros(n_local + 2)
    if rank == size - 1:
        u[-1] = 1.0                      # the right boundary
    left = rank - 1 if rank > 0 else MPI.PROC_NULL
    right = rank + 1 if rank < size - 1 else MPI.PROC_NULL
    for step in range(1, 200_000):
        comm.Sendrecv(u[1:2], dest=left, recvbuf=u[-1:], source=right)
        comm.Sendrecv(u[-2:-1], dest=right, recvbuf=u[0:1], source=left)
        if rank == size - 1:
            u[-1] = 1.0
        if rank == 0:
            u[0] = 0.0
        new = 0.5 * (u[:-2] + u[2:])
        change = comm.allreduce(float(np.abs(new - u[1:-1]).max()), op=MPI.MAX)
        u[1:-1] = new
        if change < 1e-6:
            break
    middle = comm.gather(float(u[n_local // 2]), root=0)
    if rank == 0:
        print(f"converged after {step} steps; u at each part's middle: {[round(m, 2) for m in middle]}")


if __name__ == "__main__":
    main()
