"""One item's life in the worker, without Celery: load, upsert, decide retry, record once.

The task wrapper in :mod:`worker.tasks` only turns the :class:`ItemStep` answered here into
Celery calls (retry later, enqueue the next item of a chain, start the job's finish).

Three kinds of "later", kept apart because only one of them is the item's fault:

* a transient downstream failure (but 429): retried with exponential backoff and jitter, honouring
  Retry-After, and counted: after ``ITEM_MAX_ATTEMPTS`` the item fails (code 9001);
* no rate-limit token, a 429, or another job's item holding one of its identifiers: requeued with a
  countdown, not counted, so waiting for a slow endpoint never fails an item;
* a message taken again and again without an outcome (the worker died each time): after
  :data:`MAX_DELIVERIES` the item fails (code 9004) instead of killing workers forever.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from worker.client import DownstreamError, PermanentError, RetryableError
from worker.context import WorkerContext
from worker.jobs import identifier_keys
from worker.jobstore import CANCELLED as JOB_CANCELLED
from worker.jobstore import JobStore
from worker.logs import CURRENT, mask_value
from worker.ratelimit import RateLimited, holding
from worker.upsert import CANCELLED, FAILED, ItemOutcome, error, upsert_customer

log = logging.getLogger(__name__)

CODE_RETRIES_EXHAUSTED = 9001
CODE_CANCELLED = 9002
CODE_DOWNSTREAM_REFUSED = 9003
CODE_REDELIVERED = 9004

#: Takes of one message (same item, same retry) before the item is given up as poison.
MAX_DELIVERIES = 4
#: How long to wait before trying again for identifiers another job's item holds.
LOCK_WAIT_SECONDS = (0.2, 1.0)


@dataclass(frozen=True)
class ItemStep:
    """What must happen after one run of an item."""

    retry_in: float | None = None
    next_attempt: int = 1
    reserved: dict[str, list[float]] | None = None  # rate-limit tokens the next run holds: due times
    next_index: int | None = None
    finish_job: bool = False


class StoreJournal:
    """The item's journal in the job store; what earlier runs wrote came with the item's input."""

    def __init__(self, store: JobStore, job_id: str, index: int, created_id: int | None,
                 add_in_doubt: bool = False) -> None:
        self.store, self.job_id, self.index = store, job_id, index
        self._created = created_id
        self._in_doubt = add_in_doubt

    def created_id(self) -> int | None:
        return self._created

    def record_created(self, user_id: int) -> None:
        self.store.record_created(self.job_id, self.index, user_id)
        self._created, self._in_doubt = user_id, False

    def add_in_doubt(self) -> bool:
        return self._in_doubt

    def mark_add_in_doubt(self) -> None:
        self.store.record_created(self.job_id, self.index, None)
        self._created, self._in_doubt = None, True


def run_item(ctx: WorkerContext, job_id: str, index: int, attempt: int = 1, delivery: str = "0",
             reserved: dict[str, list[float]] | None = None) -> ItemStep:
    token = CURRENT.set((job_id, index))
    try:
        return _run_item(ctx, job_id, index, attempt, delivery, reserved)
    finally:
        CURRENT.reset(token)


def _run_item(ctx: WorkerContext, job_id: str, index: int, attempt: int, delivery: str,
              reserved: dict[str, list[float]] | None) -> ItemStep:
    store = ctx.store
    work = store.load_item(job_id, index, delivery)
    if work.header is None:
        log.warning("job %s is gone; dropping item %s", job_id, index)
        return ItemStep()
    if work.already_done:
        return _after_redelivery(store, job_id, index)

    if work.header.state == JOB_CANCELLED:
        outcome = ItemOutcome(CANCELLED, errors=[error(CODE_CANCELLED, "the job was cancelled before this item ran")])
    elif work.element is None:
        outcome = ItemOutcome(FAILED, errors=[error(10000, "the item's input is missing from the job store")])
    elif work.deliveries > MAX_DELIVERIES:
        log.error("job %s item %s taken %s times without an outcome; giving it up", job_id, index, work.deliveries)
        outcome = ItemOutcome(FAILED, errors=[error(
            CODE_REDELIVERED,
            f"the item was taken {work.deliveries - 1} times by workers that stopped before finishing it",
        )])
    else:
        owner = f"{job_id}:{index}"
        locks = ctx.locks.keys(work.header.tenant, identifier_keys(work.element))
        if not ctx.locks.acquire(locks, owner):
            return ItemStep(retry_in=random.uniform(*LOCK_WAIT_SECONDS), next_attempt=attempt)
        held: dict[str, list[float]] = {}
        try:
            with holding(reserved) as held:
                outcome = upsert_customer(
                    ctx.client_for(work.header.tenant),
                    work.element,
                    skip_change_identifier=work.header.skip_change_identifier,
                    priority=ctx.settings.identifier_priority,
                    journal=StoreJournal(store, job_id, index, work.created_id, work.add_in_doubt),
                )
        except RateLimited as exc:
            # Tokens reserved but not used this run travel on with the item, so a run that redoes
            # an update before reaching its reserved changeIdentifier cannot starve itself.
            carry = {k: v for k, v in held.items() if v}
            if exc.reserved:
                carry[exc.endpoint] = [*carry.get(exc.endpoint, []), exc.due]
                return ItemStep(retry_in=exc.wait, next_attempt=attempt, reserved=carry)
            wait = min(ctx.settings.max_countdown_seconds, exc.wait * random.uniform(1.0, 1.5))
            return ItemStep(retry_in=wait, next_attempt=attempt, reserved=carry or None)
        except RetryableError as exc:
            if exc.status == 429:
                # Throttled: the fleet is paused (see ratelimit); not the item's fault, not an attempt.
                wait = min(ctx.settings.max_countdown_seconds, (exc.retry_after or 1.0) * random.uniform(1.0, 1.5))
                return ItemStep(retry_in=wait, next_attempt=attempt)
            if attempt < ctx.settings.item_max_attempts:
                delay = backoff_seconds(attempt, exc.retry_after, ctx.settings.retry_base_seconds,
                                        min(ctx.settings.retry_max_seconds, ctx.settings.max_countdown_seconds))
                log.info("job %s item %s attempt %s failed (%s); retrying in %.1fs",
                         job_id, index, attempt, exc.message, delay)
                return ItemStep(retry_in=delay, next_attempt=attempt + 1)
            outcome = ItemOutcome(FAILED, errors=[gave_up_error(exc, attempt)])
        except PermanentError as exc:
            outcome = ItemOutcome(FAILED, errors=[error(exc.code or exc.status or CODE_DOWNSTREAM_REFUSED,
                                                        exc.message)])
        finally:
            ctx.locks.release(locks, owner)

    item = outcome.as_item(index)
    if outcome.failed:
        item["input"] = work.element  # so the failed export can be resubmitted as it is
    recorded, last, next_index = store.record_outcome(job_id, index, item, failed=outcome.failed)
    if recorded:
        log.info("item %s entity=%s identifiers=[%s]%s", outcome.action, outcome.entity_id,
                 _masked_identifiers(work.element),
                 "".join(f" error {e.get('code')}: {e.get('message')}" for e in item["errors"]))
    return ItemStep(next_index=next_index, finish_job=last)


def _masked_identifiers(element) -> str:
    return ", ".join(f"{kind}={mask_value(kind, value)}" for kind, value, _s, _a in identifier_keys(element))


def _after_redelivery(store: JobStore, job_id: str, index: int) -> ItemStep:
    """The outcome was recorded by a run that may have died before it handed on its work.

    Hand it on again: the next item of the chain (a no-op if that one ran already) and the job's
    finish (which sets the final state only once).
    """
    job = store.get_job(job_id) or {}
    complete = job.get("processedCount") == job.get("totalCount") and not job.get("finishedAt")
    return ItemStep(next_index=store.next_in_chain(job_id, index), finish_job=complete)


def backoff_seconds(attempt: int, retry_after: float | None, base: float, cap: float) -> float:
    """Exponential backoff with jitter, never sooner than the downstream's Retry-After."""
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after:
        delay = max(delay, min(retry_after, cap))
    return delay


def gave_up_error(exc: DownstreamError, attempts: int) -> dict:
    status = f"HTTP {exc.status}" if exc.status else "no HTTP answer"
    return error(
        CODE_RETRIES_EXHAUSTED,
        f"gave up after {attempts} attempts on transient downstream failures; last: {exc.message} ({status})",
    ) | {"lastStatus": exc.status, "attempts": attempts}
