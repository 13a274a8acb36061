"""Split the world into even and odd ranks; reduce within each part."""
from mpi4py import MPI

world = MPI.COMM_WORLD
rank = world.Get_rank()
color = rank % 2
part = world.Split(color, key=rank)
total = part.allreduce(rank, op=MPI.SUM)
print(f"world rank {rank}: {'even' if color == 0 else 'odd'} part, rank {part.Get_rank()} "
      f"of {part.Get_size()}, sum of world ranks {total}")
part.Free()
