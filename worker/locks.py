"""Short per-identifier locks in Redis, so two jobs never add the same new customer at once.

Within one job, items that share an identifier are already chained at intake; these locks are
for items of different jobs. A lock belongs to one item (``job:index``), so a redelivered item
takes back its own lock at once instead of waiting for a dead attempt's lock to expire.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

#: Longer than an item can take in one worker (its calls with their timeouts), so a lock never
#: lapses under a live item; short enough that a dead worker's locks free themselves soon.
LOCK_SECONDS = 120

_ACQUIRE = """
for i = 1, #KEYS do
  local holder = redis.call('GET', KEYS[i])
  if holder and holder ~= ARGV[1] then return 0 end
end
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[1], 'EX', ARGV[2]) end
return 1
"""

_RELEASE = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 1
"""


class IdentifierLocks:
    def __init__(self, client: redis.Redis) -> None:
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def keys(tenant: str, identifiers: Iterable[tuple[str, str, str, str]]) -> list[str]:
        return sorted({f"cu:lock:{tenant}:{source}:{account}:{kind}:{value}"
                       for kind, value, source, account in identifiers})

    def acquire(self, keys: list[str], owner: str) -> bool:
        """All of ``keys`` or none."""
        return not keys or self._acquire(keys=keys, args=[owner, LOCK_SECONDS]) == 1

    def release(self, keys: list[str], owner: str) -> None:
        if keys:
            self._release(keys=keys, args=[owner])
