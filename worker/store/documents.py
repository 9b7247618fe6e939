"""The job document and its items as the API shows them, and the store's reads of them.

Jobs' states, the outcome counters an item bumps (one each; the document's counts are sums of them),
the items' placeholders (pending, cancelled) and :class:`JobReads`, the reading half of the job store
(worker/store/jobstore.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

from worker.store import keys, packing

QUEUED, RUNNING, COMPLETED, CANCELLED = "QUEUED", "RUNNING", "COMPLETED", "CANCELLED"

#: One counter per kind of outcome, in the job hash: an item bumps exactly one. The cancel and end scripts
#: (worker/store/lua/cancel_job.lua, end_job.lua) sum the same list (tests/unit/worker/test_lua.py holds them equal).
OUTCOME_COUNTERS = ("n.created", "n.updated", "n.createdWithErrors", "n.updatedWithErrors", "n.failed",
                    "n.cancelled", "n.wouldCreate", "n.wouldUpdate")
#: A dry run's predictions (worker/items/dryrun.py), counted as the outcomes they name.
WOULD_CREATE, WOULD_UPDATE = "WOULD_CREATE", "WOULD_UPDATE"

CODE_CANCELLED = 9002
CANCELLED_MESSAGE = "the job was cancelled before this item ran"



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


@dataclass(frozen=True)
class TenantUsage:
    """A tenant's use of its quotas: jobs not yet ended, their items without an outcome, items
    accepted in the last day (``accepted``: when and how many, oldest first)."""

    jobs: int
    pending_items: int
    items_today: int
    accepted: list[tuple[float, int]]
    now: float


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


class JobReads:
    """Reading jobs and their items: documents, listings, result pages, progress and quotas' usage."""

    redis: redis.Redis

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
                    items[i] = packing.unpack_result(raw)
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
            pipe.hmget(keys.inputs(job_id, members[0]), packing.input_fields(members))
        items = {}
        for members, values in zip(by_chunk.values(), pipe.execute(), strict=True):
            for i, (raw, _memo, _successor) in packing.read_inputs(members, values).items():
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
