"""Pass a token around a ring of processes (point-to-point send and recv)."""
from mpi4py import MPI


def main():
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    size = comm.Get_size()
    if rank == 0:
        comm.send(1, dest=1 % size)
        token = comm.recv(source=size - 1)
        print(f"rank 0 of {size}: the token came back as {token}")
    else:
        token = comm.recv(source=rank - 1)
        print(f"rank {rank} of {size}: received {token}")
        comm.send(token * 2, dest=(rank + 1) % size)


if __name__ == "__main__":
    main()
