"""Cancels heard as they happen, so that an item need not ask Redis whether its job was cancelled.

A message's items are read together as it starts (worker/store/claims.py), the cancel mark with them;
each item but the first must still end CANCELLED when its job was cancelled since, as it has not
started. Asking Redis as each item starts costs a command an item, about a sixth of what an item
costs Redis. Instead, :meth:`JobStore.cancel` publishes the job's id on :data:`CHANNEL` once the job
is marked, and each worker process listens (:class:`CancelWatch`, a thread of its own): an item asks
the watch, which answers from what it heard, and only when it cannot vouch that it heard every cancel
since the message's read (it was not subscribed yet, or its connection broke since: every reconnect
forgets what it vouched for until Redis confirms the subscription again) does the item ask Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

from worker.store import keys

log = logging.getLogger(__name__)

CHANNEL = f"{keys.PREFIX}:cancels"

#: Cancelled jobs remembered, at most: a message runs for seconds, so the oldest are long irrelevant
REMEMBERED = 10_000


class CancelWatch:
    """The cancels this process heard on :data:`CHANNEL`, and since when it has heard them all."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._heard: dict[str, None] = {}
        self._lock = threading.Lock()
        #: Monotonic time since which every cancel published has been heard; None: cannot tell now
        self._listening_since: float | None = None
        self.stopping = threading.Event()

    def cancelled(self, job_id: str, since: float) -> bool | None:
        """Whether ``job_id`` was cancelled after ``since`` (monotonic): True or False when the watch
        has listened without a break from before ``since``; None when it cannot tell."""
        with self._lock:
            if job_id in self._heard:
                return True
            if self._listening_since is None or self._listening_since > since:
                return None
            return False

    def listening(self) -> bool:
        with self._lock:
            return self._listening_since is not None

    def _heard_cancel(self, job_id: str) -> None:
        with self._lock:
            self._heard[job_id] = None
            while len(self._heard) > REMEMBERED:
                del self._heard[next(iter(self._heard))]

    def _connected(self, connection: Any) -> None:
        """Called by redis-py at every (re)connect, before the subscription is confirmed again:
        cancels published while the connection was down were never heard."""
        with self._lock:
            self._listening_since = None

    def run(self) -> None:
        while not self.stopping.is_set():
            pubsub = self.redis.pubsub()
            try:
                pubsub.subscribe(CHANNEL)
                pubsub.connection.register_connect_callback(self._connected)
                while not self.stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        with self._lock:
                            self._listening_since = time.monotonic()
                    elif message["type"] == "message":
                        data = message["data"]
                        self._heard_cancel(data.decode() if isinstance(data, bytes) else str(data))
            except (redis.RedisError, OSError) as exc:
                log.warning("cannot listen for cancels (%s); items ask Redis meanwhile", type(exc).__name__)
            finally:
                self._connected(None)
                try:
                    pubsub.close()
                except (redis.RedisError, OSError):
                    pass
            self.stopping.wait(1.0)

    def stop(self) -> None:
        self.stopping.set()
