"""Reaping: what the leader does for items and jobs that nothing else would finish.

Lapsed leases are handed out again under a new token, or ended (an item of a cancelled job, or one
whose lease lapsed more than :data:`MAX_LAPSES` times after it started: error 9004); a job whose items
have all ended is ended; a job stuck short of its total is rescued; a job accepted but missing
from the scheduler is scheduled again. :class:`Reaping` is the part of the leader's loop
(worker/dispatch/scheduler.py) that does it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import redis
from redis.commands.core import Script

from worker.dispatch.leadership import Leadership
from worker.dispatch.leases import Delivery, new_token
from worker.settings import Tenant
from worker.store import keys, packing
from worker.store.jobstore import job_counts
from worker.store.metric_fields import ITEMS as ITEMS_METRIC
from worker.store.metric_fields import field as metrics_field

log = logging.getLogger(__name__)

#: A lease that lapsed this often without an outcome: the item is given up (error 9004).
MAX_LAPSES = 4
#: A job with nothing queued, running or due whose outcomes fall short this long is rescued.
STUCK_SECONDS = 5.0
#: How old an accepted job must be, and how often the leader looks, before a job missing from the
#: scheduler is scheduled again (:meth:`Dispatcher.schedule_orphans`).
ORPHAN_SECONDS = 30.0
#: A job whose end was asked for and has not happened this long after (it failed, or its message was lost) is
#: asked for again.
ENDING_SECONDS = 10.0
#: A job found stuck is looked at again this long after, not at every tick.
STUCK_LOOK_SECONDS = 1.0


@dataclass(frozen=True)
class Lapsed:
    """A lapsed lease the leader ends instead of handing out again."""

    member: str
    state: str
    lapses: int



@dataclass
class JobView:
    """What the leader keeps of a job between ticks."""

    tenant: str
    total: int
    cursor: int


class Reaping:
    """Recovering lapsed leases, ending ended jobs, rescuing stuck ones and scheduling orphans."""

    redis: redis.Redis
    tenants: dict[str, Tenant]
    lease: float
    leadership: Leadership
    end_lapsed: Callable[[Lapsed], None]
    end_job: Callable[[str, str], object]
    _reap: Script
    _jobs: dict[str, JobView]
    _ending: dict[str, float]
    _stuck: dict[str, float]

    def _publish(self, deliveries: list[Delivery]) -> None:
        raise NotImplementedError

    def _tenant_of(self, job_id: str) -> str | None:
        raise NotImplementedError

    def schedule_orphans(self) -> int:
        """Schedule again every job that was accepted, has not ended and is missing from the scheduler;
        answer how many.

        A job's acceptance writes its place in the scheduler last, after a replica confirmed the rest
        (worker/store/jobstore.py, ``NewJob.commit``): a failover right then can lose that one write, or
        the web process can die just before it. The job's hash and its place among the tenant's
        active jobs say it was accepted; a job older than :data:`ORPHAN_SECONDS` that the scheduler
        does not know is put back, and one whose hash is gone leaves the active set.
        """
        tenants = list(self.tenants)
        if not tenants:
            return 0
        before = time.time() - ORPHAN_SECONDS  # the active set's scores are acceptance times
        pipe = self.redis.pipeline(transaction=False)
        for tenant in tenants:
            pipe.zrangebyscore(keys.tenant_active(tenant), "-inf", before, withscores=True)
        found = [(tenant, job_id, score) for tenant, active in zip(tenants, pipe.execute(), strict=True)
                 for job_id, score in active]
        if not found:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for _tenant, job_id, _score in found:
            pipe.zscore(keys.SCHED_JOBS, job_id)
            pipe.hmget(keys.job(job_id), "totalCount", "finishedAt")
        replies = pipe.execute()
        orphans = 0
        for (tenant, job_id, score), scheduled, (total, finished) in zip(found, replies[::2], replies[1::2],
                                                                           strict=True):
            if total is None:
                self.redis.zrem(keys.tenant_active(tenant), job_id)  # expired or withdrawn: nothing to run
            elif scheduled is None and not finished:
                log.error("job %s: accepted but missing from the scheduler (a failover, or the web process died "
                          "while accepting it); scheduling it again", job_id)
                self.redis.zadd(keys.SCHED_JOBS, {job_id: score}, nx=True)
                orphans += 1
        return orphans

    def recover_lapsed(self, limit: int = 200) -> int:
        """Hand out again the items whose lease lapsed, up to ``limit`` of them a round: found on
        Redis's clock, then their keys read (each item's first lock tells whether it had started) and
        handed to the script, which looks at each lease again (worker/store/lua/reap_leases.lua)."""
        seconds, micros = self.redis.time()
        lapsed = self.redis.zrangebyscore(keys.INFLIGHT, "-inf", seconds + micros / 1e6, start=0, num=limit)
        if not lapsed:
            return 0
        items = [keys.parse_member(member) for member in lapsed]
        pipe = self.redis.pipeline(transaction=False)
        for job_id, index, _token in items:
            pipe.hmget(keys.inputs(job_id, index), f"k:{index}", packing.digests_field(packing.block_of(index)))
        script_keys: list[str] = [keys.INFLIGHT, keys.LEADER]
        args: list = [self.lease, MAX_LAPSES, self.leadership.token]
        for member, (job_id, index, _token), (own, digests) in zip(lapsed, items, pipe.execute(), strict=True):
            digest = packing.first_digest(index, own, digests)
            chunk = keys.inputs(job_id, index)
            script_keys += [keys.job(job_id), chunk, keys.LOCK_PREFIX + digest if digest else chunk]
            args += [member, index, new_token()]
        out = self._reap(keys=script_keys, args=args)
        again: list[Delivery] = []
        for entry in out:
            kind, member = entry[0], entry[1]
            job_id, index, token = keys.parse_member(member)
            if kind == "again":
                tenant = self._tenant_of(job_id)
                if tenant is not None:
                    again.append(Delivery(job_id, index, token, tenant))
            elif kind == "end":
                self.end_lapsed(Lapsed(member, entry[2], int(entry[3])))
        if again:
            log.warning("handing out %s items again whose worker stopped renewing their lease", len(again))
            self._publish(again)
        return len(out)

    def end_ended(self, job_ids: list[str], in_job: Counter[str], due: set[str]) -> None:
        """End every job whose items have all ended: all dispatched, none in flight, and its outcome
        counters adding up to its total. A job whose end was asked for and has not happened ten
        seconds later is asked for again.

        The sweeper: a job with nothing queued, running or due whose counters still fall short (an
        outcome lost by a bug, say) is rescued after :data:`STUCK_SECONDS` (:meth:`rescue`), so
        that every job ends."""
        now = time.monotonic()
        candidates = [j for j in job_ids if j in self._jobs and self._jobs[j].cursor >= self._jobs[j].total
                      and not in_job[j] and now >= self._ending.get(j, 0)]
        for gone in set(self._stuck) - set(candidates):
            del self._stuck[gone]
        if not candidates:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job_id in candidates:
            pipe.hgetall(keys.job(job_id))
        for job_id, raw in zip(candidates, pipe.execute(), strict=True):
            if not raw:
                self.redis.zrem(keys.SCHED_JOBS, job_id)  # the job is gone
            elif raw.get("finishedAt"):
                continue
            elif job_counts(raw)["processedCount"] >= int(raw["totalCount"]):
                self._ending[job_id] = now + ENDING_SECONDS
                self.end_job(job_id, raw.get("tenant", ""))
            elif job_id not in due:
                first = self._stuck.setdefault(job_id, now)
                self._ending[job_id] = now + STUCK_LOOK_SECONDS
                if now - first >= STUCK_SECONDS:
                    del self._stuck[job_id]
                    self.rescue(job_id, raw)

    def rescue(self, job_id: str, raw: dict[str, str]) -> None:
        """A job that would never end otherwise: a cancelled one counts its missing outcomes
        CANCELLED and ends; a running one gets its items without an outcome dispatched again (their
        outcomes are written once, so an item that did end after all is not counted twice)."""
        total = int(raw["totalCount"])
        missing = total - job_counts(raw)["processedCount"]
        if raw.get("state") == "CANCELLED":
            log.error("job %s: cancelled, nothing left running, %s items unaccounted for; counting them "
                      "cancelled and ending it", job_id, missing)
            pipe = self.redis.pipeline(transaction=False)
            pipe.hincrby(keys.job(job_id), "n.cancelled", missing)
            pipe.hincrby(keys.METRICS, metrics_field(ITEMS_METRIC, raw.get("tenant", ""), "CANCELLED"), missing)
            pipe.execute()
            self.end_job(job_id, raw.get("tenant", ""))
            return
        pipe = self.redis.pipeline(transaction=False)
        for n in keys.chunks(total):
            pipe.hkeys(f"{keys.job(job_id)}:res:{n}")
        recorded = {int(i) for chunk in pipe.execute() for i in chunk}
        lost = [i for i in range(total) if i not in recorded]
        log.error("job %s: nothing queued, running or due, yet %s items have no outcome; dispatching them "
                  "again", job_id, len(lost))
        if lost:
            pipe = self.redis.pipeline(transaction=False)
            pipe.srem(keys.waits(job_id), *lost)
            pipe.rpush(keys.ready(job_id), *lost)
            pipe.zadd(keys.SCHED_DUE, {job_id: 0})
            pipe.execute()
