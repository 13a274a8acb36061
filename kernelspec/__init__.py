"""Kernelspec template and logos (installed as the package data `mpi_kernel.spec_template`)."""
