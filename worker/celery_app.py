"""The Celery application, built from the same Settings object as the web app."""

from __future__ import annotations

from celery import Celery

from worker.queues import Queues, TaskNames
from worker.settings import Settings

#: A message a worker took but did not acknowledge comes back after this long (Redis broker
#: only; RabbitMQ returns a dead consumer's messages at once). It must exceed the longest an
#: item can live in one worker: its calls with their timeouts plus a retry countdown, which the
#: worker holds unacknowledged until it is due.
VISIBILITY_TIMEOUT_SECONDS = 300


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
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS},
        broker_connection_retry_on_startup=True,
        task_default_queue=Queues.ITEMS,
        task_routes={
            TaskNames.FAN_OUT: {"queue": Queues.JOBS},
            TaskNames.FINISH_JOB: {"queue": Queues.JOBS},
            TaskNames.PROCESS_ITEM: {"queue": Queues.ITEMS},
        },
        worker_send_task_events=True,
        worker_hijack_root_logger=False,
    )
    app.upsert_settings = settings
    return app
