"""Per-identifier locks in Redis, so items of different jobs never write the same customer at once.

Within one job, items that share an identifier are chained at intake; these locks are for items
of different jobs. A lock is a plain key, named by a digest of the identifier; its value is the
holding delivery (``job:index:token``). A later delivery of the same item (its lease lapsed and
it was handed out again) takes the lock over at once instead of waiting for it to expire.

The worker names an item's locks from its element, as it starts it, and takes them with one plain
``SET NX PX`` each, in one round trip: a command per lock and nothing else in the common case.
Only when one is held already does it ask the script (take_locks.lua), which takes a lock held by an
earlier delivery of the same item over, and otherwise takes none. The intake stores each item's
first lock digest (worker/store/packing.py): the leader's reaper tells by that lock whether an item
whose lease lapsed had started.

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
        pipe = self.redis.pipeline(transaction=False)
        for key in lock_keys:
            pipe.set(key, owner, nx=True, px=self.ttl_ms)
        if all(pipe.execute()):
            return True
        # One is held: by an earlier delivery of this item (taken over), or by another item (then
        # none is kept; the script releases the ones just taken too, as they hold this owner).
        return self._acquire(keys=lock_keys, args=[owner, keys.item_of(owner), self.ttl_ms]) == 1
