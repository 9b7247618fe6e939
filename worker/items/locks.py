"""Per-identifier locks in Redis, so items of different jobs never write the same customer at once.

Within one job, items that share an identifier are chained at intake; these locks are for items
of different jobs. A lock is a plain key, named by a digest of the identifier; its value is the
holding delivery (``job:index:token``). A later delivery of the same item (its lease lapsed and
it was handed out again) takes the lock over at once instead of waiting for it to expire.

The intake stores each item's lock digests beside its input, and the worker takes the locks in
the script that reads the item (``JobStore.claim_item``), in the same round trip. This class
takes them for items stored without the digests (by an earlier version), and is the reference
the script must agree with: both name a lock by :func:`worker.store.keys.identifier_lock`.

A lock lives as long as the item's lease: twice the lease, renewed by the worker's lease keeper
together with the lease (worker/dispatch/scheduler.py), and deleted by the script that records the
item's outcome, in the same step that ends the lease. So a live item never loses its lock, and a
dead one's lock frees itself soon after its lease has lapsed.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from worker.lua_scripts import register
from worker.store import keys


class IdentifierLocks:
    def __init__(self, client: redis.Redis, *, ttl_ms: int) -> None:
        self.redis = client
        self.ttl_ms = ttl_ms
        self._acquire = register(client, "take_locks")

    @staticmethod
    def keys(tenant: str, identifiers: Iterable[tuple[str, str, str, str]]) -> list[str]:
        return sorted({keys.identifier_lock(tenant, source, account, kind, value)
                       for kind, value, source, account in identifiers})

    def acquire(self, lock_keys: list[str], owner: str) -> bool:
        """All of ``lock_keys`` or none, for ``owner`` (``job:index:token``)."""
        if not lock_keys:
            return True
        return self._acquire(keys=lock_keys, args=[owner, keys.item_of(owner), self.ttl_ms]) == 1
