"""A least-recently-used cache bounded by entries and by bytes.

The servers keep compiled commands and cells (loops send the same text again and
again) and the source of cells and definitions for tracebacks (linecache). Bounded
by entries only, 1,024 distinct 1 MB commands would keep a gigabyte on every server.
"""
from __future__ import annotations

import collections
import hashlib
import linecache
from typing import Any, Callable, Hashable


def source_hash(source: str) -> str:
    """A short name for a source text, the same on every rank, so identical errors merge."""
    return hashlib.sha1(source.encode()).hexdigest()[:8]


class BoundedCache:
    """`put(key, value, size)` and `get(key)`; the oldest entries go first when either
    limit is passed. An entry bigger than `max_bytes` / 4 is not kept at all."""

    def __init__(self, max_entries: int, max_bytes: int,
                 on_evict: Callable[[Hashable], None] | None = None) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._on_evict = on_evict
        self._items: collections.OrderedDict[Hashable, tuple[Any, int]] = collections.OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable, default: Any = None) -> Any:
        item = self._items.get(key)
        if item is None:
            return default
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, value: Any, size: int) -> bool:
        """Store `value`; False if it is too big to keep (then nothing is stored)."""
        if key in self._items:
            self._drop(key)
        if size > self.max_bytes // 4:
            return False
        self._items[key] = (value, size)
        self.bytes += size
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))
        return True

    def _drop(self, key: Hashable) -> None:
        _, size = self._items.pop(key)
        self.bytes -= size
        if self._on_evict is not None:
            self._on_evict(key)


class SourceKeeper:
    """Sources registered in linecache under made-up file names (`<px-cell-...>`), so
    tracebacks and stack reports show their lines, within a byte budget: the oldest
    sources go first (a traceback through them then shows no source lines)."""

    def __init__(self, max_entries: int = 4096, max_bytes: int = 16 << 20) -> None:
        self._kept = BoundedCache(max_entries, max_bytes, lambda name: linecache.cache.pop(name, None))

    def keep(self, name: str, source: str) -> None:
        if name in self._kept:
            self._kept.get(name)  # recently used again
            return
        if self._kept.put(name, None, len(source)):
            linecache.cache[name] = (len(source), None, source.splitlines(True), name)
