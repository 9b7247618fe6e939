"""An item's claim and outcome: the writes of a delivery, each fenced by its lease.

Every write an item makes is fenced by its lease: the member ``job:index:token`` in
``cu:inflight`` that the dispatcher created for this very delivery. The outcome script removes
the member and writes the result with HSETNX in one step, so a delivery whose lease was taken
away (its worker froze or lost its network, and the item was handed to another) records nothing,
and no item is ever counted twice. Cancelling and ending a job, and a dry run's state, are here
too: they are the other writes of a job's life after its commit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.commands.core import Script

from worker.clock import now_iso
from worker.lua_scripts import register
from worker.store import keys, metric_fields
from worker.store.documents import CANCELLED, COMPLETED, JobMeta, outcome_counter


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
class Recorded:
    """What recording an outcome did."""

    recorded: bool  # False: the lease was lost, or another delivery recorded the item first
    lease_lost: bool


class ItemClaims:
    """The writing half of the job store (worker/store/jobstore.py) after a job's commit."""

    redis: redis.Redis
    ttl: int

    def _register_claims(self) -> None:
        self._claim: Script = register(self.redis, "claim_item")
        self._save_memo: Script = register(self.redis, "save_memo")
        self._record: Script = register(self.redis, "record_outcome")
        self._defer: Script = register(self.redis, "defer_item")
        self._cancel: Script = register(self.redis, "cancel_job")
        self._end: Script = register(self.redis, "end_job")
        self._callback_later: Script = register(self.redis, "callback_later")

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
