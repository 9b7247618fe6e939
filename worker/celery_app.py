"""The Celery application, built from the same Settings object as the web app."""

from __future__ import annotations

from celery import Celery

from worker.queues import Queues, TaskNames
from worker.settings import Settings


def create_celery(settings: Settings) -> Celery:
    app = Celery("customer_upsert", broker=settings.effective_broker_url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # At-least-once: acknowledge after the item ran, and requeue what a dead worker held.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Redis broker only (RabbitMQ returns a dead consumer's messages at once): a message a
        # worker took but did not acknowledge comes back after this long. It must exceed the
        # longest an item lives in one worker: a retry countdown (held unacknowledged until due,
        # at most RETRY_MAX_SECONDS or a minute of rate-limit wait) plus its calls with their
        # timeouts. Default 300 s: a killed worker's items run again within five minutes.
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout,
            # kombu looks for such messages every interval x throttle seconds (10 x 10 by
            # default): scan every few seconds instead, so they come back soon after the timeout.
            "unacked_restore_interval": max(1, min(10, settings.broker_visibility_timeout // 5)),
            "unacked_restore_throttle": 1,
            # The restore lock of a worker killed while restoring must not block the others for
            # kombu's default five minutes.
            "unacked_mutex_expire": 30,
        },
        broker_connection_retry_on_startup=True,
        task_default_queue=Queues.ITEMS,
        task_routes={
            TaskNames.FAN_OUT: {"queue": Queues.JOBS},
            TaskNames.FINISH_JOB: {"queue": Queues.JOBS},
            TaskNames.SEND_CALLBACK: {"queue": Queues.JOBS},
            TaskNames.PROCESS_ITEM: {"queue": Queues.ITEMS},
        },
        worker_send_task_events=True,
        worker_hijack_root_logger=False,
    )
    app.upsert_settings = settings
    return app
