"""Which items of a job must run one after another: planned at intake, light enough for the web.

Items that share an identifier (same type, value, source and account) run in input order, so
the last one wins; everything else runs in parallel. Nothing here talks to Redis or the
downstream.
"""

from __future__ import annotations

import hashlib
from typing import Any


def identifier_keys(element: Any) -> list[tuple[str, str, str, str]]:
    """(type, value, source, accountId) of each identifier an element names; [] for junk input."""
    if not isinstance(element, dict) or not isinstance(element.get("profiles"), list):
        return []
    found = []
    for profile in element["profiles"]:
        if not isinstance(profile, dict) or not isinstance(profile.get("identifiers"), list):
            continue
        source, account = str(profile.get("source") or ""), str(profile.get("accountId") or "")
        for ident in profile["identifiers"]:
            if isinstance(ident, dict) and ident.get("type") and ident.get("value"):
                found.append((str(ident["type"]), str(ident["value"]), source, account))
    return found


class ChainPlanner:
    """Items that share an identifier must run one after another, in input order.

    Fed one element at a time as a submission is read, so it keeps only a short digest of each
    identifier, not the elements. :meth:`chains` answers ``{index: next index}`` for every item
    that has a successor in its group; items that share nothing with any other are absent and
    run in parallel. Groups are transitive: if A shares a mobile with B and B an email with C,
    all three run in order.
    """

    def __init__(self) -> None:
        self._parent: dict[int, int] = {}
        # A 16-byte digest per identifier instead of the (type, value, source, account) tuple: a
        # fifth of the memory, and a collision (odds 2**-128) would only put two items in order.
        self._first_with_key: dict[bytes, int] = {}
        self._count = 0

    def add(self, element: Any) -> None:
        index, self._count = self._count, self._count + 1
        for key in identifier_keys(element):
            digest = hashlib.blake2b("\x1f".join(key).encode(), digest_size=16).digest()
            a, b = self._find(self._first_with_key.setdefault(digest, index)), self._find(index)
            if a != b:
                self._parent[max(a, b)] = min(a, b)
                self._parent.setdefault(min(a, b), min(a, b))

    def _find(self, i: int) -> int:
        parent = self._parent
        while parent.get(i, i) != i:
            parent[i] = parent.get(parent[i], parent[i])  # path halving
            i = parent[i]
        return i

    def chains(self) -> dict[int, int]:
        chains: dict[int, int] = {}
        last_in_group: dict[int, int] = {}
        for index in sorted(self._parent):
            root = self._find(index)
            if root in last_in_group:
                chains[last_in_group[root]] = index
            last_in_group[root] = index
        return chains
