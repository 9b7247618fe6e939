"""Which item runs next, and what happens to an item whose worker died.

**Windowed dispatch.** Jobs are not fanned out into the broker. One worker process at a time
(the leader, elected with a short Redis lock) runs :class:`Dispatcher`: every tick it tops the
fleet up to its target (the concurrency of the live workers plus a small buffer, so a freed
thread finds its next message at once), so the broker never holds more than about that many
messages, whatever the size or number of jobs.

**Fair shares.** Free slots are handed out one at a time, round-robin over the tenants that have
work, then over that tenant's jobs, skipping a tenant at its ``max_concurrency`` and a job at its
window. So a job's share is the fleet divided by the tenants with work, then by that tenant's
jobs, and a one-profile job starts within a tick of being submitted, whatever else runs.

**Messages, not items, take slots.** A slot is one message, and one message carries up to
:data:`ITEMS_PER_MESSAGE` items of one job, which its thread runs one after another: Celery's cost
per message (receiving, decoding, handing it to a thread: about half a millisecond of the worker's
CPU) and the leader's are paid once for several items. The items of one message share the token
of their leases, so the messages in flight are the distinct ``job:token`` pairs of ``cu:inflight``.
A job gets more than one item per message only when it has more items left than slots given, so a
small job still spreads over the whole fleet; and since each slot runs one item at a time, caps
and windows still bound the downstream calls running at once.

**Leases** are the worker side (worker/dispatch/leases.py): a lease that lapses is handed out
again here, by the leader, under a new token.

**Leadership** is redis-py's ``Lock`` (``LEADER_SECONDS``), and the scripts that hand out and
recover items check the leader's token, so a leader frozen past its lock cannot dispatch beside
the next one.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import redis

from worker.clock import now_iso
from worker.dispatch.leases import Delivery, new_token, worker_id
from worker.settings import Settings, Tenant
from worker.store import keys
from worker.store.jobstore import job_counts
from worker.store.lua_scripts import register
from worker.store.metric_fields import ITEMS as ITEMS_METRIC
from worker.store.metric_fields import field as metrics_field

log = logging.getLogger(__name__)

#: A lease that lapsed this often without an outcome: the item is given up (error 9004).
MAX_LAPSES = 4
#: A job with nothing queued, running or due whose outcomes fall short this long is rescued.
STUCK_SECONDS = 5.0
#: A callback attempt under way holds its due entry this long; lost with its worker, it is due again after.
CALLBACK_HOLD_SECONDS = 60.0
#: A tenant under CAPILLARY_MAX_RPS gets as many tasks in flight as this many seconds of its calls:
#: enough to keep the allowance busy with calls taking up to that long, no more.
RATE_CAP_SECONDS = 2.0
#: How often the leader looks for lapsed leases, the ends of ended jobs and the size of the fleet.
SLOW_ROUND_SECONDS = 1.0
#: How old an accepted job must be, and how often the leader looks, before a job missing from the
#: scheduler is scheduled again (:meth:`Dispatcher.schedule_orphans`).
ORPHAN_SECONDS = 30.0
#: The leader's lock lives this long unless renewed (every slow round): far above any pause a
#: healthy process makes, and still a short hand-over when the leader dies. Even a leader frozen past
#: it cannot dispatch: the scripts that hand out and recover items check its token first.
LEADER_SECONDS = 10.0
#: Ticks: quick while there is work to hand out, slower when there is none. Each busy tick costs
#: three Redis commands, so it is not quicker than the buffer needs (see :meth:`Dispatcher.target`).
BUSY_TICK_SECONDS = 0.1
IDLE_TICK_SECONDS = 0.25
#: Items one message carries at most. Four takes three quarters of the per-message cost off a big
#: job's items; more would save little more and make a message, and the wait behind the queued
#: ones, longer (see bench/throughput.py and bench/scheduling.py in the README).
ITEMS_PER_MESSAGE = 4


# -- the leader side: dispatching, and recovering lapsed leases ----------------------------------

@dataclass
class _JobView:
    tenant: str
    total: int
    cursor: int


@dataclass(frozen=True)
class Lapsed:
    """A lapsed lease the leader ends instead of handing out again."""

    member: str
    state: str
    lapses: int


class Dispatcher:
    """The leader's loop: hand out free slots fairly, recover lapsed leases, end the jobs whose items have all ended.

    ``publish`` sends deliveries to the broker; ``end_lapsed`` records an item whose lease lapsed
    in a cancelled job, or too often; ``end_job`` queues the end of a job whose items have all
    ended. All three are plain callables, so the loop runs without Celery in tests.
    """

    def __init__(self, client: redis.Redis, settings: Settings, tenants: dict[str, Tenant], *,
                 publish: Callable[[list[Delivery]], None], end_lapsed: Callable[[Lapsed], None],
                 end_job: Callable[[str, str], None], send_callback: Callable[[str], None] | None = None,
                 worker: str | None = None) -> None:
        self.redis = client
        self.settings = settings
        self.tenants = tenants
        self.publish = publish
        self.end_lapsed = end_lapsed
        self.end_job = end_job
        self.send_callback = send_callback
        self.worker = worker or worker_id()
        self.lease = settings.item_lease_seconds
        self._take = register(client, "take_items")
        self._reap = register(client, "reap_leases")
        self._fleet = register(client, "fleet_slots")
        self._due_callbacks = register(client, "due_callbacks")
        # redis-py's Lock: a token of our own, released and extended atomically by it. The token
        # starts with the worker's id, so an operator (and a test) can tell which process leads.
        self._leader_lock = client.lock(keys.LEADER, timeout=LEADER_SECONDS, blocking=False, thread_local=False)
        self._leader_token = f"{self.worker}:{secrets.token_hex(8)}"
        self._jobs: dict[str, _JobView] = {}
        self._turn = 0
        self._slots = 0
        self._next_slow_round = 0.0
        self._next_orphan_round = 0.0
        self._leading = False
        self._ending: dict[str, float] = {}
        self._stuck: dict[str, float] = {}
        self.stopping = threading.Event()

    # -- leadership --------------------------------------------------------------------------

    def lead(self) -> bool:
        """Take or keep the leader's lock; True while this process leads."""
        if self._leading:
            try:
                self._leader_lock.reacquire()
            except redis.exceptions.LockError:
                log.warning("this worker lost the leader's lock; another dispatches now")
                self._leading = False
        if not self._leading:
            self._leading = bool(self._leader_lock.acquire(blocking=False, token=self._leader_token))
            if self._leading:
                log.info("this worker dispatches now")
                self._jobs.clear()
        return self._leading

    def run(self) -> None:
        while not self.stopping.is_set():
            pause = IDLE_TICK_SECONDS
            try:
                now = time.monotonic()
                if now >= self._next_slow_round:
                    self._next_slow_round = now + SLOW_ROUND_SECONDS
                    if self.lead():
                        self.slow_round()
                if self._leading:
                    pause = BUSY_TICK_SECONDS if self.tick() else IDLE_TICK_SECONDS
            except redis.RedisError as exc:
                log.warning("dispatcher: job store unreachable (%s)", type(exc).__name__)
                self._leading = False
                pause = SLOW_ROUND_SECONDS
            except Exception:  # the loop must outlive any one bad round
                log.exception("dispatcher round failed")
            self.stopping.wait(pause)

    def stop(self) -> None:
        self.stopping.set()
        if self._leading:
            try:
                self._leader_lock.release()
            except redis.exceptions.LockError:
                pass  # it had lapsed, or another worker holds it now: not ours to delete
            except redis.RedisError:
                pass

    # -- the slow round: fleet size, lapsed leases, cursors ------------------------------------

    def slow_round(self) -> None:
        self._slots = int(self._fleet(keys=[keys.FLEET, keys.FLEET_SLOTS], args=[self.lease]))
        self.recover_lapsed()
        self.refresh()
        self.queue_due_callbacks()
        if time.monotonic() >= self._next_orphan_round:
            self._next_orphan_round = time.monotonic() + ORPHAN_SECONDS
            self.schedule_orphans()

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

    def queue_due_callbacks(self) -> None:
        """Queue an attempt for every callback that is due (worker/jobs.py: ``send_callback``). Each
        is held a minute ahead meanwhile: an attempt lost with its worker is queued again then."""
        if self.send_callback is None:
            return
        for job_id in self._due_callbacks(keys=[keys.CALLBACKS, keys.LEADER],
                                          args=[CALLBACK_HOLD_SECONDS, 50, self._leader_token]):
            self.send_callback(job_id)

    def target(self, items_per_message: float = 1.0) -> int:
        """Messages in flight the fleet can take: its threads, plus enough queued that no thread
        waits for the next tick. That is about as many queued items as it has threads (32 threads
        at 50 ms a call end about 16 items per 100 ms tick), so as many messages as that makes at
        the size the messages in flight have: fewer when they carry several items, which also keeps
        a new job's first message from waiting behind more items than with one item per message."""
        if self._slots <= 0:
            return 0
        return self._slots + max(4, math.ceil(self._slots / max(1.0, items_per_message)))

    def recover_lapsed(self, limit: int = 200) -> int:
        out = self._reap(keys=[keys.INFLIGHT, keys.LEADER],
                         args=[self.lease, MAX_LAPSES, self._leader_token, keys.job(""), keys.CHUNK, keys.LOCK_PREFIX,
                               *(new_token() for _ in range(limit))])
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

    def _publish(self, deliveries: list[Delivery]) -> None:
        """Publish, or else give the leases back at once: an item whose message never reached the
        broker (it is down, or refused it) is handed out again at the next slow round, and since it
        never started, that costs it nothing (see worker/store/lua/reap_leases.lua). A broker outage delays
        items, never fails them."""
        try:
            self.publish(deliveries)
        except Exception as exc:
            log.warning("cannot publish %s items (%s); they are handed out again shortly", len(deliveries),
                        type(exc).__name__)
            self.redis.zadd(keys.INFLIGHT, {d.member: 0 for d in deliveries}, xx=True)

    def refresh(self) -> None:
        """Re-read every job's cursor: a cancel moves it to the end behind the leader's back."""
        job_ids = list(self._jobs)
        if not job_ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "cursor")
        for job_id, cursor in zip(job_ids, pipe.execute(), strict=True):
            if cursor is not None:
                self._jobs[job_id].cursor = int(cursor)

    def end_ended(self, job_ids: list[str], in_job: Counter[str], due: set[str]) -> None:
        """Queue the end of every job whose items have all ended: all dispatched, none in flight,
        and its outcome counters adding up to its total. A job whose end was queued and has not
        happened ten seconds later (its message was lost) is queued again.

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
                self._ending[job_id] = now + 10 * SLOW_ROUND_SECONDS
                self.end_job(job_id, raw.get("tenant", ""))
            elif job_id not in due:
                first = self._stuck.setdefault(job_id, now)
                self._ending[job_id] = now + SLOW_ROUND_SECONDS  # looked at again in a second, not every tick
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

    # -- the tick: hand out free slots ------------------------------------------------------------

    def tick(self) -> bool:
        """One round of dispatch; True while some job has items to hand out (the next tick comes
        soon then, as slots free up all the time)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(keys.SCHED_JOBS, 0, -1)
        pipe.zrange(keys.INFLIGHT, 0, -1)
        pipe.zrange(keys.SCHED_DUE, 0, -1, withscores=True)
        job_ids, members, scheduled = pipe.execute()
        if not job_ids:
            return False
        self._learn(job_ids)
        messages = {(m.partition(":")[0], m.rpartition(":")[2]) for m in members}
        in_job: Counter[str] = Counter(job_id for job_id, _token in messages)
        self.end_ended(job_ids, in_job, {job_id for job_id, _when in scheduled})
        now = time.time()
        due = [job_id for job_id, when in scheduled if when <= now]
        waiting = any(v.cursor < v.total for v in self._jobs.values()) or bool(due)
        target = self.target(len(members) / len(messages) if messages else 1.0)
        free = target - len(messages)
        if free <= 0:
            return waiting
        allot = self.allot(free, job_ids, in_job, set(due), window=self.settings.job_window or target)
        if not allot:
            return waiting
        args: list = [self.lease, now_iso(), self._leader_token, keys.job("")]
        for job_id, count in allot.items():
            args += [job_id, "1" if job_id in due else "0", *self._tokens(job_id, count, job_id in due)]
        taken, cursors = self._take(keys=[keys.INFLIGHT, keys.SCHED_DUE, keys.LEADER], args=args)
        for job_id, cursor in zip(cursors[::2], cursors[1::2], strict=True):
            if job_id in self._jobs:
                self._jobs[job_id].cursor = int(cursor)
        deliveries = []
        for member in taken:
            job_id, index, token = keys.parse_member(member)
            deliveries.append(Delivery(job_id, index, token, self._jobs[job_id].tenant))
        if deliveries:
            self._publish(deliveries)
        return True

    def _tokens(self, job_id: str, messages: int, due: bool) -> list:
        """How many items to take of a job given ``messages`` slots, then a token for each: one per
        message, dealt round-robin, so that however many the script finds (a chain's waiting items
        are skipped) the messages stay even. A job with fewer items left than slots gets one item
        per message; a due job may have retries besides, so it is asked for full messages."""
        view = self._jobs[job_id]
        items = messages * ITEMS_PER_MESSAGE
        if not due:
            items = min(items, max(messages, view.total - view.cursor))
        tokens = [new_token() for _ in range(messages)]
        return [items, *(tokens[n % messages] for n in range(items))]

    def allot(self, free: int, job_ids: list[str], in_job: Counter[str], due: set[str], *,
              window: int) -> dict[str, int]:
        """How many of ``free`` slots each job gets: round-robin by tenant, then by job."""
        by_tenant: dict[str, list[str]] = defaultdict(list)
        for job_id in job_ids:  # in order of creation
            view = self._jobs.get(job_id)
            if view is not None and (view.cursor < view.total or job_id in due):
                by_tenant[view.tenant].append(job_id)
        if not by_tenant:
            return {}
        in_tenant: Counter[str] = Counter()
        for job_id, n in in_job.items():
            view = self._jobs.get(job_id)
            if view is not None:
                in_tenant[view.tenant] += n
        tenants = sorted(by_tenant)
        start = self._turn % len(tenants)
        tenants = tenants[start:] + tenants[:start]
        self._turn += 1
        allot: Counter[str] = Counter()
        next_job = dict.fromkeys(tenants, 0)
        while free > 0:
            progressed = False
            for tenant in tenants:
                cap = self._cap(tenant)
                if free == 0 or (cap and in_tenant[tenant] >= cap):
                    continue
                jobs = by_tenant[tenant]
                for step in range(len(jobs)):
                    job_id = jobs[(next_job[tenant] + step) % len(jobs)]
                    view = self._jobs[job_id]
                    room = (view.total - view.cursor) + (window if job_id in due else 0)
                    if in_job[job_id] + allot[job_id] < window and allot[job_id] < room:
                        allot[job_id] += 1
                        in_tenant[tenant] += 1
                        next_job[tenant] = (next_job[tenant] + step + 1) % len(jobs)
                        free -= 1
                        progressed = True
                        break
            if not progressed:
                break
        return dict(allot)

    def _cap(self, tenant: str) -> int:
        """The tenant's tasks in flight at most: its ``max_concurrency`` (or the default), and under an
        all-endpoints limit no more than that limit can keep busy (:data:`RATE_CAP_SECONDS` of calls):
        more would only sleep on tokens, holding threads other tenants' items could use."""
        known = self.tenants.get(tenant)
        cap = (known.max_concurrency if known is not None else 0) or self.settings.tenant_max_concurrency
        if known is not None and known.max_rps > 0:
            by_rate = max(4, math.ceil(known.max_rps * RATE_CAP_SECONDS))
            cap = min(cap, by_rate) if cap else by_rate
        return cap

    def _learn(self, job_ids: list[str]) -> None:
        """Cache what the leader needs of each job (its tenant, size and cursor) once."""
        new = [j for j in job_ids if j not in self._jobs]
        for gone in set(self._jobs) - set(job_ids):
            del self._jobs[gone]
        if not new:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job_id in new:
            pipe.hmget(keys.job(job_id), "tenant", "totalCount", "cursor")
        for job_id, (tenant, total, cursor) in zip(new, pipe.execute(), strict=True):
            if tenant is not None:
                self._jobs[job_id] = _JobView(tenant, int(total), int(cursor or 0))

    def _tenant_of(self, job_id: str) -> str | None:
        view = self._jobs.get(job_id)
        return view.tenant if view is not None else self.redis.hget(keys.job(job_id), "tenant")
