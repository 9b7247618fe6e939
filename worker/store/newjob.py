"""A new job, stored as its submission is read, and made visible by its commit.

Inputs go to Redis a chunk at a time with an expiry, so a submission refused or cut off half way
leaves nothing behind; the commit writes the chains' order and the job hash last.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Protocol

import redis

from worker.clock import now_iso
from worker.store import keys, packing
from worker.store.documents import OUTCOME_COUNTERS, QUEUED, JobMeta

#: The inputs of a submission not yet committed expire this long after their last write.
UNCOMMITTED_SECONDS = 3600


def new_job_id() -> str:
    return uuid.uuid4().hex


class NotReplicated(redis.exceptions.ConnectionError):
    """The primary has replicas, and none confirmed a new job in time: the job was withdrawn. A
    connection error to its callers, as the store cannot keep the promise of a 202 now (the API's
    503 ``store_unavailable``)."""


class Store(Protocol):
    """What a new job needs of the job store (worker/store/jobstore.py)."""

    redis: redis.Redis
    ttl: int

    def replica_wait_ms(self) -> int: ...


class NewJob:
    """A job being stored as its submission is read: inputs go to Redis a chunk at a time.

    Only the chunk being filled is held in memory, so a streamed submission is never held
    whole. The job becomes visible, and eligible for dispatch, with :meth:`commit`, after all its
    inputs are stored; a submission refused half way is undone with :meth:`abort`.
    """

    def __init__(self, store: Store, tenant: str, *, dry_run: bool = False, csv: bool = False) -> None:
        self.store = store
        self.tenant = tenant
        self.dry_run = dry_run
        self.csv = csv
        self.job_id = new_job_id()
        self.count = 0
        self._chunk: dict[str, str] = {}
        self._block: list[str] = []
        self._firsts: list[str | None] = []

    def add(self, element: Any) -> None:
        """Store an element, packed with the others of its block (worker/store/packing.py), and the
        first digest of its identifier locks, by which the leader's reaper tells whether it started.
        A dry run's items take no locks: they only read, and must not hold back a real job's items."""
        self._block.append(packing.dumps(element))
        digests = [] if self.dry_run else sorted({
            keys.identifier_lock_digest(self.tenant, source, account, kind, value)
            for kind, value, source, account in keys.identifier_keys(element)})
        self._firsts.append(digests[0] if digests else None)
        self.count += 1
        if self.count % packing.BLOCK == 0:
            self._pack()
        if self.count % keys.CHUNK == 0:
            self._flush()

    def _pack(self) -> None:
        """The block being filled, packed into the chunk being filled."""
        if self._block:
            block = packing.block_of(self.count - 1)
            self._chunk[packing.elements_field(block)] = packing.pack_elements(self._block)
            self._chunk[packing.digests_field(block)] = packing.pack_digests(self._firsts)
            self._block, self._firsts = [], []

    def seen_identifiers(self) -> SeenInRedis:
        """Where the intake's chain planner keeps the identifiers it has seen (worker/dispatch/planning.py)."""
        return SeenInRedis(self.store.redis, keys.plan(self.job_id))

    def _flush(self) -> None:
        """Store the chunk being filled, with an expiry: should this process die before the commit,
        nothing of the submission outlives :data:`UNCOMMITTED_SECONDS` (the commit lifts it)."""
        self._pack()
        if self._chunk:
            pipe = self.store.redis.pipeline(transaction=False)
            key = keys.inputs(self.job_id, self.count - 1)
            pipe.hset(key, mapping=self._chunk)
            pipe.expire(key, UNCOMMITTED_SECONDS)
            pipe.execute()
            self._chunk = {}

    def commit(self, *, skip_change_identifier: bool, next_index: dict[int, int],
               extra: dict[str, str] | None = None) -> str:
        """Store the last inputs, the order of chained items and the job itself; answer its id.

        No key of the job expires while it runs: the end script starts their TTL.
        """
        self._flush()
        job_id, redis_ = self.job_id, self.store.redis
        meta = JobMeta(self.tenant, self.count, skip_change_identifier, self.dry_run, self.csv).dumps()
        now = time.time()
        pipe = redis_.pipeline(transaction=False)
        for n in keys.chunks(self.count):
            fields = {keys.META_FIELD: meta}
            fields.update({f"n:{prev}": str(nxt) for prev, nxt in next_index.items() if keys.chunk_number(prev) == n})
            pipe.hset(f"{keys.job(job_id)}:in:{n}", mapping=fields)
            pipe.persist(f"{keys.job(job_id)}:in:{n}")
        if next_index:
            pipe.sadd(keys.waits(job_id), *next_index.values())
        pipe.delete(keys.plan(job_id))  # the planner's work is done
        doc = {
            "jobId": job_id,
            "tenant": self.tenant,
            "state": QUEUED,
            "skipChangeIdentifier": "1" if skip_change_identifier else "0",
            **({"dryRun": "1"} if self.dry_run else {}),
            **({"csv": "1"} if self.csv else {}),
            "createdAt": now_iso(),
            **dict.fromkeys(OUTCOME_COUNTERS, 0),
            "totalCount": self.count,
            "cursor": 0,
            "chained": len(next_index),
            **(extra or {}),
        }
        # The job hash, and its place in the scheduler, go last: a job is visible only once its
        # inputs are all stored.
        pipe.hset(keys.job(job_id), mapping={k: str(v) for k, v in doc.items()})
        index = keys.tenant_jobs(self.tenant)
        pipe.zadd(index, {job_id: now})
        # The index keeps no job that has surely expired, and dies when the tenant has been quiet
        # that long; listings also drop the jobs they find gone.
        pipe.zremrangebyscore(index, "-inf", now - 2 * self.store.ttl)
        pipe.expire(index, 2 * self.store.ttl)
        pipe.zadd(keys.tenant_active(self.tenant), {job_id: now})
        pipe.zadd(keys.tenant_accepted(self.tenant), {f"{job_id}:{self.count}": now})
        pipe.expire(keys.tenant_accepted(self.tenant), keys.DAY_SECONDS)
        wait_ms = self.store.replica_wait_ms()
        if wait_ms:
            # WAIT on the connection that wrote last: a replica that has that write has every
            # earlier one too (the chunks), as replication keeps the primary's order.
            pipe.execute_command("WAIT", 1, wait_ms)
        replies = pipe.execute()
        if wait_ms and int(replies[-1]) < 1:
            raise NotReplicated(f"no replica confirmed the job within {wait_ms} ms")
        # Only now may the scheduler see it. Should this last write be lost in a failover, the
        # leader finds the job among the tenant's active ones and schedules it (worker/dispatch/scheduler.py).
        redis_.zadd(keys.SCHED_JOBS, {job_id: now})
        return job_id

    def abort(self) -> None:
        """Remove whatever was stored of this job: its inputs and, if it was committed, the job."""
        self._chunk, self._block, self._firsts = {}, [], []
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.delete(*keys.job_keys(self.job_id, max(self.count, 1)))
        pipe.zrem(keys.tenant_jobs(self.tenant), self.job_id)
        pipe.zrem(keys.tenant_active(self.tenant), self.job_id)
        pipe.zrem(keys.tenant_accepted(self.tenant), f"{self.job_id}:{self.count}")
        pipe.zrem(keys.SCHED_JOBS, self.job_id)
        pipe.execute()


class SeenInRedis:
    """The chain planner's identifiers of one submission, in a hash of its own: the web process
    holds a chunk of them at a time. Two commands a chunk; the hash expires with the uncommitted
    inputs should the intake die, and the commit removes it."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.redis, self.key = client, key
        self._expiring = False

    def first_indexes(self, digests: list[bytes]) -> list[int | None]:
        return [int(i) if i is not None else None for i in self.redis.hmget(self.key, digests)]

    def remember(self, firsts: dict[bytes, int]) -> None:
        if not firsts:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.key, mapping=firsts)
        if not self._expiring:
            pipe.expire(self.key, UNCOMMITTED_SECONDS)
            self._expiring = True
        pipe.execute()
