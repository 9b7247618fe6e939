"""The job store in Redis: jobs, their inputs, per-item results and counters (layout: worker/store/keys.py).

Every write an item makes is fenced by its lease: the member ``job:index:token`` in
``cu:inflight`` that the dispatcher created for this very delivery. The outcome script removes
the member and writes the result with HSETNX in one step, so a delivery whose lease was taken
away (its worker froze or lost its network, and the item was handed to another) records nothing,
and no item is ever counted twice.

The hot path is counted in Redis commands (at most about 12 per item, broker included) and in
round trips, so an item reads everything it needs from its input chunk and takes its identifier
locks with one script (:meth:`JobStore.claim_item`), and records its outcome, releases its locks,
ends its lease and hands on its chain with another. An item
bumps exactly one counter, that of its kind of outcome (:data:`OUTCOME_COUNTERS`); the job
document's counts are sums of them, and the dispatcher, which sees every job's items in flight,
queues the job's end once the counters add up to the total.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from worker.clock import now_iso
from worker.redis_connection import connect
from worker.store import keys, metric_fields
from worker.store.lua_scripts import register

QUEUED, RUNNING, COMPLETED, CANCELLED = "QUEUED", "RUNNING", "COMPLETED", "CANCELLED"

#: One counter per kind of outcome, in the job hash: an item bumps exactly one. The cancel and end scripts
#: (worker/store/lua/cancel_job.lua, end_job.lua) sum the same list (tests/unit/worker/test_lua.py holds them equal).
OUTCOME_COUNTERS = ("n.created", "n.updated", "n.createdWithErrors", "n.updatedWithErrors", "n.failed",
                    "n.cancelled", "n.wouldCreate", "n.wouldUpdate")
#: A dry run's predictions (worker/items/dryrun.py), counted as the outcomes they name.
WOULD_CREATE, WOULD_UPDATE = "WOULD_CREATE", "WOULD_UPDATE"

CODE_CANCELLED = 9002
#: The inputs of a submission not yet committed expire this long after their last write.
UNCOMMITTED_SECONDS = 3600
CANCELLED_MESSAGE = "the job was cancelled before this item ran"


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class JobMeta:
    """What every item of a job needs to know about it, stored in each input chunk."""

    tenant: str
    total: int
    skip_change_identifier: bool
    #: validate and look up only: predict, write nothing downstream
    dry_run: bool = False
    #: submitted as CSV: errors tell their row and column (worker/items/csvrows.py)
    csv: bool = False

    def dumps(self) -> str:
        data = {"tenant": self.tenant, "total": self.total, "skip": self.skip_change_identifier}
        if self.dry_run:
            data["dry"] = True
        if self.csv:
            data["csv"] = True
        return json.dumps(data)

    @classmethod
    def loads(cls, raw: str) -> JobMeta:
        data = json.loads(raw)
        return cls(tenant=data["tenant"], total=int(data["total"]), skip_change_identifier=bool(data["skip"]),
                   dry_run=bool(data.get("dry")), csv=bool(data.get("csv")))


@dataclass
class ItemWork:
    """One item as a delivery finds it: read in one round trip."""

    meta: JobMeta | None  # None: the job is gone (expired or never existed)
    element: Any
    cancelled: bool
    #: What earlier runs of this item left: attempt, reserved tokens, created id, add in doubt, lapses.
    memo: dict[str, Any] = field(default_factory=dict)
    successor: int | None = None
    #: The item's identifier locks (by :meth:`JobStore.claim_item`; None when not stored at intake)
    locks: list[str] | None = None
    #: Whether :meth:`JobStore.claim_item` took them (False: another job's item holds one)
    locked: bool = False
    #: The delivery's lease was gone when it was claimed: another delivery runs the item
    stale: bool = False


def _item_work(raw: str | None, meta: str | None, cancelled: str | None, memo: str | None, successor: str | None,
               **locking: Any) -> ItemWork:
    """An item's fields as read from its input chunk, decoded."""
    if meta is None:
        return ItemWork(meta=None, element=None, cancelled=False)
    return ItemWork(
        meta=JobMeta.loads(meta),
        element=json.loads(raw) if raw is not None else None,
        cancelled=cancelled is not None,
        memo=json.loads(memo) if memo else {},
        successor=int(successor) if successor is not None else None,
        **locking,
    )


@dataclass(frozen=True)
class TenantUsage:
    """A tenant's use of its quotas: jobs not yet ended, their items without an outcome, items
    accepted in the last day (``accepted``: when and how many, oldest first)."""

    jobs: int
    pending_items: int
    items_today: int
    accepted: list[tuple[float, int]]
    now: float


@dataclass(frozen=True)
class Recorded:
    """What recording an outcome did."""

    recorded: bool  # False: the lease was lost, or another delivery recorded the item first
    lease_lost: bool


class NotReplicated(redis.exceptions.ConnectionError):
    """The primary has replicas, and none confirmed a new job in time: the job was withdrawn. A
    connection error to its callers, as the store cannot keep the promise of a 202 now (the API's
    503 ``store_unavailable``)."""


class JobStore:
    def __init__(self, client: redis.Redis, *, ttl_seconds: int = 604800, replica_wait_seconds: float = 2.0) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        #: How long a new job waits for a replica to confirm it (``WAIT``); 0: it does not wait.
        self.replica_wait = replica_wait_seconds
        self._claim = register(client, "claim_item")
        self._save_memo = register(client, "save_memo")
        self._record = register(client, "record_outcome")
        self._defer = register(client, "defer_item")
        self._cancel = register(client, "cancel_job")
        self._end = register(client, "end_job")
        self._callback_later = register(client, "callback_later")

    @classmethod
    def from_url(cls, url: str, *, ttl_seconds: int = 604800, max_connections: int = 64,
                 sentinel_master: str = "", replica_wait_seconds: float = 2.0) -> JobStore:
        """The store at ``url``: a server, or the primary that Sentinel names (worker/redis_connection.py)."""
        # Socket timeouts: a host cut off from Redis must fail its commands (and so stop, presume its
        # leases lost) within seconds, not after TCP's retransmissions give up many minutes later.
        client = connect(url, sentinel_master=sentinel_master, max_connections=max_connections,
                         health_check_interval=30, socket_keepalive=True, socket_timeout=10, socket_connect_timeout=5)
        return cls(client, ttl_seconds=ttl_seconds, replica_wait_seconds=replica_wait_seconds)

    # -- intake ------------------------------------------------------------------------------

    def new_job(self, tenant: str, *, dry_run: bool = False, csv: bool = False) -> NewJob:
        """A job to be stored element by element; see :class:`NewJob`."""
        return NewJob(self, tenant, dry_run=dry_run, csv=csv)

    def iter_inputs(self, job_id: str) -> Iterator[Any]:
        """A job's stored elements in input order, a chunk at a time (a dry run's, for its real run)."""
        total = int(self.redis.hget(keys.job(job_id), "totalCount") or 0)
        for start in range(0, total, keys.CHUNK):
            indexes = [str(i) for i in range(start, min(start + keys.CHUNK, total))]
            for raw in self.redis.hmget(keys.inputs(job_id, start), indexes):
                yield json.loads(raw) if raw is not None else None

    def claim_run(self, job_id: str) -> str | None:
        """Mark a dry run as being run; answer the job (or ``"pending"``) an earlier run claim made."""
        if self.redis.hsetnx(keys.job(job_id), "runJobId", "pending"):
            return None
        return self.redis.hget(keys.job(job_id), "runJobId") or "pending"

    def settle_run(self, job_id: str, run_job_id: str | None) -> None:
        """The real job a dry run's run claim made, or None to free the claim after a refusal."""
        if run_job_id is None:
            self.redis.hdel(keys.job(job_id), "runJobId")
        else:
            self.redis.hset(keys.job(job_id), "runJobId", run_job_id)

    # -- a dry run's predictions ------------------------------------------------------------

    def dry_state(self, job_id: str, names: list[str]) -> list[Any]:
        """Fields of a dry run's prediction state (worker/items/dryrun.py), decoded; None where absent."""
        if not names:
            return []
        return [json.loads(raw) if raw is not None else None
                for raw in self.redis.hmget(keys.dry(job_id), names)]

    def save_dry_state(self, job_id: str, fields: dict[str, Any]) -> None:
        if fields:
            self.redis.hset(keys.dry(job_id), mapping={k: json.dumps(v, separators=(",", ":"))
                                                        for k, v in fields.items()})

    # -- one item ----------------------------------------------------------------------------

    def load_item(self, job_id: str, index: int) -> ItemWork:
        i = str(index)
        raw, meta, cancelled, memo, successor = self.redis.hmget(
            keys.inputs(job_id, index), i, keys.META_FIELD, keys.CANCELLED_FIELD, f"m:{i}", f"n:{i}")
        return _item_work(raw, meta, cancelled, memo, successor)

    def claim_item(self, job_id: str, index: int, member: str, *, lock_ttl_ms: int) -> ItemWork:
        """Read an item, as :meth:`load_item`, check its lease and take its identifier locks for
        ``member`` (``job:index:token``), all or none, in the same round trip. A delivery whose lease
        is gone is answered ``stale`` and nothing else: it must not call or record anything. No lock
        is taken for a cancelled item or a job that is gone. ``locks`` is None for an item stored
        without its locks' digests (before they were stored at intake): the caller takes them itself
        (worker/items/locks.py)."""
        i = str(index)
        raw, meta, cancelled, memo, successor, digests, taken, stale = self._claim(
            keys=[keys.INFLIGHT, keys.inputs(job_id, index)],
            args=[i, member, keys.item_of(member), lock_ttl_ms, keys.LOCK_PREFIX])
        if stale == 1:
            return ItemWork(meta=None, element=None, cancelled=False, stale=True)
        return _item_work(raw, meta, cancelled, memo, successor, locked=taken == 1,
                          locks=None if digests is None else [keys.LOCK_PREFIX + d for d in digests.split()])

    def save_memo(self, member: str, job_id: str, index: int, memo: dict[str, Any]) -> bool:
        """Write the item's memo, as long as ``member``'s lease stands; False when it did not."""
        return self._save_memo(keys=[keys.INFLIGHT, keys.inputs(job_id, index)],
                               args=[member, index, json.dumps(memo, separators=(",", ":"))]) == 1

    def record_outcome(self, member: str, job_id: str, index: int, item: dict, *, failed: bool,
                       successor: int | None = None, locks: Iterable[str] = ()) -> Recorded:
        """Record an item's outcome once, end its lease, release its locks and hand on its chain."""
        status = self._record(
            keys=[keys.INFLIGHT, keys.job(job_id), keys.results(job_id, index), keys.failed(job_id),
                  keys.ready(job_id), keys.SCHED_DUE, *locks],
            args=[member, index, json.dumps(item, separators=(",", ":")), "1" if failed else "0",
                  outcome_counter(item["action"], failed), "" if successor is None else successor, job_id],
        )
        return Recorded(recorded=status == 1, lease_lost=status == -1)

    def defer(self, member: str, job_id: str, index: int, *, delay: float, memo: dict[str, Any],
              locks: Iterable[str] = (), keep_locks: bool = False, lock_ttl_ms: int = 0) -> int:
        """Hand the item back to the scheduler for ``delay`` seconds (on Redis's clock, shared by
        every host). Answers 1 deferred, 0 the job was cancelled (the caller records the item
        CANCELLED), -1 the lease is gone (do nothing)."""
        return int(self._defer(
            keys=[keys.INFLIGHT, keys.inputs(job_id, index), keys.delayed(job_id), keys.SCHED_DUE, *locks],
            args=[member, index, delay, json.dumps(memo, separators=(",", ":")), "1" if keep_locks else "0",
                  lock_ttl_ms, job_id],
        ))

    # -- a job's end ---------------------------------------------------------------------------

    def cancel(self, job_id: str) -> tuple[str | None, bool]:
        """Cancel an unfinished job: answers (state before, whether nothing is left running)."""
        total, tenant = self.redis.hmget(keys.job(job_id), "totalCount", "tenant")
        state, idle = self._cancel(
            keys=[keys.job(job_id), keys.INFLIGHT, keys.delayed(job_id), keys.ready(job_id), keys.SCHED_JOBS,
                  keys.SCHED_DUE, keys.METRICS, *(f"{keys.job(job_id)}:in:{n}" for n in keys.chunks(int(total or 0)))],
            args=[job_id, metric_fields.field(metric_fields.ITEMS, tenant or "", CANCELLED)],
        )
        return state, bool(idle)

    def end(self, job_id: str) -> bool:
        """Set the final state and start the TTL of every key of the job; True only for the one call
        that did it."""
        total_raw, tenant = self.redis.hmget(keys.job(job_id), "totalCount", "tenant")
        total = int(total_raw or 0)
        return self._end(
            keys=[keys.job(job_id), keys.SCHED_JOBS, keys.SCHED_DUE, keys.METRICS, keys.CALLBACKS,
                  keys.tenant_jobs(tenant or ""), keys.tenant_active(tenant or ""), *keys.job_keys(job_id, total)],
            args=[now_iso(), self.ttl, job_id, metric_fields.field(metric_fields.JOBS_FINISHED, COMPLETED),
                  metric_fields.field(metric_fields.JOBS_FINISHED, CANCELLED)],
        ) == 1

    # -- callbacks -------------------------------------------------------------------------------

    def callback_later(self, job_id: str, attempt: int, delay: float) -> None:
        """Try again ``delay`` seconds from now, on Redis's clock."""
        self._callback_later(keys=[keys.CALLBACKS, keys.job(job_id)], args=[job_id, attempt, delay])

    def callback_done(self, job_id: str, attempt: int, outcome: str) -> None:
        """Delivered, refused for good, or given up: the callback is no longer due."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(keys.CALLBACKS, job_id)
        if self.redis.exists(keys.job(job_id)):
            pipe.hset(keys.job(job_id), mapping={"cb.attempts": attempt, "cb.outcome": outcome})
        pipe.execute()

    # -- idempotency keys ------------------------------------------------------------------------

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

    # -- reading -----------------------------------------------------------------------------

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        return job_document(self.redis.hgetall(keys.job(job_id)))

    def job_tenant(self, job_id: str) -> str | None:
        return self.redis.hget(keys.job(job_id), "tenant")

    def job_fields(self, job_id: str, *names: str) -> list[str | None]:
        return self.redis.hmget(keys.job(job_id), names)

    def list_jobs(self, tenant: str, *, state: str | None = None, limit: int = 20, skip: int = 0) -> list[dict]:
        """The tenant's jobs, newest first: ``limit`` of them after the first ``skip`` (of ``state``, if given)."""
        jobs: list[dict] = []
        limit += skip
        key = keys.tenant_jobs(tenant)
        offset, page = 0, max(limit, 50)
        while len(jobs) < limit:
            ids = self.redis.zrevrange(key, offset, offset + page - 1)
            if not ids:
                break
            offset += len(ids)
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(keys.job(job_id))
            expired = []
            for job_id, raw in zip(ids, pipe.execute(), strict=True):
                doc = job_document(raw)
                if doc is None:
                    expired.append(job_id)
                elif state is None or doc["state"] == state:
                    jobs.append(doc)
            if expired:
                self.redis.zrem(key, *expired)
        return jobs[skip:limit]

    def results(self, job_id: str, *, offset: int, limit: int, outcome: str = "all") -> list[dict]:
        """Items in input order; ``outcome`` is all, failed or succeeded."""
        indexes = self._indexes(job_id, outcome)
        return self._items(job_id, indexes[offset:offset + limit])

    def iter_results(self, job_id: str, *, outcome: str = "all") -> Iterator[dict]:
        indexes = self._indexes(job_id, outcome)
        for start in range(0, len(indexes), keys.CHUNK):
            yield from self._items(job_id, indexes[start:start + keys.CHUNK])

    def _indexes(self, job_id: str, outcome: str) -> range | list[int]:
        """The indexes a listing shows, in input order.

        Failed items are in a sorted set; items a cancel ended without running have no result at
        all (they were counted at once, see the cancel script) and are failures too.
        """
        total_raw, state = self.redis.hmget(keys.job(job_id), "totalCount", "state")
        total = int(total_raw or 0)
        if outcome == "all":
            return range(total)
        failed = {int(i) for i in self.redis.zrange(keys.failed(job_id), 0, -1)}
        if outcome == "failed" and state != CANCELLED:
            return sorted(failed)
        recorded = self._recorded(job_id, total)
        if outcome == "succeeded":
            return sorted(recorded - failed)
        never_ran = set(range(total)) - recorded - self._in_flight(job_id)
        return sorted(failed | never_ran)

    def _recorded(self, job_id: str, total: int) -> set[int]:
        pipe = self.redis.pipeline(transaction=False)
        for n in keys.chunks(total):
            pipe.hkeys(f"{keys.job(job_id)}:res:{n}")
        return {int(i) for chunk in pipe.execute() for i in chunk}

    def _in_flight(self, job_id: str) -> set[int]:
        prefix = job_id + ":"
        return {keys.parse_member(m)[1] for m in self.redis.zrange(keys.INFLIGHT, 0, -1) if m.startswith(prefix)}

    def _items(self, job_id: str, indexes: Iterable[int]) -> list[dict]:
        by_chunk: dict[int, list[int]] = {}
        for i in indexes:
            by_chunk.setdefault(keys.chunk_number(i), []).append(i)
        if not by_chunk:
            return []
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(keys.job(job_id), "state")
        for members in by_chunk.values():
            pipe.hmget(keys.results(job_id, members[0]), [str(i) for i in members])
        state, *pages = pipe.execute()
        items: dict[int, dict] = {}
        missing: list[int] = []
        for members, values in zip(by_chunk.values(), pages, strict=True):
            for i, raw in zip(members, values, strict=True):
                if raw is not None:
                    items[i] = json.loads(raw)
                else:
                    missing.append(i)
        if missing and state == CANCELLED:
            items.update(self._cancelled_items(job_id, missing))
        return [items.get(i) or pending_item(i) for i in sorted(set(items) | set(missing))]

    def _cancelled_items(self, job_id: str, indexes: list[int]) -> dict[int, dict]:
        """Items a cancel ended before they ran, shown as such, with their input for resubmitting."""
        running = self._in_flight(job_id)
        wanted = [i for i in indexes if i not in running]
        by_chunk: dict[int, list[int]] = {}
        for i in wanted:
            by_chunk.setdefault(keys.chunk_number(i), []).append(i)
        pipe = self.redis.pipeline(transaction=False)
        for members in by_chunk.values():
            pipe.hmget(keys.inputs(job_id, members[0]), [str(i) for i in members])
        items = {}
        for members, values in zip(by_chunk.values(), pipe.execute(), strict=True):
            for i, raw in zip(members, values, strict=True):
                items[i] = cancelled_item(i, json.loads(raw) if raw is not None else None)
        return items

    def progress(self, job_ids: list[str]) -> list[tuple[str, int]]:
        """(state, items without an outcome) of each of these jobs that still exists, in one round trip."""
        if not job_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(keys.job(job_id), "state", "totalCount", *OUTCOME_COUNTERS)
        found = []
        for state, total, *counters in pipe.execute():
            if state is not None:
                found.append((state, int(total or 0) - sum(int(n or 0) for n in counters)))
        return found

    def memory(self) -> tuple[int, int]:
        """(bytes Redis uses, its maxmemory; 0 when it has none)."""
        info = self.redis.info("memory")
        return int(info["used_memory"]), int(info.get("maxmemory") or 0)

    def pending_items(self) -> int:
        """Items of unfinished jobs without an outcome yet."""
        return sum(left for _state, left in self.progress(self.redis.zrange(keys.SCHED_JOBS, 0, -1)))

    def tenant_usage(self, tenant: str) -> TenantUsage:
        """What the tenant uses of its quotas now (api/quotas.py)."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(keys.tenant_active(tenant), 0, -1)
        pipe.zremrangebyscore(keys.tenant_accepted(tenant), "-inf", now - keys.DAY_SECONDS)
        pipe.zrange(keys.tenant_accepted(tenant), 0, -1, withscores=True)
        active, _trimmed, accepted = pipe.execute()
        found = self.progress(active)
        day = [(float(at), int(member.rpartition(":")[2])) for member, at in accepted]
        return TenantUsage(jobs=len(found), pending_items=sum(left for _state, left in found),
                           items_today=sum(n for _at, n in day), accepted=day, now=now)

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


def pending_item(index: int) -> dict:
    return {"index": index, "action": "PENDING", "entityId": None, "result": None, "errors": [], "warnings": []}


def cancelled_item(index: int, element: Any) -> dict:
    return {"index": index, "action": CANCELLED, "entityId": None, "result": None,
            "errors": [{"status": False, "code": CODE_CANCELLED, "message": CANCELLED_MESSAGE}],
            "warnings": [], "input": element}


def outcome_counter(action: str, failed: bool) -> str:
    """The one counter an item's outcome bumps."""
    if action in ("CREATED", "UPDATED"):
        return f"n.{action.lower()}WithErrors" if failed else f"n.{action.lower()}"
    if action == WOULD_CREATE and not failed:
        return "n.wouldCreate"
    if action == WOULD_UPDATE and not failed:
        return "n.wouldUpdate"
    return "n.cancelled" if action == CANCELLED else "n.failed"


def job_counts(raw: dict[str, str]) -> dict[str, int]:
    """The document's counts from the outcome counters: each item is in exactly one of those."""
    n = {name[2:]: int(raw.get(name) or 0) for name in OUTCOME_COUNTERS}
    failure = n["createdWithErrors"] + n["updatedWithErrors"] + n["failed"] + n["cancelled"]
    return {
        "totalCount": int(raw.get("totalCount") or 0),
        "processedCount": sum(n.values()),
        "successCount": n["created"] + n["updated"] + n["wouldCreate"] + n["wouldUpdate"],
        "failureCount": failure,
        "createdCount": n["created"] + n["createdWithErrors"],
        "updatedCount": n["updated"] + n["updatedWithErrors"],
        "cancelledCount": n["cancelled"],
    }


def job_document(raw: dict[str, str]) -> dict[str, Any] | None:
    """The public job document from the stored hash (internal fields left out); None for a hash
    that is not a whole job (an expired job's stray field must not break a listing)."""
    if not raw or "jobId" not in raw:
        return None
    doc: dict[str, Any] = {
        "jobId": raw["jobId"],
        "label": raw.get("label"),
        "state": raw.get("state", QUEUED),
        "skipChangeIdentifier": raw.get("skipChangeIdentifier") == "1",
    }
    counts = job_counts(raw)
    doc.update(counts)
    for name in ("createdAt", "startedAt", "finishedAt"):
        doc[name] = raw.get(name)
    doc["dryRun"] = raw.get("dryRun") == "1"
    if doc["dryRun"]:
        doc["wouldCreateCount"] = int(raw.get("n.wouldCreate") or 0)
        doc["wouldUpdateCount"] = int(raw.get("n.wouldUpdate") or 0)
        run = raw.get("runJobId")
        doc["runJobId"] = run if run and run != "pending" else None
    if raw.get("dryRunOf"):
        doc["dryRunOf"] = raw["dryRunOf"]
    return doc


class NewJob:
    """A job being stored as its submission is read: inputs go to Redis a chunk at a time.

    Only the chunk being filled is held in memory, so a streamed submission is never held
    whole. The job becomes visible, and eligible for dispatch, with :meth:`commit`, after all its
    inputs are stored; a submission refused half way is undone with :meth:`abort`.
    """

    def __init__(self, store: JobStore, tenant: str, *, dry_run: bool = False, csv: bool = False) -> None:
        self.store = store
        self.tenant = tenant
        self.dry_run = dry_run
        self.csv = csv
        self.job_id = new_job_id()
        self.count = 0
        self._chunk: dict[str, str] = {}

    def add(self, element: Any) -> None:
        """Store an element, and the digests of its identifier locks: the worker then reads the item
        and takes its locks in one step (:meth:`JobStore.claim_item`). A dry run's items take no locks:
        they only read, and must not hold back a real job's items."""
        index = self.count
        self._chunk[str(index)] = json.dumps(element, separators=(",", ":"))
        digests = [] if self.dry_run else sorted({
            keys.identifier_lock_digest(self.tenant, source, account, kind, value)
            for kind, value, source, account in keys.identifier_keys(element)})
        if digests:
            self._chunk[keys.lock_field(index)] = " ".join(digests)
        self.count += 1
        if self.count % keys.CHUNK == 0:
            self._flush()

    def seen_identifiers(self) -> SeenInRedis:
        """Where the intake's chain planner keeps the identifiers it has seen (worker/dispatch/planning.py)."""
        return SeenInRedis(self.store.redis, keys.plan(self.job_id))

    def _flush(self) -> None:
        """Store the chunk being filled, with an expiry: should this process die before the commit,
        nothing of the submission outlives :data:`UNCOMMITTED_SECONDS` (the commit lifts it)."""
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
        self._chunk = {}
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
