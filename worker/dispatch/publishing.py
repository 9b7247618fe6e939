"""How the leader sends item messages, as cheaply as the broker allows.

The deliveries of one job that share a token make one message (worker/dispatch/scheduler.py: up to
``ITEMS_PER_MESSAGE`` items, run one after another by one thread): its args are ``(job_id, index)``
for a single item and ``(job_id, [index, ...])`` for several. The leader publishes every message of
the fleet, so each costs as little as it can:

* the message is built and sent by Celery's own two halves of ``apply_async`` (``as_task_v2`` and
  ``send_task_message``, so signals and task-sent events behave as ever), without the rest of it
  (routing, an AsyncResult per message, options copied into the message's properties): half the
  leader's CPU per message;
* the readable forms Flower shows are written here rather than by Celery's generic repr;
* the items queue is not declared again for every message (the workers declare it as they start
  consuming);
* on Redis, a tick's messages go in one round trip (kombu's publish batch), and as one LPUSH per
  queue rather than one per message: a Redis command less per item (see :class:`OneLpushPerQueue`).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable

from kombu.transport import redis as kombu_redis
from kombu.utils.uuid import uuid

from worker.dispatch.leases import Delivery
from worker.queues import Queues, TaskNames


def publish(app, deliveries: Iterable[Delivery]) -> None:
    """Send one message per job and token, in one round trip where the transport can batch."""
    messages: dict[tuple[str, str], list[Delivery]] = {}
    for d in deliveries:
        messages.setdefault((d.job_id, d.token), []).append(d)
    amqp = app.amqp
    with app.producer_or_acquire() as producer:
        coalesce_lpushes(producer.channel)
        batch = producer.batch() if hasattr(producer, "batch") else contextlib.nullcontext()
        with batch:
            for (job_id, token), items in messages.items():
                index = items[0].index if len(items) == 1 else [d.index for d in items]
                # "lease": the delivery's lease token, named so that no operator reads it as a credential.
                args, kwargs = (job_id, index), {"lease": token, "tenant": items[0].tenant}
                message = amqp.as_task_v2(uuid(), TaskNames.PROCESS_ITEM, args, kwargs, ignore_result=True,
                                          argsrepr=repr(args), kwargsrepr=repr(kwargs))
                amqp.send_task_message(producer, TaskNames.PROCESS_ITEM, message, queue=Queues.ITEMS, declare=[])


class OneLpushPerQueue:
    """Stands in for the redis-py pipeline of kombu's Redis publish batch: consecutive LPUSHes to
    one list are sent as one LPUSH of all their values, which leaves the list exactly as the
    separate commands would. Any other command first sends what is pending, so order holds."""

    def __init__(self, pipeline) -> None:
        self._pipeline = pipeline
        self._pending: list[tuple[str, list]] = []

    def lpush(self, key, *values):
        if self._pending and self._pending[-1][0] == key:
            self._pending[-1][1].extend(values)
        else:
            self._pending.append((key, list(values)))
        return self

    def _send_pending(self) -> None:
        for key, values in self._pending:
            self._pipeline.lpush(key, *values)
        self._pending = []

    def execute(self, *args, **kwargs):
        self._send_pending()
        return self._pipeline.execute(*args, **kwargs)

    def reset(self) -> None:
        self._pending = []
        self._pipeline.reset()

    def __getattr__(self, name):
        self._send_pending()
        return getattr(self._pipeline, name)


_coalescing: weakref.WeakSet = weakref.WeakSet()


def coalesce_lpushes(channel) -> None:
    """Give ``channel``'s publish batches a :class:`OneLpushPerQueue` pipeline, if it is kombu's
    Redis channel with publish batches (kombu 5.7); any other channel is left as it is."""
    if (not isinstance(channel, kombu_redis.Channel) or channel in _coalescing
            or not hasattr(channel, "create_publish_batch")):
        return
    make = channel.create_publish_batch

    def create_publish_batch(max_size):
        batch = make(max_size)
        if hasattr(batch, "pipeline"):
            batch.pipeline = OneLpushPerQueue(batch.pipeline)
        return batch

    channel.create_publish_batch = create_publish_batch  # type: ignore[method-assign]  # this channel only
    _coalescing.add(channel)
