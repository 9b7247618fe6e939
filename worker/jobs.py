"""Job-level logic without Celery: planning the order of items at intake, fan-out, finishing."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from worker import callbacks
from worker.client import PermanentError, RetryableError
from worker.context import WorkerContext
from worker.jobstore import JobStore

log = logging.getLogger(__name__)


def identifier_keys(element: Any) -> list[tuple[str, str, str, str]]:
    """(type, value, source, accountId) of each identifier an element names; [] for junk input."""
    if not isinstance(element, dict) or not isinstance(element.get("profiles"), list):
        return []
    keys = []
    for profile in element["profiles"]:
        if not isinstance(profile, dict) or not isinstance(profile.get("identifiers"), list):
            continue
        source, account = str(profile.get("source") or ""), str(profile.get("accountId") or "")
        for ident in profile["identifiers"]:
            if isinstance(ident, dict) and ident.get("type") and ident.get("value"):
                keys.append((str(ident["type"]), str(ident["value"]), source, account))
    return keys


class ChainPlanner:
    """Items that share an identifier must run one after another, in input order.

    Fed one element at a time as a submission is read, so it keeps only a short digest of each
    identifier, not the elements. :meth:`chains` answers ``{index: next index}`` for every item
    that has a successor in its group; items that share nothing with any other are absent and
    run in parallel. Groups are transitive: if A shares a mobile with B and B an email with C,
    all three run in order.
    """

    def __init__(self) -> None:
        self._parent: dict[int, int] = {}
        # A 16-byte digest per identifier instead of the (type, value, source, account) tuple: a
        # fifth of the memory, and a collision (odds 2**-128) would only put two items in order.
        self._first_with_key: dict[bytes, int] = {}
        self._count = 0

    def add(self, element: Any) -> None:
        index, self._count = self._count, self._count + 1
        for key in identifier_keys(element):
            digest = hashlib.blake2b("\x1f".join(key).encode(), digest_size=16).digest()
            a, b = self._find(self._first_with_key.setdefault(digest, index)), self._find(index)
            if a != b:
                self._parent[max(a, b)] = min(a, b)
                self._parent.setdefault(min(a, b), min(a, b))

    def _find(self, i: int) -> int:
        parent = self._parent
        while parent.get(i, i) != i:
            parent[i] = parent.get(parent[i], parent[i])  # path halving
            i = parent[i]
        return i

    def chains(self) -> dict[int, int]:
        chains: dict[int, int] = {}
        last_in_group: dict[int, int] = {}
        for index in sorted(self._parent):
            root = self._find(index)
            if root in last_in_group:
                chains[last_in_group[root]] = index
            last_in_group[root] = index
        return chains


@dataclass
class FanOutBatch:
    indexes: list[int]
    store: JobStore
    job_id: str
    position: int

    def done(self) -> None:
        self.store.save_fan_out_position(self.job_id, self.position)


def fan_out_indexes(store: JobStore, job_id: str, batch_size: int) -> Iterator[FanOutBatch]:
    """The items that start on their own (chain heads), in batches, resuming where a dead fan-out stopped."""
    total, position = store.fan_out_state(job_id)
    if total is None:
        log.warning("job %s is gone; nothing to fan out", job_id)
        return
    store.mark_running(job_id)
    waiting = store.chained_indexes(job_id)
    for start in range(position, total, batch_size):
        end = min(start + batch_size, total)
        yield FanOutBatch([i for i in range(start, end) if i not in waiting], store, job_id, end)


def finish_job(ctx: WorkerContext, job_id: str) -> bool:
    """Set the job's final state and keep it for the TTL; True only for the call that finished it."""
    if not ctx.store.finish(job_id):
        return False
    job = ctx.store.get_job(job_id) or {}
    ctx.store.keep_for_ttl(job_id, job.get("totalCount", 0))
    log.info("job %s %s: %s items, %s failed", job_id, job.get("state"), job.get("totalCount"),
             job.get("failureCount"))
    return True


def send_callback(ctx: WorkerContext, job_id: str, attempt: int) -> float | None:
    """POST the final job document to the job's callbackUrl; answer a delay to try again after, or None."""
    job_hash = ctx.store.redis.hmget(ctx.store.job_key(job_id), "callbackUrl", "tenant")
    url, tenant_id = job_hash
    tenant = ctx.tenants.get(tenant_id or "")
    job = ctx.store.get_job(job_id)
    if not url or tenant is None or job is None:
        return None
    try:
        callbacks.deliver(ctx.http, url, job, tenant)
    except RetryableError as exc:
        if attempt >= callbacks.MAX_ATTEMPTS:
            log.warning("job %s: callback gave up after %s attempts (%s)", job_id, attempt, exc.message)
            return None
        return min(ctx.settings.max_countdown_seconds, 2.0 ** attempt)
    except PermanentError as exc:
        log.warning("job %s: callback refused (%s)", job_id, exc.message)
        return None
    log.info("job %s: callback delivered", job_id)
    return None
