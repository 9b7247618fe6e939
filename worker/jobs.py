"""A job's end, without Celery: cancelling it, setting its final state, calling its callback."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from worker.downstream import retry
from worker.downstream.client import PermanentError, RetryableError
from worker.items import callbacks
from worker.store.jobstore import JobStore

if TYPE_CHECKING:  # the web process imports this module; it has no worker context
    from worker.context import WorkerContext

log = logging.getLogger(__name__)


def end_job(store: JobStore, job_id: str) -> bool:
    """Set the job's final state and start its keys' TTL; True only for the call that ended it."""
    if not store.end(job_id):
        return False
    job = store.get_job(job_id) or {}
    log.info("job %s %s: %s items, %s failed, %s cancelled", job_id, job.get("state"), job.get("totalCount"),
             job.get("failureCount"), job.get("cancelledCount"))
    return True


def cancel_job(store: JobStore, job_id: str) -> tuple[str | None, bool]:
    """Cancel: nothing more is dispatched, and every item that has not started is counted
    CANCELLED at once. Answers (the state before, whether the job ended now): a job with items
    still running ends when the last of them does."""
    before, idle = store.cancel(job_id)
    ended = idle and end_job(store, job_id)
    return before, ended


def send_callback(ctx: WorkerContext, job_id: str) -> str:
    """One attempt at POSTing the final job document to the job's callbackUrl.

    The callback is due in the store (``cu:callbacks``, scheduled by the job's end) until it is
    delivered, refused for good (a 4xx other than 408 and 429) or has failed for
    :data:`worker.downstream.retry.CALLBACK_PATIENCE_SECONDS`; a failed attempt schedules the next one there,
    so a worker that dies or restarts loses none (the leader sends what is due, see
    worker/dispatch/scheduler.py). Every attempt carries the same body, signature and ``Idempotency-Key``
    (the job id), so a receiver can tell a repeat. Answers what happened, for the task's result.
    """
    store = ctx.store
    url, tenant_id, attempts, first = store.job_fields(job_id, "callbackUrl", "tenant", "cb.attempts", "cb.first")
    attempt = int(attempts or 0) + 1
    tenant = ctx.tenants.get(tenant_id or "")
    job = store.get_job(job_id)
    if not url or tenant is None or job is None:
        store.callback_done(job_id, attempt - 1, "dropped")
        return "DROPPED: the job, its callbackUrl or its tenant is gone"
    try:
        callbacks.deliver(ctx.http, url, job, tenant)
    except RetryableError as exc:
        waited = time.time() - float(first or time.time())
        if waited >= retry.CALLBACK_PATIENCE_SECONDS:
            log.warning("job %s: callback gave up after %s attempts over %.0fs (%s)", job_id, attempt, waited,
                        exc.message)
            store.callback_done(job_id, attempt, "gave up")
            return f"GAVE UP after {attempt} attempts: {exc.message}"
        delay = retry.callback_delay(attempt)
        store.callback_later(job_id, attempt, delay)
        log.info("job %s: callback attempt %s failed (%s); next in %.1fs", job_id, attempt, exc.message, delay)
        return f"RETRY in {delay:.1f}s: {exc.message}"
    except PermanentError as exc:
        log.warning("job %s: callback refused (%s)", job_id, exc.message)
        store.callback_done(job_id, attempt, "refused")
        return f"REFUSED: {exc.message}"
    store.callback_done(job_id, attempt, "delivered")
    log.info("job %s: callback delivered (attempt %s)", job_id, attempt)
    return f"DELIVERED (attempt {attempt})"
