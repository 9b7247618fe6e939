"""An item's claim and outcome: the writes of a delivery, each fenced by its lease.

Every outcome an item records is fenced by its lease: the member ``job:index:token`` in
``cu:inflight`` that the dispatcher created for this very delivery. The outcome script removes
the member and writes the result, unless one is there already, in one step, so a delivery whose
lease was taken away (its worker froze or lost its network, and the item was handed to another)
records nothing, and no item is ever counted twice. A message's items are read together and their
outcomes recorded together, when the message's last item has run: Redis's commands are the
service's scarcest resource, and an item costs few of them this way (docs/performance.md).
Cancelling and ending a job, and a dry run's state, are here too: they are the other writes of a
job's life after its commit.
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
from worker.store import cancels, keys, metric_fields, packing
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
    #: The delivery's lease was gone when it was claimed: another delivery runs the item
    stale: bool = False


def _item_work(raw: str | None, meta: str | None, cancelled: str | None, memo: str | None,
               successor: str | None) -> ItemWork:
    """An item's fields as read from its input chunk, decoded."""
    if meta is None:
        return ItemWork(meta=None, element=None, cancelled=False)
    return ItemWork(
        meta=JobMeta.loads(meta),
        element=json.loads(raw) if raw is not None else None,
        cancelled=cancelled is not None,
        memo=json.loads(memo) if memo else {},
        successor=int(successor) if successor is not None else None,
    )


@dataclass(frozen=True)
class Outcome:
    """An item's outcome to record (:meth:`ItemClaims.record_outcomes`): ``memo`` says the item has
    one stored, which its record removes; ``locks`` are the identifier locks it holds."""

    member: str
    index: int
    item: dict
    failed: bool
    successor: int | None = None
    locks: list[str] = field(default_factory=list)
    memo: bool = False


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
        self._claim: Script = register(self.redis, "claim_items")
        self._record: Script = register(self.redis, "record_outcomes")
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
        return self.load_items(job_id, [index])[0]

    def cancelled_since(self, job_id: str, index: int) -> bool:
        """Whether the item's job has been cancelled: asked as each item of a message but the first
        starts, as the message's read may be older than a cancel (one command)."""
        return self.redis.hexists(keys.inputs(job_id, index), keys.CANCELLED_FIELD)

    def load_items(self, job_id: str, indexes: list[int]) -> list[ItemWork]:
        """Items as stored (worker/store/packing.py), with what earlier runs left: one command per
        input chunk they lie in (one, for a message's items), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        self._read(pipe, job_id, indexes)
        return self._decode(job_id, indexes, pipe.execute())

    def claim_items(self, job_id: str, indexes: list[int], token: str, lease_seconds: float) -> list[ItemWork]:
        """A message's items (``indexes`` under the lease token ``token``) read as :meth:`load_items`
        does, and their leases checked and extended by ``lease_seconds``, in one script
        (worker/store/lua/claim_items.lua). An item whose lease is gone, or has run out, is answered
        ``stale`` and nothing else: it must not call or record anything. No lock is taken here:
        each item takes its identifier locks as it starts (worker/items/locks.py)."""
        by_chunk = self._by_chunk(indexes)
        args: list[Any] = [lease_seconds, len(indexes), *(keys.inflight_member(job_id, i, token) for i in indexes)]
        for members in by_chunk.values():
            fields = self._fields(members)
            args += [len(fields), *fields]
        standing, *replies = self._claim(
            keys=[keys.INFLIGHT, *(keys.inputs(job_id, members[0]) for members in by_chunk.values())], args=args)
        return [work if stands else ItemWork(meta=None, element=None, cancelled=False, stale=True)
                for stands, work in zip(standing, self._decode(job_id, indexes, replies), strict=True)]

    @staticmethod
    def _by_chunk(indexes: list[int]) -> dict[int, list[int]]:
        by_chunk: dict[int, list[int]] = {}
        for i in indexes:
            by_chunk.setdefault(keys.chunk_number(i), []).append(i)
        return by_chunk

    @staticmethod
    def _fields(members: list[int]) -> list[str]:
        """The fields of one input chunk to read for ``members``, which all lie in it."""
        return [keys.META_FIELD, keys.CANCELLED_FIELD, *packing.input_fields(members)]

    def _read(self, pipe: Any, job_id: str, indexes: list[int]) -> None:
        for members in self._by_chunk(indexes).values():
            pipe.hmget(keys.inputs(job_id, members[0]), self._fields(members))

    def _decode(self, job_id: str, indexes: list[int], replies: list[list[str | None]]) -> list[ItemWork]:
        works: dict[int, ItemWork] = {}
        for members, (meta, cancelled, *values) in zip(self._by_chunk(indexes).values(), replies, strict=True):
            for i, (raw, memo, successor) in packing.read_inputs(members, values).items():
                works[i] = _item_work(raw, meta, cancelled, memo, successor)
        return [works[i] for i in indexes]

    def save_memo(self, job_id: str, index: int, memo: dict[str, Any]) -> None:
        """Write the item's memo. Its lease is not checked here: the caller has just checked it
        (the lease keeper's check, as before every downstream call), and the outcome, which is
        what counts, is fenced by the lease in any case."""
        self.redis.hset(keys.inputs(job_id, index), f"m:{index}", packing.dumps(memo))

    def record_outcome(self, member: str, job_id: str, index: int, item: dict, *, failed: bool,
                       successor: int | None = None, locks: Iterable[str] = (), memo: bool = False) -> Recorded:
        """Record one item's outcome, as :meth:`record_outcomes` does a message's."""
        return self.record_outcomes(job_id, [Outcome(member, index, item, failed, successor, list(locks), memo)])[0]

    def record_outcomes(self, job_id: str, outcomes: list[Outcome]) -> list[Recorded]:
        """Record the outcomes of a message's items once each, in one step: end their leases,
        release their locks and hand on their chains (worker/store/lua/record_outcomes.lua)."""
        chunks: list[str] = []
        lock_keys: list[str] = []
        args: list[Any] = [job_id, 0, len(outcomes)]

        def position(key: str) -> int:
            if key not in chunks:
                chunks.append(key)
            return chunks.index(key) + 1

        for o in outcomes:
            args += [o.member, o.index, packing.pack_result(o.item), "1" if o.failed else "0",
                     outcome_counter(o.item["action"], o.failed), "" if o.successor is None else o.successor,
                     position(keys.results(job_id, o.index)),
                     position(keys.inputs(job_id, o.index)) if o.memo else 0, len(o.locks)]
            lock_keys += o.locks
        args[1] = len(chunks)
        statuses = self._record(keys=[keys.INFLIGHT, keys.job(job_id), keys.failed(job_id), keys.ready(job_id),
                                      keys.SCHED_DUE, *chunks, *lock_keys], args=args)
        return [Recorded(recorded=status == 1, lease_lost=status == -1) for status in statuses]

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
        if state in ("QUEUED", "RUNNING"):
            # Heard by every worker's cancel watch: their items then look no more (worker/store/cancels.py)
            self.redis.publish(cancels.CHANNEL, job_id)
        return state, bool(idle)

    def end(self, job_id: str) -> bool:
        """Set the final state and start the TTL of every key of the job; True only for the one call
        that did it."""
        total_raw, tenant, idempotency = self.redis.hmget(keys.job(job_id), "totalCount", "tenant", "idempotencyKey")
        total = int(total_raw or 0)
        return self._end(
            keys=[keys.job(job_id), keys.SCHED_JOBS, keys.SCHED_DUE, keys.METRICS, keys.CALLBACKS,
                  keys.tenant_jobs(tenant or ""), keys.tenant_active(tenant or ""), idempotency or keys.job(job_id),
                  *keys.job_keys(job_id, total)],
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
