"""Per-identifier locks in Redis, so items of different jobs never write the same customer at once.

Within one job, items that share an identifier are chained at intake; these locks are for items
of different jobs. A lock is a plain key, named by a digest of the identifier; its value is the
holding delivery (``job:index:token``). A later delivery of the same item (its lease lapsed and
it was handed out again) takes the lock over at once instead of waiting for it to expire.

The intake stores each item's lock digests beside its input, and the worker takes the locks in
the script that reads the item (``JobStore.claim_item``), in the same round trip. This class
takes them for items stored without the digests (by an earlier version), and is the reference
the script must agree with: both name a lock by :func:`worker.keys.identifier_lock`.

A lock lives as long as the item's lease: twice the lease, renewed by the worker's lease keeper
together with the lease (worker/scheduler.py), and deleted by the script that records the
item's outcome, in the same step that ends the lease. So a live item never loses its lock, and a
dead one's lock frees itself soon after its lease has lapsed.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from worker import keys

#: Lua: ``take_all(locks, owner, item, ttl_ms)`` takes every key of ``locks`` for ``owner``
#: (``job:index:token``) or none, answering 1 or 0. A lock held by an earlier delivery of the same
#: ``item`` (``job:index:``) is taken over. Shared by :meth:`IdentifierLocks.acquire` and the job
#: store's claim script, so the two cannot disagree.
TAKE_ALL_LUA = """
local function take_all(locks, owner, item, ttl)
  local taken = {}
  for _, key in ipairs(locks) do
    if not redis.call('SET', key, owner, 'NX', 'PX', ttl) then
      local holder = redis.call('GET', key)
      if holder and string.sub(holder, 1, #item) ~= item then
        if #taken > 0 then redis.call('DEL', unpack(taken)) end
        return 0
      end
      redis.call('SET', key, owner, 'PX', ttl)
    end
    taken[#taken + 1] = key
  end
  return 1
end
"""

_ACQUIRE = TAKE_ALL_LUA + """
-- KEYS: locks; ARGV: owner, the item's prefix 'job:index:', ttl ms.
return take_all(KEYS, ARGV[1], ARGV[2], ARGV[3])
"""


class IdentifierLocks:
    def __init__(self, client: redis.Redis, *, ttl_ms: int) -> None:
        self.redis = client
        self.ttl_ms = ttl_ms
        self._acquire = client.register_script(_ACQUIRE)

    @staticmethod
    def keys(tenant: str, identifiers: Iterable[tuple[str, str, str, str]]) -> list[str]:
        return sorted({keys.identifier_lock(tenant, source, account, kind, value)
                       for kind, value, source, account in identifiers})

    def acquire(self, lock_keys: list[str], owner: str) -> bool:
        """All of ``lock_keys`` or none, for ``owner`` (``job:index:token``)."""
        if not lock_keys:
            return True
        return self._acquire(keys=lock_keys, args=[owner, keys.item_of(owner), self.ttl_ms]) == 1
