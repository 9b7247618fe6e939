"""Celery tasks: thin wrappers that unpack ids, call plain functions and queue what comes next.

Routing lives in ``task_routes`` (worker/celery_app.py) only. Each worker process also runs three
threads of its own: the lease keeper, the dispatcher (which works only while this process holds the
leader's lock; see worker/dispatch/scheduler.py), and the metrics flusher (worker/metrics.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from celery import shared_task
from celery.signals import celeryd_init, setup_logging, task_received, worker_ready, worker_shutdown

from worker.context import context_of
from worker.dispatch.publishing import publish
from worker.dispatch.scheduler import Dispatcher
from worker.downstream import retry
from worker.items.run import end_lapsed, message_members, run_item, run_items
from worker.jobs import end_job, send_callback
from worker.logs import configure_logging
from worker.queues import TaskNames
from worker.store.health import store_findings

log = logging.getLogger(__name__)

T = TypeVar("T")

@shared_task(bind=True, name=TaskNames.PROCESS_ITEM)
def process_item(self, job_id: str, index: int | list[int], lease: str = "", tenant: str = "", **earlier: str) -> str:
    """One customer element, or several of one job (``index`` a list) run one after another.
    ``lease`` is the delivery's lease token (worker/dispatch/scheduler.py; ``token`` in messages of earlier
    versions, still queued across an upgrade). ``tenant`` is there for people reading Flower; the
    worker takes the tenant from the stored job.
    The answer is the item's outcome as Flower shows it, or ``#index outcome`` per item joined by
    ``; ``. The job is ended by the dispatcher, which sees when a job's last item has ended."""
    ctx = context_of(self.app)
    token = lease or earlier.get("token", "")
    try:
        if isinstance(index, int):
            return while_store_recovers(lambda: run_item(ctx, job_id, index, token)).summary
        runs = run_items(ctx, job_id, index, token, guard=while_store_recovers)
        return "; ".join(f"#{i} {run.summary}" for i, run in zip(index, runs, strict=True))
    finally:
        for member in message_members(job_id, index, token):
            ctx.keeper.drop(member)


@task_received.connect
def hold_received_items(sender=None, request=None, **kwargs) -> None:
    """A message this worker has taken off the broker keeps its items' leases alive from that moment,
    while it waits for a free thread, not only once it runs: waiting never lapses a lease. Should the
    worker die, the keeper stops with it and the leases lapse as for items that were running."""
    if request is None or request.name != TaskNames.PROCESS_ITEM:
        return
    try:
        job_id, index = request.args[:2]
        token = request.kwargs.get("lease") or request.kwargs.get("token", "")
    except (TypeError, ValueError, AttributeError):
        return
    keeper = context_of(sender.app).keeper
    for member in message_members(job_id, index, token):
        keeper.hold(member, [])


@shared_task(bind=True, name=TaskNames.END_JOB)
def end(self, job_id: str, tenant: str = "") -> None:
    """Set a job's final state once (the aggregator), then queue its callback."""
    store = context_of(self.app).store
    while_store_recovers(lambda: end_job(store, job_id))


@shared_task(bind=True, name=TaskNames.SEND_CALLBACK)
def callback(self, job_id: str, attempt: int = 0, tenant: str = "") -> str:
    """One attempt at a job's callback, queued by the leader when it is due (``attempt`` is left
    from messages of an earlier version: the store counts the attempts now)."""
    return send_callback(context_of(self.app), job_id)


def while_store_recovers(work: Callable[[], T]) -> T:
    """Run ``work``, riding out a Redis restart instead of failing the task (worker/downstream/retry.py).

    The item's steps are safe to repeat, so running it again from the start is always right; after
    two minutes the task gives up, and the item's lease brings it back later.
    """
    pauses = retry.store_outage_pauses()
    while True:
        try:
            return work()
        except redis.RedisError as exc:
            pause = next(pauses, None)
            if pause is None:
                raise
            log.warning("job store unreachable (%s); trying again in %.1fs", type(exc).__name__, pause)
            time.sleep(pause)


@setup_logging.connect
def use_json_logs(loglevel=None, **kwargs) -> None:
    """Connected, this replaces Celery's own logging set-up: JSON lines, personal data masked."""
    configure_logging(loglevel or "INFO")


@celeryd_init.connect
def unique_node_name(sender=None, instance=None, **kwargs) -> None:
    """Without WORKER_NAME, every worker process is ``worker-<pid>@<host>``: two workers on one host
    must never share a name (on RabbitMQ the second would die on the locked pidbox queue; on Redis
    Flower and remote control would merge them)."""
    if instance is not None and not instance.app.upsert_settings.worker_name:
        instance.hostname = f"worker-{os.getpid()}@{instance.hostname.partition('@')[2] or socket.gethostname()}"


_running: list[tuple[threading.Thread, Callable[[], None]]] = []


@worker_ready.connect
def start_scheduling(sender, **kwargs) -> None:
    app = sender.app
    ctx = context_of(app)
    try:
        for finding in store_findings(ctx.store.redis):
            log.warning("job store: %s", finding.message)
    except redis.RedisError as exc:
        log.warning("job store unreachable at start (%s); waiting for it", type(exc).__name__)

    dispatcher = Dispatcher(ctx.store.redis, ctx.settings, ctx.tenants, worker=ctx.worker,
                            publish=lambda deliveries: publish(app, deliveries),
                            end_lapsed=lambda entry: end_lapsed(ctx, entry),
                            # Ended in the leader's own thread (one script), not queued as a task: a
                            # queued end would wait behind the fleet's queued messages, which carry up
                            # to sixteen items each, and a small job's end with it.
                            end_job=lambda job_id, tenant: end_job(ctx.store, job_id),
                            send_callback=lambda job_id: callback.delay(job_id))
    for name, target, stop in (("lease-keeper", ctx.keeper.run, ctx.keeper.leave),
                               ("cancel-watch", ctx.cancels.run, ctx.cancels.stop),
                               ("dispatcher", dispatcher.run, dispatcher.stop),
                               ("metrics-flusher", ctx.metrics_flusher.run, ctx.metrics_flusher.stop)):
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        _running.append((thread, stop))


@worker_shutdown.connect
def stop_scheduling(**kwargs) -> None:
    for _thread, stop in _running:
        stop()
