"""Injected failures for the v2 routes: outage, rate limits, hangs, 503s, 521s and latency.

The checks run in a fixed order (outage, rate limits, hang, 503, 521, latency) so that a test can reason about
which fault a request met. All sleeping happens here, before the handler touches the store, so a slow request
never holds the database lock.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .config import SimulatorConfig

BUSY_MESSAGE = "Multiple actions are running for the same customer. Please try after some time."


@dataclass(frozen=True)
class FaultResponse:
    """A response the fault layer gives instead of the real handler's."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def error_body(code: int, message: str) -> dict[str, Any]:
    return {"errors": [{"status": False, "code": code, "message": message}], "warnings": []}


class TokenBucket:
    """Classic token bucket; ``capacity`` is the allowed burst, ``rate`` the refill in tokens per second."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait_seconds(self) -> float:
        """How long until one token is available (0 if one is available now)."""
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


class RateLimiter:
    """One global bucket (requests per second) and one bucket per endpoint (requests per minute).

    A request takes a token from both buckets or from neither, so a refusal by one bucket does not drain the
    other. Buckets are rebuilt, full, whenever the configured rate changes.
    """

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, TokenBucket] = {}

    def acquire(self, config: SimulatorConfig, endpoint: str) -> float:
        """Take a token; return 0 on success, else the seconds to wait before retrying."""
        wanted = {"*": config.rate_limit_rps, endpoint: config.rate_limits.get(endpoint, 0) / 60}
        with self._lock:
            now = self._clock()
            buckets = [self._bucket(name, rate, now) for name, rate in wanted.items() if rate > 0]
            wait = max((bucket.wait_seconds() for bucket in buckets), default=0.0)
            if wait > 0:
                return wait
            for bucket in buckets:
                bucket.tokens -= 1
            return 0.0

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()

    def _bucket(self, name: str, rate: float, now: float) -> TokenBucket:
        bucket = self._buckets.get(name)
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[name] = TokenBucket(rate, max(1.0, rate), now)
        else:
            bucket.refill(now)
        return bucket


class Faults:
    """Decides, per v2 request, whether to fail it, and sleeps for hangs and latency."""

    def __init__(self, seed: int | None = None, sleep=time.sleep) -> None:
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._sleep = sleep
        self.limiter = RateLimiter()

    def reseed(self, seed: int | None) -> None:
        with self._rng_lock:
            self._rng.seed(seed)

    def before_request(self, config: SimulatorConfig, endpoint: str) -> FaultResponse | None:
        """Apply the faults for one request; return a response to send instead, or None to proceed.

        A hung request sleeps for ``hang_seconds`` and is then handled normally, like a real server that was
        slow to answer: the client may have timed out, but the write still happens.
        """
        if config.outage:
            return FaultResponse(503, error_body(503, "Service unavailable (simulated outage)"))
        wait = self.limiter.acquire(config, endpoint)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            return FaultResponse(
                429, error_body(429, "Rate limit exceeded"), {"Retry-After": str(retry_after)}
            )
        hang, fail, busy, jitter = self._draws()
        if hang < config.hang_rate:
            self._sleep(config.hang_seconds)
            return None
        if fail < config.error_rate:
            return FaultResponse(503, error_body(503, "Service unavailable (simulated)"))
        if busy < config.error_521_rate:
            return FaultResponse(521, error_body(521, BUSY_MESSAGE))
        delay_ms = max(0.0, config.latency_ms + (2 * jitter - 1) * config.effective_jitter_ms)
        if delay_ms > 0:
            self._sleep(delay_ms / 1000)
        return None

    def _draws(self) -> tuple[float, float, float, float]:
        """Always draw the same four numbers so a seeded run is reproducible whatever the rates are."""
        with self._rng_lock:
            return self._rng.random(), self._rng.random(), self._rng.random(), self._rng.random()
