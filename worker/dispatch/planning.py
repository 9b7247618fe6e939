"""Which items of a job must run one after another: planned at intake, light enough for the web.

Items that share an identifier (same type, value, source and account) run in input order, so
the last one wins; everything else runs in parallel. Nothing here talks to Redis or the
downstream.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from worker.store.keys import identifier_keys


class SeenIdentifiers(Protocol):
    """Where a planner keeps the first index of every identifier digest it has seen."""

    def first_indexes(self, digests: list[bytes]) -> list[int | None]: ...

    def remember(self, firsts: dict[bytes, int]) -> None: ...


class SeenInMemory:
    """The digests in a dict: for tools and tests; a submission's intake keeps them in Redis
    (worker/store/jobstore.py), so the web process holds one chunk's worth, however large the file."""

    def __init__(self) -> None:
        self.firsts: dict[bytes, int] = {}

    def first_indexes(self, digests: list[bytes]) -> list[int | None]:
        return [self.firsts.get(digest) for digest in digests]

    def remember(self, firsts: dict[bytes, int]) -> None:
        self.firsts.update(firsts)


class ChainPlanner:
    """Items that share an identifier must run one after another, in input order.

    Fed one element at a time as a submission is read, so it keeps only a short digest of each
    identifier, not the elements, and only until the next :meth:`flush`: a flush (every chunk of
    elements) looks the pending digests up in ``seen`` and leaves the new ones there. Only items
    that share an identifier with another stay in memory. :meth:`chains` answers
    ``{index: next index}`` for every item that has a successor in its group; items that share
    nothing with any other are absent and run in parallel. Groups are transitive: if A shares a
    mobile with B and B an email with C, all three run in order.
    """

    def __init__(self, seen: SeenIdentifiers | None = None) -> None:
        self._parent: dict[int, int] = {}
        self._seen = seen if seen is not None else SeenInMemory()
        # An 8-byte digest per identifier instead of the (type, value, source, account) tuple: a small
        # part of the memory (here and in the submission's hash in Redis, which holds every identifier
        # of the file until its commit), and a collision (odds about one in four million for all the
        # three million identifiers of a million profiles) would only put two items in order.
        self._pending: list[tuple[bytes, int]] = []
        self._count = 0

    def add(self, element: Any) -> None:
        index, self._count = self._count, self._count + 1
        for key in identifier_keys(element):
            self._pending.append((hashlib.blake2b("\x1f".join(key).encode(), digest_size=8).digest(), index))

    def flush(self) -> None:
        """Join the items added since the last flush to the earlier items they share an identifier with."""
        if not self._pending:
            return
        unique = list(dict.fromkeys(digest for digest, _ in self._pending))
        earlier = dict(zip(unique, self._seen.first_indexes(unique), strict=True))
        new: dict[bytes, int] = {}
        for digest, index in self._pending:
            first = earlier.get(digest)
            if first is None:
                first = new.setdefault(digest, index)
            a, b = self._find(first), self._find(index)
            if a != b:
                self._parent[max(a, b)] = min(a, b)
                self._parent.setdefault(min(a, b), min(a, b))
        self._seen.remember(new)
        self._pending = []

    def _find(self, i: int) -> int:
        parent = self._parent
        while parent.get(i, i) != i:
            parent[i] = parent.get(parent[i], parent[i])  # path halving
            i = parent[i]
        return i

    def chains(self) -> dict[int, int]:
        self.flush()
        chains: dict[int, int] = {}
        last_in_group: dict[int, int] = {}
        for index in sorted(self._parent):
            root = self._find(index)
            if root in last_in_group:
                chains[last_in_group[root]] = index
            last_in_group[root] = index
        return chains
