"""The job store in Redis: jobs, their inputs, per-item results and counters (layout: worker/store/keys.py).

Callers hold one object, :class:`JobStore`; it is put together from the store's concerns,
each a module of its own: a new job stored as its submission is read (newjob.py), an item's claim and
outcome, fenced by its lease, and a job's cancel and end (claims.py), the job document and the reads
of jobs and results (documents.py); how inputs and results are packed (packing.py). Idempotency keys
are here. Callers import the names they need from here.

The hot path is counted in Redis commands (about 6 per item, broker and a polling client included)
and in round trips: a message's items are read, and their leases checked, in one round trip
(:meth:`JobStore.claim_items`); each takes its identifier locks as it starts; and the message's
outcomes are recorded, their leases ended, their locks released and their chains handed on by one
script (:meth:`JobStore.record_outcomes`). An item bumps exactly one counter, that of its kind of
outcome (:data:`OUTCOME_COUNTERS`); the job document's counts are sums of them, and the dispatcher,
which sees every job's items in flight, ends the job once the counters add up to the total.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import redis

from worker.redis_connection import connect
from worker.store import keys
from worker.store.claims import ItemClaims, ItemWork, Outcome, Recorded
from worker.store.documents import (
    CANCELLED,
    CANCELLED_MESSAGE,
    CODE_CANCELLED,
    COMPLETED,
    OUTCOME_COUNTERS,
    QUEUED,
    RUNNING,
    WOULD_CREATE,
    WOULD_UPDATE,
    JobMeta,
    JobReads,
    TenantUsage,
    job_counts,
    job_document,
)
from worker.store.newjob import UNCOMMITTED_SECONDS, NewJob, NotReplicated, SeenInRedis

__all__ = ["CANCELLED", "CANCELLED_MESSAGE", "CODE_CANCELLED", "COMPLETED", "OUTCOME_COUNTERS", "QUEUED", "RUNNING",
           "UNCOMMITTED_SECONDS", "WOULD_CREATE", "WOULD_UPDATE", "ItemWork", "JobMeta", "JobStore", "NewJob",
           "NotReplicated", "Outcome", "Recorded", "SeenInRedis", "TenantUsage", "job_counts", "job_document"]


class JobStore(ItemClaims, JobReads):
    """The job store: new jobs (worker/store/newjob.py), item claims and outcomes (worker/store/claims.py),
    reads and documents (worker/store/documents.py), and idempotency keys here."""

    def __init__(self, client: redis.Redis, *, ttl_seconds: int = 604800, replica_wait_seconds: float = 2.0) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        #: How long a new job waits for a replica to confirm it (``WAIT``); 0: it does not wait.
        self.replica_wait = replica_wait_seconds
        self._register_claims()

    @classmethod
    def from_url(cls, url: str, *, ttl_seconds: int = 604800, max_connections: int = 64,
                 sentinel_master: str = "", replica_wait_seconds: float = 2.0) -> JobStore:
        """The store at ``url``: a server, or the primary that Sentinel names (worker/redis_connection.py)."""
        # Socket timeouts: a host cut off from Redis must fail its commands (and so stop, presume its
        # leases lost) within seconds, not after TCP's retransmissions give up many minutes later.
        client = connect(url, sentinel_master=sentinel_master, max_connections=max_connections,
                         health_check_interval=30, socket_keepalive=True, socket_timeout=10, socket_connect_timeout=5)
        return cls(client, ttl_seconds=ttl_seconds, replica_wait_seconds=replica_wait_seconds)

    def new_job(self, tenant: str, *, dry_run: bool = False, csv: bool = False) -> NewJob:
        """A job to be stored element by element; see :class:`NewJob`."""
        return NewJob(self, tenant, dry_run=dry_run, csv=csv)

    def iter_inputs(self, job_id: str) -> Iterator[Any]:
        """A job's stored elements in input order, a chunk at a time (a dry run's, for its real run)."""
        total = int(self.redis.hget(keys.job(job_id), "totalCount") or 0)
        for start in range(0, total, keys.CHUNK):
            for work in self.load_items(job_id, list(range(start, min(start + keys.CHUNK, total)))):
                yield work.element

    def claim_idempotency_key(self, tenant: str, key: str, digest: str) -> dict | None:
        """Claim ``key`` for a new submission; answer the earlier claim if there is one.

        The claim is made before the job exists (so two racing requests cannot both create one)
        and holds no job id until :meth:`bind_idempotency_key`; an unbound claim lapses in a minute.
        """
        name = keys.idempotency(tenant, key)
        if self.redis.set(name, json.dumps({"digest": digest, "jobId": None}), nx=True, ex=60):
            return None
        raw = self.redis.get(name)
        return json.loads(raw) if raw else {"digest": digest, "jobId": None}

    @staticmethod
    def idempotency_key_name(tenant: str, key: str) -> str:
        return keys.idempotency(tenant, key)

    def bind_idempotency_key(self, tenant: str, key: str, digest: str, job_id: str) -> None:
        """The key now names the job. The job's end sets it to expire with the job (the job hash names
        it from its commit on); until then it lives ``JOB_TTL_SECONDS``, so that no key outlives
        everything even if the job never ends."""
        self.redis.set(keys.idempotency(tenant, key), json.dumps({"digest": digest, "jobId": job_id}), ex=self.ttl)

    def release_idempotency_key(self, tenant: str, key: str) -> None:
        self.redis.delete(keys.idempotency(tenant, key))

    def replica_wait_ms(self) -> int:
        """How long a new job's commit waits for a replica to confirm it (``WAIT``): 0 when the
        primary has no replica, or waiting is off."""
        if self.replica_wait <= 0:
            return 0
        if not int(self.redis.info("replication").get("connected_slaves", 0)):
            return 0  # the append-only file is then the primary's only protection
        return max(1, int(self.replica_wait * 1000))

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False
