"""Benchmarks of mpi-kernel against raw MPI and its peers: `python -m benchmarks`."""
