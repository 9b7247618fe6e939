"""Celery tasks: thin wrappers that unpack ids, call plain functions and decide retry or hand-on."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from amqp.exceptions import ChannelError
from celery import shared_task
from celery.signals import setup_logging, worker_ready, worker_shutdown

from worker.context import context_of
from worker.items import run_item
from worker.jobs import fan_out_indexes, finish_job, send_callback
from worker.logs import configure_logging
from worker.queues import Queues, TaskNames
from worker.sweeper import SweeperThread, sweep

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a task waits for the job store to come back before it gives up (the message then
#: stays unacknowledged and comes back after the broker's visibility timeout).
STORE_PATIENCE_SECONDS = 120.0

#: Heads published per round before the fan-out's progress is saved (so a redelivered
#: fan-out resumes instead of starting over).
FAN_OUT_BATCH = 500


@shared_task(bind=True, name=TaskNames.FAN_OUT, acks_late=True, reject_on_worker_lost=True)
def fan_out(self, job_id: str, tenant: str = "") -> None:
    ctx = context_of(self.app)
    with self.app.producer_or_acquire() as producer:
        for batch in fan_out_indexes(ctx.store, job_id, FAN_OUT_BATCH):
            for index in batch.indexes:
                process_item.apply_async((job_id, index), {"tenant": tenant}, queue=Queues.ITEMS, producer=producer)
            batch.done()


# max_retries=None on the task: unlimited for Celery (`retry(max_retries=None)` would mean "the
# default of 3"). Our own limits live in worker.items: attempts, and deliveries.
@shared_task(bind=True, name=TaskNames.PROCESS_ITEM, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def process_item(self, job_id: str, index: int, attempt: int = 1, reserved: dict | None = None,
                 tenant: str = "") -> None:
    ctx = context_of(self.app)
    step = while_store_recovers(
        lambda: run_item(ctx, job_id, index, attempt, str(self.request.retries), reserved)
    )
    if step.retry_in is not None:
        # Celery's own retry count does not see redeliveries; `attempt` is ours (see worker.items).
        raise self.retry(args=(job_id, index),
                         kwargs={"attempt": step.next_attempt, "reserved": step.reserved, "tenant": tenant},
                         countdown=step.retry_in)
    if step.next_index is not None:
        process_item.apply_async((job_id, step.next_index), {"tenant": tenant}, queue=Queues.ITEMS)
    if step.finish_job:
        finish.apply_async((job_id,), {"tenant": tenant}, queue=Queues.JOBS)


@shared_task(bind=True, name=TaskNames.FINISH_JOB, acks_late=True, reject_on_worker_lost=True)
def finish(self, job_id: str, tenant: str = "") -> None:
    ctx = context_of(self.app)
    if while_store_recovers(lambda: finish_job(ctx, job_id)) and ctx.store.redis.hexists(
            ctx.store.job_key(job_id), "callbackUrl"):
        callback.apply_async((job_id,), {"tenant": tenant}, queue=Queues.JOBS)


@shared_task(bind=True, name=TaskNames.SEND_CALLBACK, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def callback(self, job_id: str, attempt: int = 1, tenant: str = "") -> None:
    delay = send_callback(context_of(self.app), job_id, attempt)
    if delay is not None:
        raise self.retry(args=(job_id,), kwargs={"attempt": attempt + 1, "tenant": tenant}, countdown=delay)


def while_store_recovers(work: Callable[[], T], patience: float = STORE_PATIENCE_SECONDS) -> T:
    """Run ``work``, riding out a Redis restart instead of failing (and so losing) the message.

    The item's steps are safe to repeat, so running it again from the start is always right.
    """
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            return work()
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("job store unreachable (%s); trying again in %.1fs", type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@setup_logging.connect
def use_json_logs(loglevel=None, **kwargs) -> None:
    """Connected, this replaces Celery's own logging set-up: JSON lines, personal data masked."""
    configure_logging(loglevel or "INFO")


_sweepers: list[SweeperThread] = []


@worker_ready.connect
def start_sweeper(sender, **kwargs) -> None:
    app = sender.app
    ctx = context_of(app)
    stall = ctx.settings.stall_seconds

    def run_once() -> int:
        return sweep(
            ctx.store,
            stall_seconds=stall,
            queue_depth=lambda: items_waiting(app),
            publish_item=lambda job_id, index, tenant: process_item.apply_async(
                (job_id, index), {"tenant": tenant}, queue=Queues.ITEMS),
            finish=lambda job_id, tenant: finish.apply_async((job_id,), {"tenant": tenant}, queue=Queues.JOBS),
        )

    thread = SweeperThread(ctx.store, interval=max(1.0, stall / 5), run_once=run_once)
    thread.start()
    _sweepers.append(thread)


@worker_shutdown.connect
def stop_sweeper(**kwargs) -> None:
    for thread in _sweepers:
        thread.stopping.set()


def items_waiting(app) -> int:
    """Messages in the item queue; when unknown, assume some (a sweep then waits for next time)."""
    try:
        with app.connection_for_write() as conn:
            return conn.default_channel.queue_declare(queue=Queues.ITEMS, passive=True).message_count
    except ChannelError as exc:
        if str(getattr(exc, "reply_code", "")) == "404":
            return 0  # the Redis transport has no queue key once a queue is empty
        log.warning("cannot read the item queue's length", exc_info=True)
        return 1
    except Exception:
        log.warning("cannot read the item queue's length", exc_info=True)
        return 1
