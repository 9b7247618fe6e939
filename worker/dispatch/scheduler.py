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

**Leadership** (worker/dispatch/leadership.py) lets one process at a time run this loop; what the
leader does for items and jobs nothing else would finish is in worker/dispatch/reaping.py.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import redis

from worker.clock import now_iso
from worker.dispatch.leadership import Leadership
from worker.dispatch.leases import Delivery, new_token, worker_id
from worker.dispatch.reaping import ORPHAN_SECONDS, JobView, Lapsed, Reaping
from worker.lua_scripts import register
from worker.settings import Settings, Tenant
from worker.store import keys

log = logging.getLogger(__name__)

#: A callback attempt under way holds its due entry this long; lost with its worker, it is due again after.
CALLBACK_HOLD_SECONDS = 60.0
#: A tenant under CAPILLARY_MAX_RPS gets as many tasks in flight as this many seconds of its calls:
#: enough to keep the allowance busy with calls taking up to that long, no more.
RATE_CAP_SECONDS = 2.0
#: How often the leader looks for lapsed leases, the ends of ended jobs and the size of the fleet.
SLOW_ROUND_SECONDS = 1.0
#: Ticks: quick while there is work to hand out, slower when there is none. Each busy tick costs
#: three Redis commands, so it is not quicker than the buffer needs (see :meth:`Dispatcher.target`).
BUSY_TICK_SECONDS = 0.1
IDLE_TICK_SECONDS = 0.25
#: Items one message carries at most. Sixteen take all but a sixteenth of the per-message cost off a
#: big job's items: Celery's and the broker's, and the Redis commands of reading the items and
#: recording their outcomes, which a message's items share (bench/redis_cost.py: 5.6 commands an item
#: against 6.4 with eight). Each thread still runs one item at a time, so caps and windows bound the
#: calls as before; a job with fewer items left than slots still gets one item a message.
ITEMS_PER_MESSAGE = 16
#: A job's last messages shrink to no fewer items than this (see :meth:`Dispatcher._tokens`). Down to one,
#: a 3,000-item job sent about 45 more messages, 0.2 Redis commands an item more (bench/redis_cost.py),
#: for a tail a few items shorter.
SMALLEST_LAST_MESSAGE = 4


class Dispatcher(Reaping):
    """The leader's loop: hand out free slots fairly, recover lapsed leases, end the jobs whose items have all ended.

    ``publish`` sends deliveries to the broker; ``end_lapsed`` records an item whose lease lapsed
    in a cancelled job, or too often; ``end_job`` ends a job whose items have all
    ended. All three are plain callables, so the loop runs without Celery in tests.
    """

    def __init__(self, client: redis.Redis, settings: Settings, tenants: dict[str, Tenant], *,
                 publish: Callable[[list[Delivery]], None], end_lapsed: Callable[[Lapsed], None],
                 end_job: Callable[[str, str], object], send_callback: Callable[[str], None] | None = None,
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
        self.leadership = Leadership(client, self.worker)
        self._jobs: dict[str, JobView] = {}
        self._turn = 0
        #: Per tenant, where its jobs' round-robin goes on at the next tick
        self._next_job: Counter[str] = Counter()
        self._slots = 0
        self._next_slow_round = 0.0
        self._next_orphan_round = 0.0
        self._ending: dict[str, float] = {}
        self._stuck: dict[str, float] = {}
        self.stopping = threading.Event()

    # -- leadership --------------------------------------------------------------------------

    def lead(self) -> bool:
        """Take or keep the leader's lock; True while this process leads."""
        was = self.leadership.leading
        if self.leadership.keep() and not was:
            self._jobs.clear()  # what another leader did meanwhile is read again
        return self.leadership.leading

    def run(self) -> None:
        while not self.stopping.is_set():
            pause = IDLE_TICK_SECONDS
            try:
                now = time.monotonic()
                if now >= self._next_slow_round:
                    self._next_slow_round = now + SLOW_ROUND_SECONDS
                    if self.lead():
                        self.slow_round()
                if self.leadership.leading:
                    pause = BUSY_TICK_SECONDS if self.tick() else IDLE_TICK_SECONDS
            except redis.RedisError as exc:
                log.warning("dispatcher: job store unreachable (%s)", type(exc).__name__)
                self.leadership.leading = False
                pause = SLOW_ROUND_SECONDS
            except Exception:  # the loop must outlive any one bad round
                log.exception("dispatcher round failed")
            self.stopping.wait(pause)

    def stop(self) -> None:
        self.stopping.set()
        self.leadership.release()

    # -- the slow round: fleet size, lapsed leases, cursors ------------------------------------

    def slow_round(self) -> None:
        self._slots = int(self._fleet(keys=[keys.FLEET, keys.FLEET_SLOTS], args=[self.lease]))
        self.recover_lapsed()
        self.refresh()
        self.queue_due_callbacks()
        if time.monotonic() >= self._next_orphan_round:
            self._next_orphan_round = time.monotonic() + ORPHAN_SECONDS
            self.schedule_orphans()

    def queue_due_callbacks(self) -> None:
        """Queue an attempt for every callback that is due (worker/jobs.py: ``send_callback``). Each
        is held a minute ahead meanwhile: an attempt lost with its worker is queued again then."""
        if self.send_callback is None:
            return
        for job_id in self._due_callbacks(keys=[keys.CALLBACKS, keys.LEADER],
                                          args=[CALLBACK_HOLD_SECONDS, 50, self.leadership.token]):
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
        args: list = [self.lease, now_iso(), self.leadership.token]
        job_keys: list[str] = []
        for job_id, count in allot.items():
            args += [job_id, "1" if job_id in due else "0", *self._tokens(job_id, count, job_id in due)]
            job_keys += [keys.job(job_id), keys.delayed(job_id), keys.ready(job_id), keys.waits(job_id)]
        taken, cursors = self._take(keys=[keys.INFLIGHT, keys.SCHED_DUE, keys.LEADER, *job_keys], args=args)
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
        """How many items to take of a job given ``messages`` slots, then a token for each, dealt
        round-robin over the messages, so that however many the script finds (a chain's waiting items
        are skipped) the messages stay even. A due job may have retries besides, so it is asked for
        full messages. Otherwise the messages are sized so that the fleet's threads stay busy:

        * **A job's first messages ramp up**, those the fleet's threads start at once, from a sixteenth of
          a full message to a full one (those queued behind them are full: they start staggered). Messages
          handed out in one tick and run at the same pace would otherwise end in the same instant, every
          round: the threads would all want their next message at once, while the broker holds a few,
          and wait a tick for the rest (32 threads ran 10% below a direct client at 20 ms).
        * **A job's last messages shrink** (guided self-scheduling): a message carries no more than the
          job's items left spread over the fleet's threads, down to :data:`SMALLEST_LAST_MESSAGE`, so
          no thread is still running a full message while the others have nothing left of the job.
        """
        view = self._jobs[job_id]
        left = view.total - view.cursor
        per = ITEMS_PER_MESSAGE
        if not due:
            per = max(SMALLEST_LAST_MESSAGE, min(ITEMS_PER_MESSAGE, math.ceil(left / max(1, self._slots))))
        sizes = [per] * messages
        if view.cursor == 0 and not due:  # the messages that start at once ramp up; those queued behind are full
            starting = max(1, min(messages, self._slots))
            sizes[:starting] = [math.ceil(per * (n + 1) / starting) for n in range(starting)]
        tokens = [new_token() for _ in range(messages)]
        dealt = [tokens[n] for turn in range(per) for n in range(messages) if sizes[n] > turn]
        if not due:  # a job with fewer items left than slots gets one item a message
            dealt = dealt[:max(messages, left)]
        return [len(dealt), *dealt]

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
        # Each tenant's jobs take turns across ticks too, from where the last tick left off: with one slot
        # free a tick (messages of many items free their slots seldom), the first job would otherwise take
        # them all.
        next_job = {tenant: self._next_job[tenant] % len(by_tenant[tenant]) for tenant in tenants}
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
        self._next_job.update(next_job)
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
                self._jobs[job_id] = JobView(tenant, int(total), int(cursor or 0))

    def _tenant_of(self, job_id: str) -> str | None:
        view = self._jobs.get(job_id)
        return view.tenant if view is not None else self.redis.hget(keys.job(job_id), "tenant")

