"""Splitting for scatter and joining for gather (pure; no MPI)."""
import numpy as np
import pytest

from mpi_kernel.framework.partition import bounds, join, split


def test_bounds_follow_numpy_array_split():
    for length in range(0, 12):
        for parts in range(1, 5):
            sizes = [stop - start for start, stop in bounds(length, parts)]
            assert sizes == [len(p) for p in np.array_split(np.arange(length), parts)]


@pytest.mark.parametrize("value", [list(range(7)), tuple(range(7)), range(7), "abcdefg"])
def test_split_then_join_gives_the_items_back(value):
    parts = split(value, 3)
    assert [len(p) for p in parts] == [3, 2, 2]
    assert join(parts) == ("abcdefg" if isinstance(value, str) else list(range(7)))


def test_arrays_split_along_the_first_axis_and_concatenate():
    array = np.arange(20).reshape(10, 2)
    parts = split(array, 4)
    assert [p.shape for p in parts] == [(3, 2), (3, 2), (2, 2), (2, 2)]
    assert (join(parts) == array).all()


def test_clear_errors():
    with pytest.raises(TypeError, match="scatter needs a sequence that can be sliced .* not int"):
        split(5, 2)
    with pytest.raises(TypeError, match="gather joins NumPy arrays, lists, tuples or strings, not dict, int"):
        join([1, {}])
