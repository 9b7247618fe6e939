"""Downstream rate limits shared by every worker on every host, in Redis, on Redis's clock.

Each call passes the tenant's all-endpoints limit (``CAPILLARY_MAX_RPS``) and its endpoint's
bucket (``CAPILLARY_RATE_LIMITS``, per minute, as the vendor states them), both or neither, in one
script and so one round trip. The scripts read Redis's own clock, and every reply carries it, so
reserved tokens fall due at the same moment for every host whatever their clocks say.

**The all-endpoints limit is strict**: a log of call times, in which a call is granted no sooner
than a window after the call ``max_rps`` places before it, so no second ever sees more than
``max_rps`` calls (a token bucket lets a burst through on top of its rate). The window keeps a
small margin (:data:`WINDOW_MARGIN_SHARE`, :data:`WINDOW_MARGIN_SECONDS`) for the jitter between a
grant and the call's arrival downstream (a busy host delays a thread by tens of milliseconds),
which is what it costs: about 88% of ``max_rps`` is used. A call that wakes from its wait later
than the margin takes a fresh grant instead of landing among the next window's calls.

**Endpoint buckets** aim at the limit itself, not under it: a brand's allowance is what bounds a
big job's duration. A bucket holds half a second of tokens, so bursts stay well inside the
downstream's own bucket (the simulator, like most gateways, allows about a second's worth).
Should the downstream still answer 429, the limiter learns: the aim of the limit that let the
call through drops by 5% per 429, to at most 30% under the limit, and comes back after ten quiet
minutes.

A call that finds no token reserves the next free one (waiters line up instead of stampeding). A
write that must wait for its own endpoint's limit does not sleep on its worker slot: it raises
:class:`RateLimited` and the item goes back to the scheduler until a little before its token is
due (:data:`worker.retry.REQUEUE_LEAD_SECONDS`), so a slot is never held by an ``add`` that waits
while an ``update`` could run; the requeued run passes its token back to
:meth:`RateLimiter.acquire`, which waits out the last moment. A reserved bucket token is used even
somewhat late (:data:`LATE_TOLERANCE_SECONDS`, half a second): later than that, spending it would
land as a burst the downstream answers with 429s, so it is dropped and a fresh one taken; under the
strict limit the tolerance is its margin. Waits for lookups or for the all-endpoints
limit are slept in place (see :data:`REQUEUE_ENDPOINTS`), the item's lease kept alive meanwhile.
Waits beyond the horizon reserve nothing: the item is requeued and looks again later.

A 429 from the downstream pauses the tenant's whole fleet for its ``Retry-After`` (the ``pause``
key every acquire checks, reserved tokens included), because when one worker is told to slow
down, all are.
"""

from __future__ import annotations

import secrets
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
-- KEYS[1]: pause key; KEYS[2]: aims hash; KEYS[3]: the all-endpoints log (a zset of call times), or
-- the aims hash again when there is no such limit; KEYS[4..]: endpoint buckets. ARGV[1]: horizon
-- (s); ARGV[2], ARGV[3]: the all-endpoints limit as at most n calls in any window of w seconds (n 0:
-- none); ARGV[4]: a member unique to this call; then the limit per second and the burst (s) of each
-- bucket. Answers {wait, now} (strings, seconds; now on Redis's clock): wait 0: a token taken from
-- every limit, use it now; -w: one reserved in every limit, use it in w seconds; +w: nothing taken,
-- ask again in w.
-- The all-endpoints limit is strict: a call is granted no sooner than a window after the n-th call
-- before it, so no window of w seconds ever holds more than n calls (a token bucket would let a
-- burst through on top of the rate).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local pause = tonumber(redis.call('GET', KEYS[1]) or '0')
if pause > now then return {tostring(pause - now), tostring(now)} end
local horizon = tonumber(ARGV[1])
local wait = 0
local n, w = tonumber(ARGV[2]), tonumber(ARGV[3])
if n > 0 then
  w = w / tonumber(redis.call('HGET', KEYS[2], KEYS[3]) or '1')
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - w)
  local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
  local at = now
  if #last > 0 then at = math.max(at, tonumber(last[2])) end
  if redis.call('ZCARD', KEYS[3]) >= n then
    local nth = redis.call('ZRANGE', KEYS[3], -n, -n, 'WITHSCORES')
    at = math.max(at, tonumber(nth[2]) + w)
  end
  wait = at - now
end
local tokens = {}
for i = 4, #KEYS do
  local aim = tonumber(redis.call('HGET', KEYS[2], KEYS[i]) or '1')
  local rate = tonumber(ARGV[2 * i - 3]) * aim
  local cap = math.max(1, rate * tonumber(ARGV[2 * i - 2]))
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
for i = 4, #KEYS do
  redis.call('HSET', KEYS[i], 'tokens', tostring(tokens[i] - take), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[i], 3600)
end
if take == 0 then return {tostring(wait), tostring(now)} end
if n > 0 then
  redis.call('ZADD', KEYS[3], now + wait, ARGV[4])
  redis.call('EXPIRE', KEYS[3], math.ceil(w + horizon) + 60)
end
return {tostring(-wait), tostring(now)}
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


_PAUSED_FOR = """
-- KEYS[1]: pause key. Answers the seconds the fleet is paused for, on Redis's clock.
local t = redis.call('TIME')
local left = tonumber(redis.call('GET', KEYS[1]) or '0') - (tonumber(t[1]) + tonumber(t[2]) / 1000000)
if left < 0 then left = 0 end
return tostring(left)
"""


#: Write endpoints: an item that must wait long for one of these is requeued holding a reserved
#: token. Lookups and the all-endpoints limit are waited out in place: every item needs them
#: first, so requeueing for them would only restart the item at its first lookup, forever.
REQUEUE_ENDPOINTS = frozenset({"add", "update", "changeIdentifier"})

#: A reserved token used later than this after its time is dropped and a fresh one taken: late
#: tokens spent together with on-time ones land as a burst, which must stay inside the downstream's
#: own burst allowance (about a second's worth). Measured: using bucket tokens up to 5 s late drew
#: 43 answers 429 from a downstream holding adds to 600 a minute and used 0.63 of its limit, where
#: dropping them past half a second draws none and uses all of it. Under the strict all-endpoints
#: limit the tolerance is the margin its window keeps for jitter.
LATE_TOLERANCE_SECONDS = 0.5
#: The all-endpoints window keeps this margin (a share of it, and a constant) for the jitter between
#: the moment a call is granted and the moment it lands downstream.
WINDOW_MARGIN_SHARE = 0.08
WINDOW_MARGIN_SECONDS = 0.05

#: Tokens an item reserved on earlier runs, by endpoint: the epoch seconds each one is due. The
#: item carries them in its memo and hands them to :meth:`RateLimiter.acquire`, which uses them up.
Reserved = dict[str, list[float]]


class RateLimited(Exception):
    """No token for a while: requeue the item after ``wait`` seconds rather than hold a worker slot.

    ``reserved``: a token for ``endpoint`` is already taken for the item, due after ``wait``;
    the next run passes it back to :meth:`RateLimiter.acquire` instead of asking again.
    """

    def __init__(self, endpoint: str, wait: float, *, reserved: bool, now: float | None = None) -> None:
        super().__init__(f"{endpoint}: rate limited for {wait:.2f}s")
        self.endpoint = endpoint
        self.wait = wait
        self.reserved = reserved
        #: when the reserved token is due, on Redis's clock (every worker reads the same one)
        self.due = (time.time() if now is None else now) + wait


def window(max_rps: float) -> tuple[int, float]:
    """The strict all-endpoints limit as at most ``n`` calls in any window of ``w`` seconds: whole
    calls per second, or one call per ``1/max_rps`` seconds below one a second; the window keeps a
    margin for jitter, so arrivals downstream keep to ``max_rps`` in every second too."""
    n, w = (int(max_rps), 1.0) if max_rps >= 1 else (1, 1.0 / max_rps)
    return n, w * (1 + WINDOW_MARGIN_SHARE) + WINDOW_MARGIN_SECONDS


class RateLimiter:
    """A tenant's limits, shared by every worker: the all-endpoints limit (``CAPILLARY_MAX_RPS``),
    strict per window, and a bucket per endpoint (``CAPILLARY_RATE_LIMITS``). Times come from
    Redis's clock: each reply carries it, and the process keeps its offset from its own."""

    def __init__(self, client: redis.Redis, tenant_id: str, *, max_rps: float = 0.0,
                 per_minute: Mapping[str, float] | None = None, horizon: float = 30.0,
                 metrics: Metrics | None = None) -> None:
        self.redis = client
        self.horizon = horizon
        self.metrics = metrics
        prefix = keys.rate_limit_prefix(tenant_id)
        self.pause_key = f"{prefix}:pause"
        self.aims_key = f"{prefix}:aims"
        self.log_key = f"{prefix}:all"
        self._window = window(max_rps) if max_rps > 0 else None
        self._late_tolerance = LATE_TOLERANCE_SECONDS
        if self._window is not None:
            self._late_tolerance = self._window[1] - (1.0 if max_rps >= 1 else 1.0 / max_rps)
        self._endpoints = {name: (f"{prefix}:{name}", rpm / 60.0) for name, rpm in (per_minute or {}).items()}
        self._acquire = client.register_script(_ACQUIRE)
        self._pause = client.register_script(_PAUSE)
        self._paused = client.register_script(_PAUSED_FOR)
        self._pause_checked_until = 0.0
        self._pause_remaining_at = (0.0, 0.0)
        self._offset: float | None = None  # Redis's clock minus ours

    def redis_now(self) -> float:
        if self._offset is None:
            seconds, micros = self.redis.time()
            self._offset = seconds + micros / 1e6 - time.time()
        return time.time() + self._offset

    def acquire(self, endpoint: str, reserved: Reserved | None = None) -> None:
        """Take a token for one call to ``endpoint`` (or use one of ``reserved``); sleep through a
        short wait, raise :class:`RateLimited` on a long one, or while the fleet is paused by a 429."""
        if endpoint == "get":  # reading a customer by id counts against the lookup limit
            endpoint = "lookup"
        if reserved and reserved.get(endpoint):
            late = self.redis_now() - reserved[endpoint].pop(0)
            tolerance = self._late_tolerance
            paused = self._paused_for()
            if paused > 0:  # a 429 since it was reserved: the pause holds for reserved tokens too
                raise RateLimited(endpoint, paused, reserved=False, now=self.redis_now())
            if late <= tolerance:
                # Not counted as a wait: this sleep is the tail of the wait counted whole when the item
                # was requeued for this token.
                if late < 0:
                    time.sleep(min(-late, EARLY_SLEEP_SECONDS))
                return
        bucket = self._endpoints.get(endpoint)
        if self._window is None and bucket is None:
            paused = self._paused_for()
            if paused > 0:
                raise RateLimited(endpoint, paused, reserved=False, now=self.redis_now())
            return
        n, w = self._window or (0, 0.0)
        script_keys = [self.pause_key, self.aims_key, self.log_key if self._window else self.aims_key]
        args: list = [self.horizon, n, w, secrets.token_hex(8)]
        if bucket is not None:
            script_keys.append(bucket[0])
            args += [bucket[1], BURST_SECONDS]
        raw_wait, raw_now = self._acquire(keys=script_keys, args=args)
        answer, now = float(raw_wait), float(raw_now)
        self._offset = now - time.time()
        if answer == 0:
            return
        wait = abs(answer)
        if self.metrics is not None:
            self.metrics.rate_limit_wait(endpoint, wait)
        if answer > 0:
            raise RateLimited(endpoint, answer, reserved=False, now=now)
        if wait > SLEEP_UNDER_SECONDS and endpoint in REQUEUE_ENDPOINTS and bucket is not None:
            raise RateLimited(endpoint, wait, reserved=True, now=now)
        time.sleep(wait)
        if self._window is not None and self.redis_now() - (now + wait) > self._late_tolerance:
            # Woke too late (a busy host): landing now could crowd the next window; ask again.
            return self.acquire(endpoint)
        if wait > SLEEP_UNDER_SECONDS / 5:
            # A 429 may have come while this call slept on its token: look again, in Redis itself.
            self._pause_checked_until = 0.0
            paused = self._paused_for()
            if paused > 0:
                raise RateLimited(endpoint, paused, reserved=False, now=self.redis_now())

    def _paused_for(self) -> float:
        """Seconds the fleet is paused for, read from Redis (on its clock) at most every
        PAUSE_CHECK_SECONDS per process, so calls no limit counts cost no round trip of their own."""
        now = time.monotonic()
        if now >= self._pause_checked_until:
            self._pause_remaining_at = (now, float(self._paused(keys=[self.pause_key])))
            self._pause_checked_until = now + PAUSE_CHECK_SECONDS
        checked_at, remaining = self._pause_remaining_at
        return max(0.0, remaining - (now - checked_at))

    def pause(self, endpoint: str, retry_after: float | None) -> None:
        """The downstream said 429 to a call to ``endpoint``: hold every worker of this tenant back for
        ``retry_after``, and aim lower on the limit that let the call through."""
        if self.metrics is not None:
            self.metrics.throttled(endpoint)
        endpoint = "lookup" if endpoint == "get" else endpoint
        bucket = self._endpoints.get(endpoint)
        limit = bucket[0] if bucket else (self.log_key if self._window else None)
        self._pause(keys=[self.pause_key, self.aims_key, *([limit] if limit else [])],
                    args=[retry_after or DEFAULT_PAUSE_SECONDS, AIM_STEP, AIM_FLOOR, AIM_MEMORY_SECONDS])
        self._pause_checked_until = 0.0  # this process heard it first: look again at once
