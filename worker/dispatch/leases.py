"""Leases: how a worker keeps the items it runs, and learns that it lost one.

Every dispatched item gets a lease: the member ``job:index:token`` of ``cu:inflight``
with an expiry ``ITEM_LEASE_SECONDS`` ahead. The worker that takes the message off the broker keeps
it alive with :class:`LeaseKeeper` from that moment (one script per worker process every quarter
of a lease, for all its items and their identifier locks, plus the worker's heartbeat), while the
message waits for a thread, while the item waits for tokens and while it runs. A lease that
lapses (the worker was killed, froze or lost its network; the message was lost) is handed out
again under a new token by the leader: on either broker, within about a lease. The old delivery
is fenced off: its claim finds its member gone and it does nothing, its outcome script records
nothing, and its keeper tells its threads to stop before their next call. An item whose lease
lapsed more than ``MAX_LAPSES`` times *after it started* fails with 9004 instead of killing
workers forever; a lapse while it waited costs it nothing.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field

import redis

from worker.lua_scripts import register
from worker.store import keys

log = logging.getLogger(__name__)


def worker_id() -> str:
    """Unique per process on every host, so heartbeats and leadership never mix two workers."""
    return f"{socket.gethostname()}:{os.getpid()}"


def new_token() -> str:
    return secrets.token_hex(4)


@dataclass(frozen=True)
class Delivery:
    """An item to publish, under the token of its lease; the deliveries of one job that share a
    token go in one message (worker/dispatch/publishing.py)."""

    job_id: str
    index: int
    token: str
    tenant: str

    @property
    def member(self) -> str:
        return keys.inflight_member(self.job_id, self.index, self.token)


class LeaseLost(Exception):
    """This delivery's lease was taken away: another worker runs the item now. Stop quietly."""


@dataclass
class _Held:
    locks: list[str] = field(default_factory=list)
    #: When the locks were taken or last extended (monotonic): they live twice a lease from then
    locks_at: float = field(default_factory=time.monotonic)
    #: The item's outcome or deferral is being written: the script that does it ends the lease, so a
    #: renewal that finds it gone meanwhile has found the item settled, not taken away
    settling: bool = False


class LeaseKeeper:
    """Renews the leases and locks of the items this process runs, and its heartbeat.

    :meth:`check` is called before every downstream call of an item: it raises :class:`LeaseLost`
    when the keeper found the lease gone, or when the keeper has not managed to renew for most of a
    lease (a frozen process that wakes up, or a host cut off from Redis, must presume its leases
    lost before it writes anything downstream).
    """

    def __init__(self, client: redis.Redis, *, worker: str, slots: int, lease_seconds: float) -> None:
        self.redis = client
        self.worker = worker
        self.slots = slots
        self.lease = lease_seconds
        self.interval = lease_seconds / 4
        self._renew = register(client, "renew_leases")
        self._held: dict[str, _Held] = {}
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._renewed_at = time.monotonic()
        self.stopping = threading.Event()

    def hold(self, member: str, lock_keys: list[str]) -> None:
        """Keep ``member``'s lease, and its identifier locks, alive until :meth:`drop`."""
        with self._lock:
            self._held[member] = _Held(list(lock_keys))

    def settling(self, members: list[str]) -> None:
        """The outcomes (or deferrals) of ``members`` are about to be written, which ends their leases:
        still renewed until :meth:`drop`, but not reported taken away when a renewal finds them gone
        (the write itself tells whether they were)."""
        with self._lock:
            for member in members:
                held = self._held.get(member)
                if held is not None:
                    held.settling = True

    def drop(self, member: str) -> None:
        with self._lock:
            self._held.pop(member, None)
            self._lost.discard(member)

    def check(self, member: str) -> None:
        if member in self._lost or time.monotonic() - self._renewed_at > self.lease * 0.75:
            raise LeaseLost(member)

    def renew_once(self) -> None:
        """Renew every lease held, and the locks taken or extended more than half a lease ago: they
        live twice a lease, so the others have over a lease left, and an item's locks are mostly
        released before they ever need it (a command each, and an item holds two or three)."""
        started = time.monotonic()
        with self._lock:
            held = {m: list(h.locks) if started - h.locks_at > self.lease / 2 else []
                    for m, h in self._held.items()}
        args: list = [self.worker, self.slots, self.lease, int(self.lease * 2000)]
        lock_keys: list[str] = []
        for member, locks in held.items():
            args += [member, len(locks)]
            lock_keys += locks
        lost = self._renew(keys=[keys.INFLIGHT, keys.FLEET, keys.FLEET_SLOTS, *lock_keys], args=args)
        with self._lock:
            taken = [m for m in lost if m in self._held and not self._held[m].settling]
            self._lost.update(taken)
            for member, locks in held.items():
                if locks and member in self._held:
                    self._held[member].locks_at = started
        self._renewed_at = started
        if taken:
            log.warning("%s leases were taken away from this worker; their items run elsewhere now", len(taken))

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.renew_once()
            except redis.RedisError as exc:
                log.warning("cannot renew leases (%s)", type(exc).__name__)
            self.stopping.wait(self.interval)

    def leave(self) -> None:
        """A clean shutdown: stop counting this process's slots at once."""
        self.stopping.set()
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(keys.FLEET, self.worker)
            pipe.hdel(keys.FLEET_SLOTS, self.worker)
            pipe.execute()
        except redis.RedisError:
            pass
