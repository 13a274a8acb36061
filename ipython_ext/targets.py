"""Parse a %%px target spec ("all", "any", "0", "0,2", "1-3") without eval."""
from __future__ import annotations

import re

ALLOWED = ("'all', 'any' (the first idle server), a rank like 0, a list like 0,2, "
           "a range like 1-3, or a mix like 0,2-3")
_PART = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_targets(spec: str, servers: list[int]) -> list[int] | None:
    """Server ranks for `spec`; None means "any" (the first idle server).

    Raises ValueError saying what is allowed and which ranks exist.
    """
    text = spec.strip().lower()
    if text == "all":
        return list(servers)
    if text == "any":
        return None
    ranks: list[int] = []
    for part in text.split(","):
        match = _PART.match(part.strip())
        if not match:
            raise ValueError(f"bad target {spec!r}: use {ALLOWED}")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise ValueError(f"bad target range {part.strip()!r}: the first rank must not exceed the last")
        ranks.extend(r for r in range(first, last + 1) if r not in ranks)
    missing = [r for r in ranks if r not in servers]
    if missing:
        raise ValueError(f"target {spec!r} names ranks that are not servers: {missing}; "
                         f"servers are {servers[0]}-{servers[-1]}")
    return ranks
