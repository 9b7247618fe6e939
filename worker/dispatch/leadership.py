"""Leadership: one worker process at a time runs the dispatcher.

The leader's lock is redis-py's ``Lock`` (:data:`LEADER_SECONDS`), under a token that starts with the
worker's id, so an operator (and a test) can tell which process leads. The scripts that hand out and
recover items check that token, so a leader frozen past its lock cannot dispatch beside the next one.
"""

from __future__ import annotations

import logging
import secrets

import redis

from worker.store import keys

log = logging.getLogger(__name__)

#: The leader's lock lives this long unless renewed (every slow round): far above any pause a
#: healthy process makes, and still a short hand-over when the leader dies. Even a leader frozen past
#: it cannot dispatch: the scripts that hand out and recover items check its token first.
LEADER_SECONDS = 10.0


class Leadership:
    """The leader's lock, as one worker process holds it."""

    def __init__(self, client: redis.Redis, worker: str) -> None:
        # redis-py's Lock: a token of our own, released and extended atomically by it.
        self._lock = client.lock(keys.LEADER, timeout=LEADER_SECONDS, blocking=False, thread_local=False)
        self.token = f"{worker}:{secrets.token_hex(8)}"
        self.leading = False

    def keep(self) -> bool:
        """Take or keep the lock; True while this process leads."""
        if self.leading:
            try:
                self._lock.reacquire()
            except redis.exceptions.LockError:
                log.warning("this worker lost the leader's lock; another dispatches now")
                self.leading = False
        if not self.leading:
            self.leading = bool(self._lock.acquire(blocking=False, token=self.token))
            if self.leading:
                log.info("this worker dispatches now")
        return self.leading

    def release(self) -> None:
        if self.leading:
            try:
                self._lock.release()
            except redis.exceptions.LockError:
                pass  # it had lapsed, or another worker holds it now: not ours to delete
            except redis.RedisError:
                pass
        self.leading = False
