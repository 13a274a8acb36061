"""Parse a %%px target spec ("all", "any", "0", "0,2", "1-3", "::2", "[0,2]", "-1") without eval."""
from __future__ import annotations

import re

ALLOWED = ("'all', 'any' (the first idle server), a rank like 0 or -1 (the last), a list like "
           "0,2 or [0,2], a range like 1-3, a mix like 0,2-3, or a slice like ::2 or 1:3")
_PART = re.compile(r"^(\d+)(?:-(\d+))?$")
_SLICE = re.compile(r"^(-?\d*):(-?\d*)(?::(-?\d*))?$")


def parse_targets(spec: str, servers: list[int]) -> list[int] | None:
    """Server ranks for `spec`; None means "any" (the first idle server).

    Raises ValueError saying what is allowed and which ranks exist.
    """
    text = spec.strip().lower()
    if text == "all":
        return list(servers)
    if text == "any":
        return None
    if text.startswith("[") and text.endswith("]"):  # ipyparallel's list form
        text = text[1:-1]
    sliced = _SLICE.match(text)
    if sliced:  # Python's slice of the server list, as rc[::2] in ipyparallel
        start, stop, step = (int(g) if g else None for g in sliced.groups())
        if step == 0:
            raise ValueError(f"bad target {spec!r}: a slice step cannot be 0")
        chosen = list(servers)[slice(start, stop, step)]
        if not chosen:
            raise ValueError(f"target {spec!r} selects no servers; servers are {servers[0]}-{servers[-1]}")
        return chosen
    if re.fullmatch(r"-\d+", text):  # from the end: -1 is the last server
        index = int(text)
        if -index > len(servers):
            raise ValueError(f"target {spec!r}: there are only {len(servers)} servers")
        return [servers[index]]
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
