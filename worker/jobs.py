"""A job's end, without Celery: cancelling it, setting its final state, calling its callback."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from worker import callbacks, retry
from worker.client import PermanentError, RetryableError
from worker.jobstore import JobStore

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


def has_callback(store: JobStore, job_id: str) -> bool:
    return bool(store.job_fields(job_id, "callbackUrl")[0])


def send_callback(ctx: WorkerContext, job_id: str, attempt: int) -> float | None:
    """POST the final job document to the job's callbackUrl; answer a delay to try again after, or None."""
    url, tenant_id = ctx.store.job_fields(job_id, "callbackUrl", "tenant")
    tenant = ctx.tenants.get(tenant_id or "")
    job = ctx.store.get_job(job_id)
    if not url or tenant is None or job is None:
        return None
    try:
        callbacks.deliver(ctx.http, url, job, tenant)
    except RetryableError as exc:
        if attempt >= retry.CALLBACK_MAX_ATTEMPTS:
            log.warning("job %s: callback gave up after %s attempts (%s)", job_id, attempt, exc.message)
            return None
        return retry.callback_delay(attempt)
    except PermanentError as exc:
        log.warning("job %s: callback refused (%s)", job_id, exc.message)
        return None
    log.info("job %s: callback delivered", job_id)
    return None
