"""The Celery application, built from the same Settings object as the web app."""

from __future__ import annotations

from celery import Celery

from worker.queues import Queues, TaskNames
from worker.redis_connection import is_sentinel_url
from worker.settings import Settings


def create_celery(settings: Settings) -> Celery:
    app = Celery("customer_upsert", broker=settings.effective_broker_url, include=["worker.tasks"])
    transport_options: dict = {"ack_emulation": False}
    if is_sentinel_url(settings.effective_broker_url):
        # kombu's Sentinel transport asks these Sentinels for the primary on every (re)connection.
        transport_options["master_name"] = settings.redis_sentinel_master
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # An item's own lease (worker/dispatch/scheduler.py) brings it back when its worker dies, on either
        # broker, within ITEM_LEASE_SECONDS, so messages are acknowledged as their task starts: late
        # acknowledgements would add nothing but a stall (under the gevent pool, Celery's synloop
        # runs deferred acks only between two-second broker polls). Each thread takes one message
        # at a time, so a worker never holds many more messages than it runs.
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        # After a lost broker connection Celery would take one message at a time until as many tasks
        # have ended as were running at the loss; one slow task then throttled a whole worker for
        # many seconds. Messages a worker holds keep their leases alive (worker/tasks.py), so taking
        # the usual number at once costs nothing.
        worker_enable_prefetch_count_reduction=False,
        # Redis broker: no emulated acknowledgements. They cost eight commands a message (a MULTI
        # block to remember it, another to forget it) and bring a dead worker's messages back only
        # after the visibility timeout; the lease does both jobs better.
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_default_queue=Queues.ITEMS,
        task_routes={
            TaskNames.PROCESS_ITEM: {"queue": Queues.ITEMS},
            TaskNames.END_JOB: {"queue": Queues.JOBS},
            TaskNames.SEND_CALLBACK: {"queue": Queues.JOBS},
        },
        # Task events from the worker's start (`-E`): Flower then sees every task, the first job's
        # included, not only those after it has broadcast enable_events. They cost a broker command
        # per task state change (see docs/performance.md).
        worker_send_task_events=True,
        worker_hijack_root_logger=False,
    )
    app.upsert_settings = settings
    return app
