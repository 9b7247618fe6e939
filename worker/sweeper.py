"""The safety net: finds jobs that stopped making progress and hands their lost items out again.

Celery over Redis loses a message now and then when a worker dies at the wrong instant (BRPOP
has already taken it off the queue, the worker has not yet recorded it as unacknowledged), and a
Redis that crashes (rather than restarts) can lose its last second of writes. Either way some
items never run and their job would wait forever. So every worker runs this sweep every few
seconds, one worker at a time (a Redis lock): a job that has recorded no outcome for
``JOB_STALL_SECONDS`` while the item queue is empty gets its missing items published again.

Only items that can run are published again: not those whose chain predecessor has no outcome
yet, and not those a worker took recently (they may sit in a retry countdown). Publishing an
item twice is harmless: its outcome is recorded once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from worker.jobstore import JobStore

log = logging.getLogger(__name__)


def sweep(store: JobStore, *, stall_seconds: float, queue_depth: Callable[[], int],
          publish_item: Callable[[str, int, str], None], finish: Callable[[str, str], None],
          now: float | None = None) -> int:
    """One pass. Answers how many items it published again."""
    now = time.time() if now is None else now
    stalled = store.stalled_jobs(now - stall_seconds)
    if not stalled or queue_depth() > 0:
        return 0
    republished = 0
    for job_id in stalled:
        job = store.get_job(job_id)
        if job is None or job.get("finishedAt"):
            store.forget_active(job_id)
            continue
        tenant = store.job_tenant(job_id) or ""
        if job["processedCount"] >= job["totalCount"]:
            finish(job_id, tenant)  # the finish message itself was lost
            store.touch_active(job_id, now)
            continue
        runnable = store.lost_items(job_id, job["totalCount"], touched_before=now - stall_seconds)
        for index in runnable:
            publish_item(job_id, index, tenant)
        store.touch_active(job_id, now)
        republished += len(runnable)
        if runnable:
            log.warning("job %s made no progress for %ss: handed out %s lost items again", job_id,
                        int(stall_seconds), len(runnable))
    return republished


class SweeperThread(threading.Thread):
    """Runs :func:`sweep` every ``interval`` seconds in a worker process, one worker at a time."""

    def __init__(self, store: JobStore, interval: float, run_once: Callable[[], int]) -> None:
        super().__init__(name="job-sweeper", daemon=True)
        self.store, self.interval, self.run_once = store, interval, run_once
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                if self.store.redis.set("cu:sweeper:lock", "1", nx=True, ex=max(1, int(self.interval))):
                    self.run_once()
            except Exception:  # the sweeper must outlive any one failed pass
                log.exception("sweep failed")
