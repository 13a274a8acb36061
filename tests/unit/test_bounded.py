"""The byte-bounded caches of the servers (no MPI)."""
import linecache

from mpi_kernel.framework.bounded import BoundedCache, SourceKeeper


def test_oldest_entries_go_first_when_bytes_or_entries_run_out():
    evicted = []
    cache = BoundedCache(max_entries=3, max_bytes=100, on_evict=evicted.append)
    assert cache.put("a", 1, 20) and cache.put("b", 2, 20) and cache.put("c", 3, 20)
    cache.get("a")                       # used again: "b" is now the oldest
    cache.put("d", 4, 20)
    assert evicted == ["b"] and len(cache) == 3
    cache.put("e", 5, 25)                # 85 bytes: within the limit, but 4 entries
    assert evicted == ["b", "c"] and cache.bytes == 65
    assert not cache.put("huge", 6, 26)  # more than a quarter of the budget: never kept
    assert "huge" not in cache and cache.get("huge") is None


def test_source_keeper_drops_old_sources_from_linecache():
    keeper = SourceKeeper(max_entries=2, max_bytes=1000)
    for i in range(3):
        keeper.keep(f"<t-{i}>", f"x = {i}\n")
    assert "<t-0>" not in linecache.cache
    assert linecache.getline("<t-2>", 1) == "x = 2\n"
    keeper.keep("<t-big>", "y" * 300)    # too big to keep: no source lines, no error
    assert "<t-big>" not in linecache.cache
