"""Downstream rate limits shared by every worker on every host, in Redis, on Redis's clock.

**Each endpoint's rate is learned** (lookup, add, update, changeIdentifier; a read by id counts as a
lookup), per tenant, fleet-wide: one token bucket per endpoint in Redis, whose rate the downstream's
own answers set, as TCP's congestion control and the AWS SDKs' adaptive retry mode do:

* it **starts** from the endpoint's configured limit (``CAPILLARY_RATE_LIMITS``, per minute, as the
  vendor states them), or from ``CAPILLARY_RATE_START`` when none is configured;
* until its first 429 it **doubles every second** the endpoint is busy (callers wait for tokens): a
  slow start that finds an unknown limit in a few seconds;
* **a 429 cuts it** to :data:`CUT_SHARE` of the rate the endpoint was granted over the last seconds
  (:data:`MEASURE_SECONDS`), and pauses that endpoint, fleet-wide, for the ``Retry-After`` the
  downstream gave (:data:`DEFAULT_PAUSE_SECONDS` without one). One cut per throttling episode: the
  429s of calls already in flight cut nothing more (:data:`CUT_GUARD_SECONDS`);
* while calls succeed and the endpoint is busy it **climbs back additively**: by
  :data:`INCREASE_SHARE` of the rate it was cut from, every second, up to that rate, then slower
  (:data:`PROBE_SHARE`), probing for more;
* a configured limit is a **ceiling** the learned rate never passes;
* the state lives in Redis, so every worker shares it and a restart keeps it; it expires after
  ``CAPILLARY_RATE_MEMORY_SECONDS`` without use, so a stale rate does not last for ever.

``CAPILLARY_RATE_LEARNING=off`` pins the rates: a configured limit is held as it is, and an endpoint
without one is not limited (a 429 still pauses it).

A 429 pauses only the endpoint that got it, so adds held back by their limit never hold back
updates. Under the all-endpoints limit (``CAPILLARY_MAX_RPS``), a 429 may be that limit's, so it
pauses the tenant's whole fleet, and aims that limit lower (5% per 429, to at most 30% under it, for
ten minutes) when the endpoint has no configured limit.

Each call passes the all-endpoints limit and its endpoint's bucket in one script and so one round
trip. A slow start that holds no one back is skipped by each process for a while (:data:`FREE_SECONDS`);
one that holds callers back hands a process that must wait up to :data:`SLOW_START_SPARES` spare tokens
with its own, each spaced as a call of its own would have been, which its next calls use without a
round trip each. The scripts read Redis's own clock, and every reply carries it, so reserved tokens fall due at
the same moment for every host whatever their clocks say.

**The all-endpoints limit is strict**: a log of call times, in which a call is granted no sooner
than a window after the call ``max_rps`` places before it, so no second ever sees more than
``max_rps`` calls (a token bucket lets a burst through on top of its rate). The window keeps a
small margin (:data:`WINDOW_MARGIN_SHARE`, :data:`WINDOW_MARGIN_SECONDS`) for the jitter between a
grant and the call's arrival downstream (a busy host delays a thread by tens of milliseconds),
which is what it costs: about 88% of ``max_rps`` is used. A call that wakes from its wait later
than the margin takes a fresh grant instead of landing among the next window's calls.

**Endpoint buckets** hold half a second of tokens, so bursts stay well inside the downstream's own
bucket (the simulator, like most gateways, allows about a second's worth).

A call that finds no token reserves the next free one (waiters line up instead of stampeding), but
no further ahead than :data:`LEARNED_HORIZON_SECONDS` while the rate is learned: a token reserved
far ahead would be spent at a rate since cut or grown. A write that must wait for its own
endpoint's limit does not sleep on its worker slot: it raises :class:`RateLimited` and the item
goes back to the scheduler until a little before its token is due
(:data:`worker.retry.REQUEUE_LEAD_SECONDS`), so a slot is never held by an ``add`` that waits while
an ``update`` could run (in a slow start, whose waits are short and soon gone, it sleeps through up
to :data:`SLOW_START_SLEEP_SECONDS` in place); the requeued run passes its token back to
:meth:`RateLimiter.acquire`, which waits out the last moment. A reserved bucket token is used even somewhat late
(:data:`LATE_TOLERANCE_SECONDS`, half a second): later than that, spending it would land as a burst
the downstream answers with 429s, so it is dropped and a fresh one taken; under the strict limit the
tolerance is its margin. Waits for lookups or for the all-endpoints limit are slept in place (see
:data:`REQUEUE_ENDPOINTS`), the item's lease kept alive meanwhile. Waits beyond the horizon reserve
nothing: the item is requeued and looks again later.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import redis

from worker import lua_scripts
from worker.downstream import keys

if TYPE_CHECKING:
    from worker.settings import Settings


class LimitObserver(Protocol):
    """What the limiter reports (worker/metrics.py's ``Metrics`` is one): time waited for tokens, and
    429s. A protocol, so that the metrics module may read the limiter's state without a circle."""

    def rate_limit_wait(self, endpoint: str, seconds: float) -> None: ...

    def throttled(self, endpoint: str) -> None: ...

SLEEP_UNDER_SECONDS = 0.25
BURST_SECONDS = 0.5
#: The longest an item that came back early for a reserved token (worker/downstream/retry.py) sleeps for it.
EARLY_SLEEP_SECONDS = 1.0
#: The all-endpoints limit learns from 429s: each one lowers its aim by this much, down to the
#: floor; the lowered aim lasts this long after the last 429.
AIM_STEP = 0.95
AIM_FLOOR = 0.7
AIM_MEMORY_SECONDS = 600
#: How stale a process's view of a 429 pause may be, for calls that no bucket limits.
PAUSE_CHECK_SECONDS = 0.5
DEFAULT_PAUSE_SECONDS = 1.0

#: Learning an endpoint's rate (see the module's doc). Before its first 429 the rate grows by this
#: factor per second the endpoint is busy.
SLOW_START_GROWTH = 4.0
#: A 429 cuts the rate to this share of the rate calls went out at over the last MEASURE_SECONDS,
#: less the ones refused (or of the rate itself, if lower), and to no less than half the rate: low
#: enough to drain the downstream's bucket, not so low that the climb back wastes much of the limit.
CUT_SHARE = 0.8
#: The climb back, per busy second, as a share of the rate the last cut measured: up to that rate,
#: then slower, probing past it (a limit found once is likely where it was).
INCREASE_SHARE = 0.1
PROBE_SHARE = 0.05
#: The rate calls go out at is an exponentially weighted count over about this many seconds.
MEASURE_SECONDS = 2.0
#: A slow start's rate never grows past this many times the rate calls went out at lately; a found
#: rate (one a 429 cut) past FOUND_GROWTH_HEADROOM times it: a rate calls do not use is not known to
#: be allowed, and spending it at once later would land as a burst.
GROWTH_HEADROOM = 2.0
FOUND_GROWTH_HEADROOM = 1.25
#: A process skips a bucket in its slow start for FREE_SECONDS when the bucket holds no one back
#: (see lua/take_token.lua): calls that no limit holds cost no round trip each.
FREE_SECONDS = 1.0
#: After a cut, no other cut until this long after its pause ends: the 429s of calls already under
#: way, or of tokens reserved before the cut, are the same episode.
CUT_GUARD_SECONDS = 2.0
#: The learned rate never drops below this (calls per second): an endpoint always gets a call through.
MIN_RATE = 0.1
#: How far ahead a bucket reserves tokens while a found rate climbs back (or probes): a changed rate
#: spaces only the tokens after the ones reserved. Further would keep an old pace longer; nearer
#: would make more of the items that wait come back without a token, and look their customers up
#: again. A slow start reserves as far as any bucket, each token spaced at the rate projected for
#: its time; a configured ceiling reached, too.
CLIMB_HORIZON_SECONDS = 6.0

#: A wait for a token of a bucket in its slow start is slept in place up to this long, even by an item
#: that would otherwise hand its slot on at once: the rate grows fourfold a second while callers wait,
#: so such waits are short and gone within seconds, and handing the item back would cost it its
#: lookups again and about 40 Redis commands. Measured on a fresh store (3,000 new customers, 32
#: threads), handing every such wait back made a third of the items come back, with no add going out
#: for three seconds while their tokens, spaced at the rate projected for their time, fell due.
SLOW_START_SLEEP_SECONDS = 2.0
#: While a slow start holds callers back (no limit configured for the endpoint, none for all of them),
#: a process's call that must wait for its token also reserves up to this many spare tokens, due no
#: later than a caller sleeps in place, which its next calls use without a round trip each. Measured on
#: a fresh store (3,000 new customers, 32 threads, 20 ms): every call through the bucket's script in
#: the first seconds cost the job about 7,000 Redis commands, 2.4 an item; with spares the first job
#: costs about 1,000 commands more than the next (5.1 an item against 4.8, bench/redis_cost.py).
SLOW_START_SPARES = 8
#: Write endpoints: an item that must wait long for one of these is requeued holding a reserved
#: token. Lookups and the all-endpoints limit are waited out in place: every item needs them
#: first, so requeueing for them would only restart the item at its first lookup, forever.
REQUEUE_ENDPOINTS = frozenset({"add", "update", "changeIdentifier"})
#: The endpoints whose rates are learned (a read by id counts as a lookup).
ENDPOINTS = ("lookup", "add", "update", "changeIdentifier")

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

#: Tokens an item reserved on earlier runs, by endpoint: the epoch seconds each one is due, and the
#: epoch of its bucket (a cut voids the tokens reserved before it). The item carries them in its memo
#: and hands them to :meth:`RateLimiter.acquire`, which uses them up.
Reserved = dict[str, list[tuple[float, int]]]


#: Where an endpoint without a configured limit starts, in calls a minute (``CAPILLARY_RATE_START``):
#: reads are commonly allowed ten times the writes.
DEFAULT_START = {"lookup": 6000.0, "add": 1200.0, "update": 1200.0, "changeIdentifier": 1200.0}


@dataclass(frozen=True)
class Learning:
    """How endpoint rates are learned (``CAPILLARY_RATE_LEARNING``, ``CAPILLARY_RATE_START``,
    ``CAPILLARY_RATE_MEMORY_SECONDS``); the same for every tenant."""

    enabled: bool = True
    start: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_START))  # per minute
    memory_seconds: float = 3600.0

    def start_per_minute(self, endpoint: str) -> float:
        return self.start.get(endpoint) or DEFAULT_START.get(endpoint) or DEFAULT_START["add"]


def learning_of(settings: Settings) -> Learning:
    return Learning(settings.capillary_rate_learning, DEFAULT_START | dict(settings.capillary_rate_start),
                    settings.capillary_rate_memory_seconds)


@dataclass(frozen=True)
class EndpointRate:
    """What the fleet knows of one endpoint of one tenant, for /metrics, /ui/ and the ETA.

    ``per_minute``: the rate calls are let through at now (None: not limited); ``found``: it came from
    the downstream's own answers (a 429 was seen, or it is the configured ceiling), not a slow start
    still looking; ``throttled`` and ``waited_seconds``: 429s seen and seconds calls waited for tokens
    while the state lasts."""

    per_minute: float | None
    ceiling_per_minute: float | None
    found: bool
    throttled: int
    waited_seconds: float


class RateLimited(Exception):
    """No token for a while: requeue the item after ``wait`` seconds rather than hold a worker slot.

    ``reserved``: a token for ``endpoint`` is already taken for the item, due after ``wait``;
    the next run passes it back to :meth:`RateLimiter.acquire` instead of asking again.
    """

    def __init__(self, endpoint: str, wait: float, *, reserved: bool, now: float | None = None,
                 epoch: int = 0) -> None:
        super().__init__(f"{endpoint}: rate limited for {wait:.2f}s")
        self.endpoint = endpoint
        self.wait = wait
        self.reserved = reserved
        self.epoch = epoch
        #: when the reserved token is due, on Redis's clock (every worker reads the same one)
        self.due = (time.time() if now is None else now) + wait


def window(max_rps: float) -> tuple[int, float]:
    """The strict all-endpoints limit as at most ``n`` calls in any window of ``w`` seconds: whole
    calls per second, or one call per ``1/max_rps`` seconds below one a second; the window keeps a
    margin for jitter, so arrivals downstream keep to ``max_rps`` in every second too."""
    n, w = (int(max_rps), 1.0) if max_rps >= 1 else (1, 1.0 / max_rps)
    return n, w * (1 + WINDOW_MARGIN_SHARE) + WINDOW_MARGIN_SECONDS


def bucket_key(tenant_id: str, endpoint: str) -> str:
    return f"{keys.rate_limit_prefix(tenant_id)}:{endpoint}"


def learned_rates(client: redis.Redis, tenant_id: str, per_minute: Mapping[str, float],
                  learning: Learning) -> dict[str, EndpointRate]:
    """Each endpoint's rate for one tenant, as the fleet holds it now, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for endpoint in ENDPOINTS:
        pipe.hmget(bucket_key(tenant_id, endpoint), "rate", "base", "throttled", "waited")
    rates = {}
    for endpoint, (rate, base, throttled, waited) in zip(ENDPOINTS, pipe.execute(), strict=True):
        ceiling = per_minute.get(endpoint)
        if not learning.enabled:
            current, found = ceiling, ceiling is not None
        elif rate is not None:
            current = float(rate) * 60
            current = min(current, ceiling) if ceiling else current
            found = base is not None or current == ceiling
        else:
            current = ceiling or learning.start_per_minute(endpoint)
            found = ceiling is not None
        rates[endpoint] = EndpointRate(current, ceiling, found, int(throttled or 0), float(waited or 0.0))
    return rates


class RateLimiter:
    """A tenant's limits, shared by every worker: the all-endpoints limit (``CAPILLARY_MAX_RPS``),
    strict per window, and a learned bucket per endpoint, ``CAPILLARY_RATE_LIMITS`` its ceilings.
    Times come from Redis's clock: each reply carries it, and the process keeps its offset from its
    own."""

    def __init__(self, client: redis.Redis, tenant_id: str, *, max_rps: float = 0.0,
                 per_minute: Mapping[str, float] | None = None, horizon: float = 30.0,
                 metrics: LimitObserver | None = None, learning: Learning | None = None) -> None:
        self.redis = client
        self.learning = learning or Learning()
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
        limits = per_minute or {}
        names = ENDPOINTS if self.learning.enabled else tuple(limits)
        #: endpoint -> (bucket key, ceiling per second, 0 for none)
        self._endpoints = {name: (bucket_key(tenant_id, name), limits.get(name, 0.0) / 60.0) for name in names}
        self._acquire = lua_scripts.register(client, "take_token")
        self._pause = lua_scripts.register(client, "throttled")
        self._paused = lua_scripts.register(client, "pause_left")
        #: endpoint -> (look again after, looked at, seconds paused then, the bucket's epoch, slow start)
        self._pause_checks: dict[str, tuple[float, float, float, str, bool]] = {}
        #: reserved tokens used (and calls made without a token while a bucket lets this process skip
        #: it), by endpoint, not yet counted in Redis as calls sent
        self._used: Counter[str] = Counter()
        #: endpoint -> (skip its bucket until, the bucket's epoch then): see FREE_SECONDS
        self._free: dict[str, tuple[float, str]] = {}
        #: endpoint -> spare tokens reserved in its slow start (SLOW_START_SPARES), in the order they fall
        #: due: (due, on Redis's clock; the bucket's epoch then)
        self._spares: dict[str, deque[tuple[float, int]]] = {}
        self._used_lock = threading.Lock()
        self._offset: float | None = None  # Redis's clock minus ours

    def endpoint_pause_key(self, endpoint: str) -> str:
        return f"{self.pause_key}:{endpoint}"

    def redis_now(self) -> float:
        if self._offset is None:
            seconds, micros = self.redis.time()
            self._offset = seconds + micros / 1e6 - time.time()
        return time.time() + self._offset

    def acquire(self, endpoint: str, reserved: Reserved | None = None, *,
                sleep_under: float = SLEEP_UNDER_SECONDS) -> None:
        """Take a token for one call to ``endpoint`` (or use one of ``reserved``); sleep through a
        wait under ``sleep_under``, raise :class:`RateLimited` on a longer one for a write, or while
        the endpoint is paused by a 429."""
        if endpoint == "get":  # reading a customer by id counts against the lookup limit
            endpoint = "lookup"
        # A token reserved when the item was requeued: not counted as a wait, its sleep is the tail of
        # the wait counted whole then.
        if (reserved and reserved.get(endpoint)
                and self._use_reserved(endpoint, reserved[endpoint].pop(0), EARLY_SLEEP_SECONDS, counted=False)):
            return
        spare = self._spare(endpoint)
        if spare is not None:
            if self._use_reserved(endpoint, spare, SLOW_START_SLEEP_SECONDS, counted=True):
                return
            self._spares.pop(endpoint, None)  # all reserved under the same bucket: none is good now
        bucket = self._endpoints.get(endpoint)
        free = self._free.get(endpoint)
        if free is not None:
            paused, current, _slow = self._pause_check(endpoint)
            if paused > 0:
                raise RateLimited(endpoint, paused, reserved=False, now=self.redis_now())
            if time.monotonic() < free[0] and current == free[1]:
                with self._used_lock:
                    self._used[endpoint] += 1
                return
            self._free.pop(endpoint, None)  # another thread may have let it go first
        if self._window is None and bucket is None:
            self._raise_if_paused(endpoint)
            return
        n, w = self._window or (0, 0.0)
        learning = self.learning
        script_keys = [self.pause_key, self.endpoint_pause_key(endpoint), self.aims_key,
                       self.log_key if self._window else self.aims_key]
        args: list = [self.horizon, n, w, secrets.token_hex(8), int(learning.enabled),
                      learning.start_per_minute(endpoint) / 60.0, SLOW_START_GROWTH, INCREASE_SHARE, PROBE_SHARE,
                      MEASURE_SECONDS, learning.memory_seconds, CLIMB_HORIZON_SECONDS]
        if bucket is not None:
            script_keys.append(bucket[0])
            args += [bucket[1], BURST_SECONDS, self._take_used(endpoint), SLOW_START_SPARES,
                     SLOW_START_SLEEP_SECONDS]
        raw_wait, raw_now, raw_epoch, raw_free, raw_slow, raw_spares = self._acquire(keys=script_keys, args=args)
        answer, now = float(raw_wait), float(raw_now)
        self._offset = now - time.time()
        if raw_spares:
            with self._used_lock:
                self._spares.setdefault(endpoint, deque()).extend(
                    (now + float(wait), int(raw_epoch)) for wait in raw_spares)
        if answer == 0:
            if raw_free == "1":
                self._free[endpoint] = (time.monotonic() + FREE_SECONDS, str(raw_epoch))
                self._spares.pop(endpoint, None)
            return
        wait = abs(answer)
        if self.metrics is not None:
            self.metrics.rate_limit_wait(endpoint, wait)
        if answer > 0:
            raise RateLimited(endpoint, answer, reserved=False, now=now)
        # Under the all-endpoints limit, which every endpoint shares anyway, a learned bucket's waits are
        # slept in place: a token of that limit reserved ahead is kept only for its window's margin.
        requeue = bucket is not None and (self._window is None or bucket[1] > 0)
        if raw_slow == "1":
            sleep_under = max(sleep_under, SLOW_START_SLEEP_SECONDS)
        if wait > sleep_under and endpoint in REQUEUE_ENDPOINTS and requeue:
            raise RateLimited(endpoint, wait, reserved=True, now=now, epoch=int(raw_epoch))
        time.sleep(wait)
        if self._window is not None and self.redis_now() - (now + wait) > self._late_tolerance:
            # Woke too late (a busy host): landing now could crowd the next window; ask again.
            return self.acquire(endpoint)
        if bucket is not None:
            with self._used_lock:
                self._used[endpoint] += 1
        self._raise_if_paused(endpoint, self._slept_since(wait))

    def _use_reserved(self, endpoint: str, token: tuple[float, int], longest_sleep: float, *,
                      counted: bool) -> bool:
        """Use a token reserved earlier (``(due, epoch)``), sleeping until it is due (for no longer than
        ``longest_sleep``); False if it is no good any more: reserved before a cut, or too late."""
        due, epoch = token
        late = self.redis_now() - due
        paused, current, slow = self._pause_check(endpoint)
        if paused > 0:  # a 429 since it was reserved: the pause holds for reserved tokens too
            raise RateLimited(endpoint, paused, reserved=False, now=self.redis_now())
        # In a slow start no limit is known yet, so a late token lands in no burst that matters;
        # dropping it would only make its item wait again at the back.
        if not ((late <= self._late_tolerance or slow) and str(int(epoch)) == current):
            return False
        if late < 0:
            if counted and self.metrics is not None:
                self.metrics.rate_limit_wait(endpoint, -late)
            slept = min(-late, longest_sleep)
            time.sleep(slept)
            self._raise_if_paused(endpoint, self._slept_since(slept))
        with self._used_lock:
            self._used[endpoint] += 1
        return True

    def _spare(self, endpoint: str) -> tuple[float, int] | None:
        """The next spare token this process reserved for ``endpoint``, if any."""
        with self._used_lock:
            spares = self._spares.get(endpoint)
            return spares.popleft() if spares else None

    @staticmethod
    def _slept_since(wait: float) -> float:
        """When a sleep of ``wait`` seconds that just ended began (monotonic), if it was long enough for
        a 429 heard elsewhere meanwhile to matter; 0.0 otherwise."""
        return time.monotonic() - wait if wait > SLEEP_UNDER_SECONDS / 5 else 0.0

    def _raise_if_paused(self, endpoint: str, fresh_after: float = 0.0) -> None:
        """Raise :class:`RateLimited` while the endpoint is paused. A 429 may have come while the caller
        slept on its token (``fresh_after``: when it began): the pause is then read from Redis itself,
        unless another thread of this process read it since (a 429 this process heard is seen at once,
        as pause() forgets what it looked up)."""
        paused, _epoch, _slow = self._pause_check(endpoint, fresh_after)
        if paused > 0:
            raise RateLimited(endpoint, paused, reserved=False, now=self.redis_now())

    def _pause_check(self, endpoint: str, fresh_after: float = 0.0) -> tuple[float, str, bool]:
        """Seconds the endpoint (or the whole tenant) is paused for, its bucket's epoch and whether it is
        in its slow start, read from Redis (on its clock) at most every PAUSE_CHECK_SECONDS per process
        and endpoint, so calls no limit counts and reserved tokens cost no round trip of their own; read
        again if the last look is older than ``fresh_after`` (monotonic)."""
        now = time.monotonic()
        until, at, remaining, epoch, slow = self._pause_checks.get(endpoint, (0.0, 0.0, 0.0, "0", False))
        if now >= until or at < fresh_after:
            bucket = self._endpoints.get(endpoint)
            raw_left, epoch, raw_slow = self._paused(
                keys=[self.pause_key, self.endpoint_pause_key(endpoint), *([bucket[0]] if bucket else [])],
                args=[self._take_used(endpoint) if bucket else 0, MEASURE_SECONDS, bucket[1] if bucket else 0.0,
                      int(self.learning.enabled), self.learning.memory_seconds])
            remaining, at, epoch, slow = float(raw_left), now, str(epoch), bool(int(raw_slow))
            self._pause_checks[endpoint] = (now + PAUSE_CHECK_SECONDS, at, remaining, epoch, slow)
        return max(0.0, remaining - (now - at)), epoch, slow

    def _take_used(self, endpoint: str) -> int:
        with self._used_lock:
            return self._used.pop(endpoint, 0)

    def pause(self, endpoint: str, retry_after: float | None) -> None:
        """The downstream said 429 to a call to ``endpoint``: hold the endpoint back for ``retry_after``
        on every worker (the whole tenant under an all-endpoints limit, which may be the one refusing),
        and cut the endpoint's learned rate."""
        if self.metrics is not None:
            self.metrics.throttled(endpoint)
        endpoint = "lookup" if endpoint == "get" else endpoint
        bucket = self._endpoints.get(endpoint)
        own_pause = self.endpoint_pause_key(endpoint)
        lower = self.log_key if self._window and not (bucket and bucket[1]) else self.aims_key
        script_keys = [own_pause, self.pause_key if self._window else own_pause, self.aims_key, lower]
        if bucket is not None:
            script_keys.append(bucket[0])
        learning = self.learning
        self._pause(keys=script_keys,
                    args=[retry_after or DEFAULT_PAUSE_SECONDS, AIM_STEP, AIM_FLOOR, AIM_MEMORY_SECONDS,
                          int(learning.enabled), CUT_SHARE, MIN_RATE, MEASURE_SECONDS,
                          learning.start_per_minute(endpoint) / 60.0, bucket[1] if bucket else 0.0, CUT_GUARD_SECONDS,
                          learning.memory_seconds, self._take_used(endpoint) if bucket else 0])
        self._pause_checks.clear()  # this process heard it first: look again at once
        self._free.pop(endpoint, None)
        self._spares.pop(endpoint, None)  # the cut starts a new epoch: tokens reserved before it are void
