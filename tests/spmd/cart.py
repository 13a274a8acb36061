"""A periodic 1-D Cartesian topology; exchange with the neighbours found by Shift."""
from mpi4py import MPI

comm = MPI.COMM_WORLD
size = comm.Get_size()
cart = comm.Create_cart(dims=[size], periods=[True], reorder=False)
rank = cart.Get_rank()
left, right = cart.Shift(0, 1)
from_left = cart.sendrecv(rank, dest=right, source=left)
print(f"rank {rank}: left {left}, right {right}, got {from_left} from the left")
cart.Free()
