"""Downstream rate limits shared by every worker on every host: token buckets in Redis.

Each call takes a token from the tenant's global bucket (``CAPILLARY_MAX_RPS``) and from its
endpoint's bucket (``CAPILLARY_RATE_LIMITS``, per minute, as the vendor states them), both or
neither, in one script and so one round trip. The script reads Redis's own clock, so hosts with
skewed clocks still share one limit.

Buckets aim at the limit itself, not under it: a brand's allowance is what bounds a big job's
duration. A bucket holds half a second of tokens, so bursts stay well inside the downstream's
own bucket (the simulator, like most gateways, allows about a second's worth), which absorbs the
jitter between the moment we take a token and the moment the request lands. Should the
downstream still answer 429 (its clock, or its idea of a minute, differs from ours), the limiter
learns: that bucket's aim drops by 5% per 429, to at most 30% under the limit, and comes back to
the limit after ten quiet minutes.

A call that finds no token reserves the next free one (the bucket goes into debt, so waiters
line up instead of stampeding). A write that must wait for its own endpoint's limit does not
sleep on its worker slot: it raises :class:`RateLimited` and the item goes back to the scheduler
until a little before its token is due (:data:`worker.retry.REQUEUE_LEAD_SECONDS`, the time to be dispatched
again and redo its lookups), so a slot is never held by an ``add`` that waits while an
``update`` could run; the requeued run passes its token back to :meth:`RateLimiter.acquire`,
which waits out the last moment. A reserved token is used even somewhat late
(:data:`LATE_TOLERANCE_SECONDS`): a dropped token is a call the allowance paid for and nobody
made. Waits for lookups or for the all-endpoints limit are slept in place (see
:data:`REQUEUE_ENDPOINTS`). Waits beyond the horizon reserve nothing: the item is requeued and
looks again later.

A 429 from the downstream pauses the tenant's whole fleet for its ``Retry-After`` (the
``pause`` key every acquire checks), because when one worker is told to slow down, all are.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import redis

from worker import keys
from worker.metrics import Metrics

SLEEP_UNDER_SECONDS = 0.25
BURST_SECONDS = 0.5
#: The longest an item that came back early for a reserved token (worker/retry.py) sleeps for it.
EARLY_SLEEP_SECONDS = 0.6
#: Learning from 429s: each one lowers the aim of the bucket that let the call through by this
#: much, down to the floor; the lowered aim lasts this long after the last 429.
AIM_STEP = 0.95
AIM_FLOOR = 0.7
AIM_MEMORY_SECONDS = 600
#: How stale a process's view of a 429 pause may be, for calls that no bucket limits.
PAUSE_CHECK_SECONDS = 0.5
DEFAULT_PAUSE_SECONDS = 1.0

_ACQUIRE = """
-- KEYS[1]: pause key; KEYS[2]: aims hash; KEYS[3..]: bucket keys. ARGV[1]: horizon (s); then the
-- limit per second and the burst (s) of each bucket. Answers (as a string) 0: a token taken from
-- every bucket, use it now; -w: a token reserved in every bucket, use it in w seconds; +w: nothing
-- taken, ask again in w.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local pause = tonumber(redis.call('GET', KEYS[1]) or '0')
if pause > now then return tostring(pause - now) end
local horizon = tonumber(ARGV[1])
local wait = 0
local tokens = {}
for i = 3, #KEYS do
  local aim = tonumber(redis.call('HGET', KEYS[2], KEYS[i]) or '1')
  local rate = tonumber(ARGV[2 * i - 4]) * aim
  local cap = math.max(1, rate * tonumber(ARGV[2 * i - 3]))
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local have = tonumber(state[1]) or cap
  local since = now - (tonumber(state[2]) or now)
  if since < 0 then since = 0 end
  have = math.min(cap, have + since * rate)
  tokens[i] = have
  if have < 1 then wait = math.max(wait, (1 - have) / rate) end
end
local take = 1
if wait > horizon then take = 0 end
for i = 3, #KEYS do
  redis.call('HSET', KEYS[i], 'tokens', tostring(tokens[i] - take), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[i], 3600)
end
if take == 0 then return tostring(wait) end
return tostring(-wait)
"""

_PAUSE = """
-- KEYS[1]: pause key; KEYS[2]: aims hash; KEYS[3]: the bucket that let the call through, if any.
-- ARGV[1]: seconds; ARGV[2..4]: aim step, floor, memory (s). Extends the pause, never shortens it,
-- and lowers that bucket's aim.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local untill = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if untill > current then redis.call('SET', KEYS[1], tostring(untill), 'EX', math.ceil(tonumber(ARGV[1])) + 1) end
if KEYS[3] then
  local aim = tonumber(redis.call('HGET', KEYS[2], KEYS[3]) or '1')
  redis.call('HSET', KEYS[2], KEYS[3], tostring(math.max(tonumber(ARGV[3]), aim * tonumber(ARGV[2]))))
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return 1
"""


#: Write endpoints: an item that must wait long for one of these is requeued holding a reserved
#: token. Lookups and the all-endpoints limit are waited out in place: every item needs them
#: first, so requeueing for them would only restart the item at its first lookup, forever.
REQUEUE_ENDPOINTS = frozenset({"add", "update", "changeIdentifier"})

#: A reserved token used later than this after its time is dropped and a fresh one taken: late
#: tokens spent together with on-time ones land as a burst, which must stay inside the
#: downstream's own burst allowance (about a second's worth).
LATE_TOLERANCE_SECONDS = 0.5

#: Tokens an item reserved on earlier runs, by endpoint: the epoch seconds each one is due. The
#: item carries them in its memo and hands them to :meth:`RateLimiter.acquire`, which uses them up.
Reserved = dict[str, list[float]]


class RateLimited(Exception):
    """No token for a while: requeue the item after ``wait`` seconds rather than hold a worker slot.

    ``reserved``: a token for ``endpoint`` is already taken for the item, due after ``wait``;
    the next run passes it back to :meth:`RateLimiter.acquire` instead of asking again.
    """

    def __init__(self, endpoint: str, wait: float, *, reserved: bool) -> None:
        super().__init__(f"{endpoint}: rate limited for {wait:.2f}s")
        self.endpoint = endpoint
        self.wait = wait
        self.reserved = reserved
        self.due = time.time() + wait


class RateLimiter:
    def __init__(self, client: redis.Redis, tenant_id: str, *, max_rps: float = 0.0,
                 per_minute: Mapping[str, float] | None = None, horizon: float = 30.0,
                 metrics: Metrics | None = None) -> None:
        self.redis = client
        self.horizon = horizon
        self.metrics = metrics
        prefix = keys.rate_limit_prefix(tenant_id)
        self.pause_key = f"{prefix}:pause"
        self.aims_key = f"{prefix}:aims"
        self._global = (f"{prefix}:all", max_rps) if max_rps > 0 else None
        self._endpoints = {name: (f"{prefix}:{name}", rpm / 60.0) for name, rpm in (per_minute or {}).items()}
        self._acquire = client.register_script(_ACQUIRE)
        self._pause = client.register_script(_PAUSE)
        self._pause_checked_until = 0.0
        self._pause_remaining_at = (0.0, 0.0)

    def acquire(self, endpoint: str, reserved: Reserved | None = None) -> None:
        """Take a token for one call to ``endpoint`` (or use one of ``reserved``); sleep through a
        short wait, raise :class:`RateLimited` on a long one."""
        if endpoint == "get":  # reading a customer by id counts against the lookup limit
            endpoint = "lookup"
        if reserved and reserved.get(endpoint):
            late = time.time() - reserved[endpoint].pop(0)
            if late <= LATE_TOLERANCE_SECONDS:
                # Not counted as a wait: this sleep is the tail of the wait counted whole when the item
                # was requeued for this token.
                if late < 0:
                    time.sleep(min(-late, EARLY_SLEEP_SECONDS))
                return
        keys, args = [self.pause_key, self.aims_key], [self.horizon]
        for bucket in (self._global, self._endpoints.get(endpoint)):
            if bucket is not None:
                key, rate = bucket
                keys.append(key)
                args += [rate, BURST_SECONDS]
        answer = self._paused_for() if len(keys) == 2 else float(self._acquire(keys=keys, args=args))
        if answer == 0:
            return
        wait = abs(answer)
        if self.metrics is not None:
            self.metrics.rate_limit_wait(endpoint, wait)
        if answer > 0:
            raise RateLimited(endpoint, answer, reserved=False)
        if wait > SLEEP_UNDER_SECONDS and endpoint in REQUEUE_ENDPOINTS and endpoint in self._endpoints:
            raise RateLimited(endpoint, wait, reserved=True)
        time.sleep(wait)

    def _paused_for(self) -> float:
        """Seconds the fleet is paused for, for a call no bucket limits: read from Redis at most every
        PAUSE_CHECK_SECONDS per process, so unlimited calls cost no round trip of their own."""
        now = time.monotonic()
        if now >= self._pause_checked_until:
            raw = self.redis.get(self.pause_key)
            until = float(raw) if raw else 0.0
            self._pause_remaining_at = (now, max(0.0, until - time.time()))
            self._pause_checked_until = now + PAUSE_CHECK_SECONDS
        checked_at, remaining = self._pause_remaining_at
        return max(0.0, remaining - (now - checked_at))

    def pause(self, endpoint: str, retry_after: float | None) -> None:
        """The downstream said 429 to a call to ``endpoint``: hold every worker of this tenant back for
        ``retry_after``, and aim lower on the bucket that let the call through."""
        if self.metrics is not None:
            self.metrics.throttled(endpoint)
        endpoint = "lookup" if endpoint == "get" else endpoint
        bucket = self._endpoints.get(endpoint) or self._global
        self._pause(keys=[self.pause_key, self.aims_key, *([bucket[0]] if bucket else [])],
                    args=[retry_after or DEFAULT_PAUSE_SECONDS, AIM_STEP, AIM_FLOOR, AIM_MEMORY_SECONDS])
        self._pause_checked_until = 0.0  # this process heard it first: look again at once
