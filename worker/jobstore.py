"""The job store in Redis: jobs, their inputs, per-item results and counters.

Layout (every key expires ``JOB_TTL_SECONDS`` after the job finishes)::

    cu:job:{id}                 hash   the job document's fields and its counters
    cu:job:{id}:in:{chunk}      hash   index -> input element (JSON), CHUNK items per key
    cu:job:{id}:res:{chunk}     hash   index -> item result (JSON), CHUNK items per key
    cu:job:{id}:failed / :ok    zset   indexes by outcome (score = index), for filtered paging
    cu:job:{id}:next            hash   index -> next index, for items that must run in order
    cu:job:{id}:created         hash   index -> customer id this item added (survives retries), or
                                       "?" while an add's answer is outstanding
    cu:tenant:{t}:jobs          zset   job ids by creation time

Inputs and results are split into chunks so that no key, message or process ever holds a
whole 100,000-item job. An item's outcome is written with HSETNX inside one script that also
bumps the counters, so a redelivered or retried item can never be counted twice, and exactly
one item (the one that brings ``processedCount`` to ``totalCount``) learns that it was the last.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

CHUNK = 1000
PREFIX = "cu"
#: Unfinished jobs by the time of their last progress, for the sweeper (worker/sweeper.py).
ACTIVE_KEY = f"{PREFIX}:active"

QUEUED, RUNNING, COMPLETED, CANCELLED = "QUEUED", "RUNNING", "COMPLETED", "CANCELLED"
FINAL_STATES = frozenset({COMPLETED, CANCELLED})

#: The ``:created`` value of an item whose add was sent and not answered (yet, or ever).
ADD_IN_DOUBT = "?"

COUNTERS = ("totalCount", "processedCount", "successCount", "failureCount", "createdCount", "updatedCount",
            "cancelledCount")

_RECORD_OUTCOME = """
-- KEYS: job, result chunk, failed zset, ok zset, next hash, active jobs zset
-- ARGV: index, item json, failed (0/1), counter for the action or '', ttl, now, job id
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then
  return {-1, redis.call('HGET', KEYS[5], ARGV[1]) or false}
end
redis.call('ZADD', KEYS[6], ARGV[6], ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[5])
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[1], 'failureCount', 1)
  redis.call('ZADD', KEYS[3], ARGV[1], ARGV[1])
  redis.call('EXPIRE', KEYS[3], ARGV[5])
else
  redis.call('HINCRBY', KEYS[1], 'successCount', 1)
  redis.call('ZADD', KEYS[4], ARGV[1], ARGV[1])
  redis.call('EXPIRE', KEYS[4], ARGV[5])
end
if ARGV[4] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[4], 1) end
local processed = redis.call('HINCRBY', KEYS[1], 'processedCount', 1)
local total = tonumber(redis.call('HGET', KEYS[1], 'totalCount'))
local last = 0
if processed == total then last = 1 end
return {last, redis.call('HGET', KEYS[5], ARGV[1]) or false}
"""

_FINISH = """
-- KEYS: job; ARGV: now, ttl. Sets the final state once; answers 1 the first time only.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'finishedAt') then return 0 end
local processed = tonumber(redis.call('HGET', KEYS[1], 'processedCount'))
local total = tonumber(redis.call('HGET', KEYS[1], 'totalCount'))
if processed < total then return -2 end
if redis.call('HGET', KEYS[1], 'state') ~= 'CANCELLED' then redis.call('HSET', KEYS[1], 'state', 'COMPLETED') end
redis.call('HSETNX', KEYS[1], 'startedAt', ARGV[1])
redis.call('HSET', KEYS[1], 'finishedAt', ARGV[1])
return 1
"""

_START = """
-- KEYS: job; ARGV: now. QUEUED -> RUNNING only: a cancel that came first must stand.
redis.call('HSETNX', KEYS[1], 'startedAt', ARGV[1])
if redis.call('HGET', KEYS[1], 'state') == 'QUEUED' then redis.call('HSET', KEYS[1], 'state', 'RUNNING') end
return 1
"""

_CANCEL = """
-- KEYS: job. Answers the state before the call; only unfinished jobs change.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'QUEUED' or state == 'RUNNING' then redis.call('HSET', KEYS[1], 'state', 'CANCELLED') end
return state
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class JobHeader:
    """What an item task needs to know about its job, read in the same round trip as its input."""

    tenant: str
    state: str
    skip_change_identifier: bool


@dataclass(frozen=True)
class ItemWork:
    header: JobHeader | None  # None: the job is gone (expired or never existed)
    element: Any
    already_done: bool
    deliveries: int = 1  # how often this very message (same item, same retry) has been taken
    created_id: int | None = None  # the customer an earlier run of this item added
    add_in_doubt: bool = False  # an earlier run sent an add whose answer never came back


class JobStore:
    def __init__(self, client: redis.Redis, *, ttl_seconds: int = 604800) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self._record = client.register_script(_RECORD_OUTCOME)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)
        self._start = client.register_script(_START)

    @classmethod
    def from_url(cls, url: str, *, ttl_seconds: int = 604800, max_connections: int = 64) -> JobStore:
        pool = redis.BlockingConnectionPool.from_url(
            url, decode_responses=True, max_connections=max_connections, timeout=30,
            health_check_interval=30, socket_keepalive=True,
        )
        return cls(redis.Redis(connection_pool=pool), ttl_seconds=ttl_seconds)

    # -- keys --------------------------------------------------------------------------------

    @staticmethod
    def job_key(job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}"

    def _chunk_key(self, job_id: str, kind: str, index: int) -> str:
        return f"{self.job_key(job_id)}:{kind}:{index // CHUNK}"

    @staticmethod
    def tenant_jobs_key(tenant: str) -> str:
        return f"{PREFIX}:tenant:{tenant}:jobs"

    # -- intake ------------------------------------------------------------------------------

    def new_job(self, tenant: str) -> NewJob:
        """A job to be stored element by element; see :class:`NewJob`."""
        return NewJob(self, tenant)

    # -- item work ---------------------------------------------------------------------------

    def load_item(self, job_id: str, index: int, delivery: str = "0") -> ItemWork:
        """The job header, the element, whether its outcome is already recorded, and how often this
        delivery (``delivery`` names the message: the item's retry generation) was taken: one round trip."""
        key = self.job_key(job_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(key, "tenant", "state", "skipChangeIdentifier")
        pipe.hget(self._chunk_key(job_id, "in", index), str(index))
        pipe.hexists(self._chunk_key(job_id, "res", index), str(index))
        pipe.hincrby(f"{key}:deliveries", f"{index}:{delivery}", 1)
        pipe.expire(f"{key}:deliveries", self.ttl)
        pipe.hset(f"{key}:touched", str(index), repr(time.time()))
        pipe.expire(f"{key}:touched", self.ttl)
        pipe.hget(f"{key}:created", str(index))
        (tenant, state, skip), raw, done, deliveries, _, _, _, created = pipe.execute()
        if tenant is None:
            return ItemWork(header=None, element=None, already_done=bool(done))
        header = JobHeader(tenant=tenant, state=state, skip_change_identifier=skip == "1")
        return ItemWork(header=header, element=json.loads(raw) if raw is not None else None,
                        already_done=bool(done), deliveries=int(deliveries),
                        created_id=int(created) if created not in (None, ADD_IN_DOUBT) else None,
                        add_in_doubt=created == ADD_IN_DOUBT)

    def record_outcome(self, job_id: str, index: int, item: dict, *, failed: bool) -> tuple[bool, bool, int | None]:
        """Record an item's outcome once. Answers (recorded now, was last, next index in its chain)."""
        counter = {"CREATED": "createdCount", "UPDATED": "updatedCount", "CANCELLED": "cancelledCount"}.get(
            item["action"], ""
        )
        key = self.job_key(job_id)
        last, nxt = self._record(
            keys=[key, self._chunk_key(job_id, "res", index), f"{key}:failed", f"{key}:ok", f"{key}:next", ACTIVE_KEY],
            args=[index, json.dumps(item, separators=(",", ":")), "1" if failed else "0", counter, self.ttl,
                  time.time(), job_id],
        )
        return last != -1, last == 1, int(nxt) if nxt is not None else None

    def next_in_chain(self, job_id: str, index: int) -> int | None:
        nxt = self.redis.hget(f"{self.job_key(job_id)}:next", str(index))
        return int(nxt) if nxt is not None else None

    def chained_indexes(self, job_id: str) -> set[int]:
        """Indexes that wait for an earlier item of their chain rather than starting on their own."""
        return {int(v) for v in self.redis.hvals(f"{self.job_key(job_id)}:next")}

    def fan_out_state(self, job_id: str) -> tuple[int | None, int]:
        """(totalCount, first index not yet published); totalCount None when the job is gone."""
        total, position = self.redis.hmget(self.job_key(job_id), "totalCount", "fanOutNext")
        return (int(total) if total is not None else None), int(position or 0)

    def save_fan_out_position(self, job_id: str, position: int) -> None:
        self.redis.hset(self.job_key(job_id), "fanOutNext", str(position))

    def mark_running(self, job_id: str) -> None:
        self._start(keys=[self.job_key(job_id)], args=[now_iso()])
        self.touch_active(job_id)

    # -- idempotency keys ------------------------------------------------------------------------

    def claim_idempotency_key(self, tenant: str, key: str, digest: str) -> dict | None:
        """Claim ``key`` for a new submission; answer the earlier claim if there is one.

        The claim is made before the job exists (so two racing requests cannot both create one)
        and holds no job id until :meth:`bind_idempotency_key`; an unbound claim lapses in a minute.
        """
        name = f"{PREFIX}:idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"
        if self.redis.set(name, json.dumps({"digest": digest, "jobId": None}), nx=True, ex=60):
            return None
        raw = self.redis.get(name)
        return json.loads(raw) if raw else {"digest": digest, "jobId": None}

    def bind_idempotency_key(self, tenant: str, key: str, digest: str, job_id: str) -> None:
        name = f"{PREFIX}:idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"
        self.redis.set(name, json.dumps({"digest": digest, "jobId": job_id}), ex=self.ttl)

    def release_idempotency_key(self, tenant: str, key: str) -> None:
        self.redis.delete(f"{PREFIX}:idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}")

    # -- the sweeper's view ----------------------------------------------------------------------

    def touch_active(self, job_id: str, now: float | None = None) -> None:
        self.redis.zadd(ACTIVE_KEY, {job_id: time.time() if now is None else now})

    def forget_active(self, job_id: str) -> None:
        self.redis.zrem(ACTIVE_KEY, job_id)

    def stalled_jobs(self, progress_before: float, limit: int = 100) -> list[str]:
        return self.redis.zrangebyscore(ACTIVE_KEY, "-inf", progress_before, start=0, num=limit)

    def lost_items(self, job_id: str, total: int, *, touched_before: float) -> list[int]:
        """Items with no outcome that could run now and that no worker has taken lately."""
        key = self.job_key(job_id)
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, total, CHUNK):
            pipe.hkeys(self._chunk_key(job_id, "res", start))
        pipe.hgetall(f"{key}:touched")
        pipe.hgetall(f"{key}:next")
        *chunks, touched, chains = pipe.execute()
        done = {int(i) for chunk in chunks for i in chunk}
        waits_for = {int(nxt): int(prev) for prev, nxt in chains.items()}
        return [
            i for i in range(total)
            if i not in done
            and (i not in waits_for or waits_for[i] in done)
            and float(touched.get(str(i), 0)) < touched_before
        ]

    def finish(self, job_id: str) -> bool:
        """Set the final state; True only for the one call that did it."""
        finished = self._finish(keys=[self.job_key(job_id)], args=[now_iso(), self.ttl]) == 1
        if finished:
            self.forget_active(job_id)
        return finished

    def keep_for_ttl(self, job_id: str, total: int) -> None:
        """Restart every key's expiry so a finished job is kept JOB_TTL_SECONDS from now."""
        key = self.job_key(job_id)
        pipe = self.redis.pipeline(transaction=False)
        for suffix in ("", ":failed", ":ok", ":next", ":created", ":deliveries", ":touched"):
            pipe.expire(key + suffix, self.ttl)
        for start in range(0, total, CHUNK):
            pipe.expire(self._chunk_key(job_id, "in", start), self.ttl)
            pipe.expire(self._chunk_key(job_id, "res", start), self.ttl)
        pipe.execute()

    # -- journal of adds, so a retried item still reports CREATED ----------------------------

    def record_created(self, job_id: str, index: int, user_id: int | None) -> None:
        """The customer the item added; ``None``: an add is being sent, its outcome not known yet."""
        key = f"{self.job_key(job_id)}:created"
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, str(index), ADD_IN_DOUBT if user_id is None else str(user_id))
        pipe.expire(key, self.ttl)
        pipe.execute()

    # -- reading -----------------------------------------------------------------------------

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(self.job_key(job_id))
        return job_document(raw) if raw else None

    def job_tenant(self, job_id: str) -> str | None:
        return self.redis.hget(self.job_key(job_id), "tenant")

    def cancel(self, job_id: str) -> str | None:
        return self._cancel(keys=[self.job_key(job_id)])

    def list_jobs(self, tenant: str, *, state: str | None = None, limit: int = 20) -> list[dict]:
        jobs: list[dict] = []
        key = self.tenant_jobs_key(tenant)
        offset, page = 0, max(limit, 50)
        while len(jobs) < limit:
            ids = self.redis.zrevrange(key, offset, offset + page - 1)
            if not ids:
                break
            offset += len(ids)
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(self.job_key(job_id))
            expired = []
            for job_id, raw in zip(ids, pipe.execute(), strict=True):
                if not raw:
                    expired.append(job_id)
                    continue
                doc = job_document(raw)
                if state is None or doc["state"] == state:
                    jobs.append(doc)
            if expired:
                self.redis.zrem(key, *expired)
        return jobs[:limit]

    def results(self, job_id: str, *, offset: int, limit: int, outcome: str = "all") -> list[dict]:
        """Items in input order; ``outcome`` is all, failed or succeeded."""
        if outcome == "all":
            total = int(self.redis.hget(self.job_key(job_id), "totalCount") or 0)
            indexes = list(range(offset, min(offset + limit, total)))
        else:
            zset = f"{self.job_key(job_id)}:{'failed' if outcome == 'failed' else 'ok'}"
            indexes = [int(i) for i in self.redis.zrange(zset, offset, offset + limit - 1)]
        return self._items(job_id, indexes)

    def iter_results(self, job_id: str, *, outcome: str = "all", page: int = CHUNK) -> Iterator[dict]:
        offset = 0
        while True:
            items = self.results(job_id, offset=offset, limit=page, outcome=outcome)
            if not items:
                return
            yield from items
            offset += page

    def _items(self, job_id: str, indexes: Iterable[int]) -> list[dict]:
        by_chunk: dict[int, list[int]] = {}
        for i in indexes:
            by_chunk.setdefault(i // CHUNK, []).append(i)
        pipe = self.redis.pipeline(transaction=False)
        order: list[list[int]] = []
        for _chunk, members in by_chunk.items():
            pipe.hmget(self._chunk_key(job_id, "res", members[0]), [str(i) for i in members])
            order.append(members)
        items: list[dict] = []
        for members, values in zip(order, pipe.execute(), strict=True):
            for i, raw in zip(members, values, strict=True):
                # Not processed yet: say so in place, so paging stays aligned with the input.
                items.append(json.loads(raw) if raw is not None else pending_item(i))
        return items

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False


def pending_item(index: int) -> dict:
    return {"index": index, "action": "PENDING", "entityId": None, "result": None, "errors": [], "warnings": []}


def job_document(raw: dict[str, str]) -> dict[str, Any]:
    """The public job document from the stored hash (internal fields left out)."""
    doc: dict[str, Any] = {
        "jobId": raw["jobId"],
        "state": raw.get("state", QUEUED),
        "skipChangeIdentifier": raw.get("skipChangeIdentifier") == "1",
    }
    for name in COUNTERS:
        doc[name] = int(raw.get(name) or 0)
    for name in ("createdAt", "startedAt", "finishedAt"):
        doc[name] = raw.get(name)
    return doc


class NewJob:
    """A job being stored as its submission is read: inputs go to Redis a chunk at a time.

    Only the chunk being filled is held in memory, so a streamed submission is never held
    whole. The job becomes visible with :meth:`finish`, after all its inputs are stored; a
    submission refused half way is undone with :meth:`abort`, leaving nothing behind.
    """

    def __init__(self, store: JobStore, tenant: str) -> None:
        self.store = store
        self.tenant = tenant
        self.job_id = new_job_id()
        self.count = 0
        self._chunk: dict[str, str] = {}

    def add(self, element: Any) -> None:
        self._chunk[str(self.count)] = json.dumps(element, separators=(",", ":"))
        self.count += 1
        if len(self._chunk) == CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self._chunk:
            return
        chunk_key = self.store._chunk_key(self.job_id, "in", self.count - 1)
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.hset(chunk_key, mapping=self._chunk)
        pipe.expire(chunk_key, self.store.ttl)
        pipe.execute()
        self._chunk = {}

    def finish(self, *, skip_change_identifier: bool, next_index: dict[int, int],
               extra: dict[str, str] | None = None) -> str:
        """Store the last inputs, the order of chained items and the job itself; answer its id."""
        self._flush()
        key = self.store.job_key(self.job_id)
        doc = {
            "jobId": self.job_id,
            "tenant": self.tenant,
            "state": QUEUED,
            "skipChangeIdentifier": "1" if skip_change_identifier else "0",
            "createdAt": now_iso(),
            "createdTs": repr(time.time()),
            **dict.fromkeys(COUNTERS, 0),
            "totalCount": self.count,
            **(extra or {}),
        }
        pipe = self.store.redis.pipeline(transaction=False)
        if next_index:
            pipe.hset(f"{key}:next", mapping={str(k): str(v) for k, v in next_index.items()})
            pipe.expire(f"{key}:next", self.store.ttl)
        # The job hash goes last: a job is visible only once its inputs are all stored.
        pipe.hset(key, mapping={k: str(v) for k, v in doc.items()})
        pipe.expire(key, self.store.ttl)
        pipe.zadd(self.store.tenant_jobs_key(self.tenant), {self.job_id: time.time()})
        pipe.zadd(ACTIVE_KEY, {self.job_id: time.time()})
        pipe.execute()
        return self.job_id

    def abort(self) -> None:
        """Remove whatever was stored of this job: its inputs and, if it was finished, the job."""
        self._chunk = {}
        key = self.store.job_key(self.job_id)
        chunks = [f"{key}:in:{n}" for n in range((self.count + CHUNK - 1) // CHUNK)]
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.delete(key, f"{key}:next", *chunks)
        pipe.zrem(self.store.tenant_jobs_key(self.tenant), self.job_id)
        pipe.zrem(ACTIVE_KEY, self.job_id)
        pipe.execute()
