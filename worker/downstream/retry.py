"""Every "try again later" of the service, in one place.

=====================================================  ====================================  ==================
What went wrong                                        What happens                          Counted?
=====================================================  ====================================  ==================
one call: a 502/503/504/521, a refused connection       the client tries it again in place,   no
                                                       twice, 50 to 200 ms apart
an item: a transient failure (the above, once more,     the item goes back to the scheduler   yes: after
a timeout)                                             for :meth:`RetryPolicy.backoff`       ITEM_MAX_ATTEMPTS,
                                                                                             error 9001
a 429 (:class:`~worker.downstream.client.ThrottledError`)          its endpoint pauses, fleet-wide, for  no
                                                       its Retry-After and its learned rate
                                                       is cut (worker/downstream/ratelimit.py); the
                                                       item goes back for about as long
no rate-limit token for a while                         the item goes back until its token    no
                                                       is due, holding it
identifiers held by another job's item                  the item goes back for 0.2 to 1 s     no
a worker dying under the item                           its lease lapses; handed out again    yes: after 4
                                                       (worker/dispatch/scheduler.py)                 lapses, 9004
the completion callback: 5xx, 408, 429, no answer       tried again, due in Redis             for 24 h
                                                       (:func:`callback_delay`), by any
                                                       worker alive
the job store unreachable                               the task waits for it                 120 s
                                                       (:func:`store_outage_pauses`)
=====================================================  ====================================  ==================

Every wait is jittered, so many items that failed together do not come back together.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from worker.settings import Settings

#: In-place retries of one call on a 502/503/504/521 or a refused connection, before the failure goes
#: up to the item. Short gateway hiccups are common and cheap to ride out; without this, an item of
#: five calls at 20% errors would fail whole attempts most of the time. Timeouts and 429s are not
#: retried in place: the first already cost a full timeout, the second must slow the whole fleet.
QUICK_RETRIES = 2
QUICK_RETRY_SECONDS = (0.05, 0.2)

#: How long an item whose identifiers another job's item holds waits before it tries again.
LOCK_WAIT_SECONDS = (0.2, 1.0)

#: An item deferred for a reserved rate-limit token comes back this much before the token is due:
#: the time to be dispatched again and redo its lookups. It then waits out the rest in place.
REQUEUE_LEAD_SECONDS = 0.3
REQUEUE_LEAD_MAX_SECONDS = 0.6

#: A callback is tried until it is delivered, refused for good, or this long after the job ended.
CALLBACK_PATIENCE_SECONDS = 24 * 3600.0
CALLBACK_MAX_SECONDS = 300.0

STORE_PATIENCE_SECONDS = 120.0


@dataclass(frozen=True)
class RetryPolicy:
    """An item's retries on transient downstream failures: ``ITEM_MAX_ATTEMPTS`` attempts,
    ``RETRY_BASE_SECONDS`` x 2^(attempt-1) apart, capped at ``RETRY_MAX_SECONDS``."""

    max_attempts: int = 8
    base_seconds: float = 1.0
    max_seconds: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.item_max_attempts, settings.retry_base_seconds, settings.retry_max_seconds)

    def gives_up_after(self, attempt: int) -> bool:
        return attempt >= self.max_attempts

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Exponential backoff with jitter (between half and all of the step), never sooner than the
        downstream's Retry-After, never longer than the cap."""
        ceiling = min(self.max_seconds, self.base_seconds * (2 ** (attempt - 1)))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after:
            delay = max(delay, min(retry_after, self.max_seconds))
        return delay


def quick_retry_pause() -> float:
    return random.uniform(*QUICK_RETRY_SECONDS)


def throttled_delay(retry_after: float | None) -> float:
    """After a 429: the downstream's Retry-After (a second when it gave none), and a little more."""
    return (retry_after or 1.0) * random.uniform(1.0, 1.5)


def rate_limited_delay(wait: float, *, reserved: bool, ahead: float = 0.0) -> float:
    """No token for ``wait`` seconds: come back a little before a reserved one is due (and before
    that, ``ahead``: what the run took to reach the token, as it must be done again, up to
    :data:`REQUEUE_LEAD_MAX_SECONDS`); without one, a little after the wait, so that the items which
    waited together do not ask together."""
    if reserved:
        return max(0.0, wait - REQUEUE_LEAD_SECONDS - min(ahead * 1.2, REQUEUE_LEAD_MAX_SECONDS))
    return wait * random.uniform(1.0, 1.5)


def identifiers_locked_delay() -> float:
    return random.uniform(*LOCK_WAIT_SECONDS)


def callback_delay(attempt: int) -> float:
    """Exponential with full jitter: 2^attempt seconds at most, capped."""
    return random.uniform(0.5, 1.0) * min(CALLBACK_MAX_SECONDS, 2.0 ** attempt)


def store_outage_pauses(patience: float = STORE_PATIENCE_SECONDS) -> Iterator[float]:
    """Pauses between tries while Redis is unreachable: from 0.2 s, doubling to 5 s, jittered, for
    ``patience`` seconds in all; then the caller gives up (the item's lease brings it back)."""
    spent, delay = 0.0, 0.2
    while spent < patience:
        pause = delay * random.uniform(0.8, 1.2)
        spent += pause
        yield pause
        delay = min(delay * 2, 5.0)
