"""Celery tasks: thin wrappers that unpack ids, call plain functions and decide retry or hand-on."""

from __future__ import annotations

import logging

from celery import shared_task

from worker.context import context_of
from worker.items import run_item
from worker.jobs import fan_out_indexes, finish_job
from worker.queues import Queues, TaskNames

log = logging.getLogger(__name__)

#: Heads published per round before the fan-out's progress is saved (so a redelivered
#: fan-out resumes instead of starting over).
FAN_OUT_BATCH = 500


@shared_task(bind=True, name=TaskNames.FAN_OUT, acks_late=True, reject_on_worker_lost=True)
def fan_out(self, job_id: str) -> None:
    ctx = context_of(self.app)
    with self.app.producer_or_acquire() as producer:
        for batch in fan_out_indexes(ctx.store, job_id, FAN_OUT_BATCH):
            for index in batch.indexes:
                process_item.apply_async((job_id, index), queue=Queues.ITEMS, producer=producer)
            batch.done()


@shared_task(bind=True, name=TaskNames.PROCESS_ITEM, acks_late=True, reject_on_worker_lost=True)
def process_item(self, job_id: str, index: int, attempt: int = 1) -> None:
    step = run_item(context_of(self.app), job_id, index, attempt)
    if step.retry_in is not None:
        raise self.retry(args=(job_id, index), kwargs={"attempt": attempt + 1}, countdown=step.retry_in,
                         max_retries=None)
    if step.next_index is not None:
        process_item.apply_async((job_id, step.next_index), queue=Queues.ITEMS)
    if step.finish_job:
        finish.apply_async((job_id,), queue=Queues.JOBS)


@shared_task(bind=True, name=TaskNames.FINISH_JOB, acks_late=True, reject_on_worker_lost=True)
def finish(self, job_id: str) -> None:
    finish_job(context_of(self.app), job_id)
