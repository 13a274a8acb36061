"""Splitting a sequence across servers and joining the parts again (pure; no MPI).

Parts are contiguous and in rank order, their lengths differing by at most one, the
first ones longer: numpy.array_split's rule, so `gather(scatter(x))` gives `x` back.
"""
from __future__ import annotations

from typing import Any, Sequence


def bounds(length: int, parts: int) -> list[tuple[int, int]]:
    """(start, stop) of each part of `length` items split into `parts`."""
    size, extra = divmod(length, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def split(sequence: Sequence[Any], parts: int) -> list[Any]:
    """Contiguous slices of `sequence` (a list, tuple, range, string or NumPy array, split
    along its first axis). Raises TypeError for what cannot be sliced by position."""
    try:
        length = len(sequence)
        return [sequence[start:stop] for start, stop in bounds(length, parts)]
    except TypeError:
        raise TypeError(f"scatter needs a sequence that can be sliced (list, tuple, range, NumPy array), "
                        f"not {type(sequence).__name__}") from None


def join(parts: list[Any]) -> Any:
    """The parts, in order, as one value: arrays concatenated, lists and tuples joined."""
    if parts and all(type(p).__module__ == "numpy" and type(p).__name__ == "ndarray" for p in parts):
        import numpy
        return numpy.concatenate(parts)
    if all(isinstance(p, (list, tuple, range)) for p in parts):
        return [item for part in parts for item in part]
    if all(isinstance(p, str) for p in parts):
        return "".join(parts)
    kinds = sorted({type(p).__name__ for p in parts})
    raise TypeError(f"gather joins NumPy arrays, lists, tuples or strings, not {', '.join(kinds)}; "
                    f"use pull() to get each server's value")
