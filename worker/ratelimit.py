"""Downstream rate limits shared by every worker on every host: token buckets in Redis.

Each call takes a token from the tenant's global bucket (``CAPILLARY_MAX_RPS``) and from its
endpoint's bucket (``CAPILLARY_RATE_LIMITS``, per minute, as the vendor states them), both or
neither, in one script and so one round trip. The script reads Redis's own clock, so hosts with
skewed clocks still share one limit.

A bucket holds half a second of tokens: bursts stay well inside the downstream's own bucket
(the simulator, like most gateways, allows about a second's worth), which absorbs the jitter
between the moment we take a token and the moment the request lands.

A call that finds no token soon does not sleep on its worker slot: it raises
:class:`RateLimited` and the task requeues the item with a countdown, so a slot is never held by
an ``add`` that waits while an ``update`` could run. Waits shorter than :data:`SLEEP_UNDER_SECONDS`
are slept in place, which is cheaper than a round trip through the broker.

A 429 from the downstream pauses the tenant's whole fleet for its ``Retry-After`` (the
``pause`` key every acquire checks), because when one worker is told to slow down, all are.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping

import redis

SLEEP_UNDER_SECONDS = 0.25
BURST_SECONDS = 0.5
DEFAULT_PAUSE_SECONDS = 1.0

_ACQUIRE = """
-- KEYS[1]: pause key; KEYS[2..]: bucket keys. ARGV: rate per second, capacity, for each bucket.
-- Answers 0 when a token was taken from every bucket, else the seconds to wait (as a string).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local pause = tonumber(redis.call('GET', KEYS[1]) or '0')
if pause > now then return tostring(pause - now) end
local wait = 0
local tokens = {}
for i = 2, #KEYS do
  local rate, cap = tonumber(ARGV[2 * i - 3]), tonumber(ARGV[2 * i - 2])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local have = tonumber(state[1]) or cap
  local since = now - (tonumber(state[2]) or now)
  if since < 0 then since = 0 end
  have = math.min(cap, have + since * rate)
  tokens[i] = have
  if have < 1 then wait = math.max(wait, (1 - have) / rate) end
end
local take = 1
if wait > 0 then take = 0 end
for i = 2, #KEYS do
  redis.call('HSET', KEYS[i], 'tokens', tostring(tokens[i] - take), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[i], 3600)
end
return tostring(wait)
"""

_PAUSE = """
-- KEYS[1]: pause key; ARGV[1]: seconds. Extends the pause, never shortens it.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local untill = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if untill > current then redis.call('SET', KEYS[1], tostring(untill), 'EX', math.ceil(tonumber(ARGV[1])) + 1) end
return 1
"""


class RateLimited(Exception):
    """No token for a while: requeue the item after ``wait`` seconds rather than hold a worker slot."""

    def __init__(self, endpoint: str, wait: float) -> None:
        super().__init__(f"{endpoint}: rate limited for {wait:.2f}s")
        self.endpoint = endpoint
        self.wait = wait


class RateLimiter:
    def __init__(self, client: redis.Redis, tenant_id: str, *, max_rps: float = 0.0,
                 per_minute: Mapping[str, float] | None = None) -> None:
        self.redis = client
        prefix = f"cu:ratelimit:{tenant_id}"
        self.pause_key = f"{prefix}:pause"
        self._global = (f"{prefix}:all", max_rps) if max_rps > 0 else None
        self._endpoints = {name: (f"{prefix}:{name}", rpm / 60.0) for name, rpm in (per_minute or {}).items()}
        self._acquire = client.register_script(_ACQUIRE)
        self._pause = client.register_script(_PAUSE)

    def acquire(self, endpoint: str) -> None:
        """Take a token for one call to ``endpoint``, sleeping through short waits."""
        keys, args = [self.pause_key], []
        for bucket in (self._global, self._endpoints.get(endpoint)):
            if bucket is not None:
                key, rate = bucket
                keys.append(key)
                args += [rate, max(1.0, rate * BURST_SECONDS)]
        deadline = time.monotonic() + 5 * SLEEP_UNDER_SECONDS
        while True:
            wait = float(self._acquire(keys=keys, args=args))
            if wait <= 0:
                return
            if wait > SLEEP_UNDER_SECONDS or time.monotonic() + wait > deadline:
                raise RateLimited(endpoint, wait)
            time.sleep(wait + random.uniform(0, wait / 2))

    def pause(self, retry_after: float | None) -> None:
        """The downstream said 429: hold every worker of this tenant back for ``retry_after``."""
        self._pause(keys=[self.pause_key], args=[retry_after or DEFAULT_PAUSE_SECONDS])

    def expected_rates(self) -> dict[str, float]:
        """Calls per second allowed, per endpoint and for ``all``, for completion estimates."""
        rates = {name: rate for name, (_key, rate) in self._endpoints.items()}
        if self._global:
            rates["all"] = self._global[1]
        return rates
