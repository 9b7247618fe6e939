"""The dispatcher's shares, leases and their recovery, and identifier locks, against a real Redis."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.unit.worker.test_jobstore import new_job
from worker.dispatch.leases import Delivery, LeaseKeeper, LeaseLost
from worker.dispatch.reaping import MAX_LAPSES, Lapsed
from worker.dispatch.scheduler import ITEMS_PER_MESSAGE, Dispatcher
from worker.items.locks import IdentifierLocks
from worker.settings import Settings, Tenant
from worker.store import keys


class Recorder:
    def __init__(self) -> None:
        self.published: list[Delivery] = []
        self.ended: list[Lapsed] = []
        self.ended_jobs: list[str] = []


def dispatcher(r, recorder: Recorder, *, slots: int = 4, lease: float = 20.0, tenants=None, **settings) -> Dispatcher:
    LeaseKeeper(r, worker="w1", slots=slots, lease_seconds=lease).renew_once()  # a fleet of one worker
    d = Dispatcher(r, Settings(item_lease_seconds=lease, **settings), tenants or {}, worker="w1",
                   publish=recorder.published.extend, end_lapsed=recorder.ended.append,
                   end_job=lambda job_id, tenant: recorder.ended_jobs.append(job_id))
    assert d.lead()
    d.slow_round()
    return d


def messages(published: list[Delivery]) -> dict[tuple[str, str], list[int]]:
    """The messages the deliveries make (worker/dispatch/publishing.py): one per job and token."""
    out: dict[tuple[str, str], list[int]] = {}
    for x in published:
        out.setdefault((x.job_id, x.token), []).append(x.index)
    return out


def messages_per_job(published: list[Delivery]) -> Counter[str]:
    return Counter(job_id for job_id, _token in messages(published))


@pytest.mark.lua("take_items", "fleet_slots", "renew_leases")
def test_the_fleet_gets_its_threads_and_as_many_queued_and_no_more(store, r):
    new_job(store, n=10 * ITEMS_PER_MESSAGE)
    recorder = Recorder()
    d = dispatcher(r, recorder, slots=4)

    d.tick()
    d.tick()

    sent = messages(recorder.published)
    assert len(sent) == d.target() == 8
    taken = sum(len(m) for m in sent.values())
    assert sorted(x.index for x in recorder.published) == list(range(taken))
    assert r.zcard(keys.INFLIGHT) == taken


def test_a_jobs_first_messages_ramp_up_so_that_its_threads_do_not_all_end_at_once(store, r):
    """Defect: a job's first messages all carried sixteen items, so the fleet's threads ended them in the
    same instant, every round, and waited a tick for their next (10% below a direct client at 20 ms)."""
    new_job(store, n=10 * ITEMS_PER_MESSAGE)
    recorder = Recorder()
    dispatcher(r, recorder, slots=4).tick()  # 4 threads and 4 queued: 8 messages

    sizes = [len(m) for m in messages(recorder.published).values()]
    assert sizes == [4, 8, 12, 16] + [ITEMS_PER_MESSAGE] * 4  # those that start at once each end at their own time


def test_a_jobs_last_messages_carry_no_more_than_its_items_left_spread_over_the_threads(store, r):
    """One slot free and 36 items left for 4 threads: a message of 9, not 16, so no thread is still running
    a full message while the others have nothing left of the job."""
    job_id = new_job(store, n=104 + 36)
    recorder = Recorder()
    d = dispatcher(r, recorder, slots=4)
    d.tick()  # the ramp: 4 + 8 + 12 + 16, then 4 full messages: 104 items in 8 messages
    assert len(recorder.published) == 104
    full = max(messages(recorder.published).values(), key=len)
    for index in full:  # the message of 16 ends: one slot free
        member = next(x.member for x in recorder.published if x.index == index)
        store.record_outcome(member, job_id, index, {"index": index, "action": "CREATED", "errors": []},
                             failed=False)

    d.tick()

    newest = messages(recorder.published[104:])
    assert [len(m) for m in newest.values()] == [9]


def test_a_job_with_fewer_items_left_than_slots_spreads_them_one_per_message(store, r):
    new_job(store, n=6)
    recorder = Recorder()
    dispatcher(r, recorder, slots=4).tick()  # 8 slots

    assert sorted(messages(recorder.published).values()) == [[i] for i in range(6)]


def test_a_jobs_last_items_are_spread_evenly_over_the_slots_they_get(store, r):
    new_job(store, n=15)
    recorder = Recorder()
    dispatcher(r, recorder, slots=2).tick()  # 2 threads and 4 queued: 6 slots for 15 items

    assert sorted(len(m) for m in messages(recorder.published).values()) == [2, 2, 2, 3, 3, 3]
    assert sorted(x.index for x in recorder.published) == list(range(15))


def test_a_messages_slot_is_freed_by_its_last_item_not_its_first(store, r):
    job_id = new_job(store, n=10 * ITEMS_PER_MESSAGE)
    recorder = Recorder()
    d = dispatcher(r, recorder, slots=2)
    d.tick()
    taken = len(recorder.published)
    (first, *rest), *_others = messages(recorder.published).values()
    assert rest

    def record(index: int) -> None:
        member = next(x.member for x in recorder.published if x.index == index)
        assert store.record_outcome(member, job_id, index, {"index": index, "action": "CREATED", "errors": []},
                                    failed=False).recorded

    record(first)
    d.tick()
    assert len(recorder.published) == taken  # the rest of its message still to run
    for index in rest:
        record(index)
    d.tick()
    assert len(messages(recorder.published)) == 7  # now its slot is free for the next message


def test_once_messages_carry_several_items_fewer_of_them_are_queued(store, r):
    """Each thread needs about one item queued behind it, not one message: with several items a message,
    fewer queued messages keep it busy, and a new job's first message waits behind fewer."""
    job_id = new_job(store, n=30 * ITEMS_PER_MESSAGE)
    recorder = Recorder()
    d = dispatcher(r, recorder, slots=8)
    d.tick()  # nothing in flight yet: 8 threads and 8 queued
    sent = list(messages(recorder.published).values())
    assert len(sent) == 16 and d.target(ITEMS_PER_MESSAGE) == 8 + 4
    for indexes in sent[:5]:  # five messages end: 11 in flight, one under the target
        for index in indexes:
            member = next(x.member for x in recorder.published if x.index == index)
            store.record_outcome(member, job_id, index, {"index": index, "action": "CREATED", "errors": []},
                                 failed=False)

    d.tick()

    assert len(messages(recorder.published)) == 17


def test_free_slots_go_round_robin_by_tenant_then_by_job(store, r):
    big = new_job(store, n=100, tenant="north")
    other = new_job(store, n=100, tenant="north")
    small = new_job(store, n=100, tenant="south")
    recorder = Recorder()
    dispatcher(r, recorder, slots=6).tick()  # 12 slots to hand out

    per_job = messages_per_job(recorder.published)
    assert per_job[small] == 6 and per_job[big] == per_job[other] == 3


def test_with_one_slot_free_a_tick_a_tenants_jobs_take_turns(store, r):
    """Defect: each tick's round-robin over a tenant's jobs began again at its first job, so with one slot
    freed a tick (messages of sixteen items free theirs seldom) a small job waited behind a big one of the
    same tenant for as long as the big one took every slot: 5 s for a one-profile job in bench/scheduling.py."""
    big = new_job(store, n=100 * ITEMS_PER_MESSAGE)
    recorder = Recorder()
    d = dispatcher(r, recorder, slots=2)
    d.tick()  # the fleet full: 2 threads and 4 queued
    small = new_job(store, n=1)
    handed: list[str] = []
    for _ in range(4):  # a message ends each tick, freeing one slot
        (job_id, token), _indexes = next(iter(messages(recorder.published).items()))
        for x in [x for x in recorder.published if (x.job_id, x.token) == (job_id, token)]:
            store.record_outcome(x.member, job_id, x.index, {"index": x.index, "action": "CREATED", "errors": []},
                                 failed=False)
            recorder.published.remove(x)
        d.tick()
        handed += [x.job_id for x in recorder.published[-1:]]

    assert small in handed[:2] and big in handed


def test_a_tenant_cap_holds_and_the_rest_of_the_fleet_serves_others(store, r):
    capped = new_job(store, n=100, tenant="north")
    free = new_job(store, n=100, tenant="south")
    recorder = Recorder()
    tenants = {"north": Tenant(id="north", token="n", max_concurrency=2), "south": Tenant(id="south", token="s")}
    dispatcher(r, recorder, slots=6, tenants=tenants).tick()

    per_job = messages_per_job(recorder.published)  # each slot runs one item at a time
    assert per_job[capped] == 2 and per_job[free] == 10


def test_a_tenant_under_a_small_allowance_holds_no_more_threads_than_it_can_keep_busy(store, r):
    """At CAPILLARY_MAX_RPS=2 a 32-thread fleet used to take 64 messages of one job, every thread asleep on
    a token 30 s ahead, and the queued messages' leases lapsed behind them. Now such a tenant gets about
    two seconds of its calls in flight, and the other tenant the rest of the fleet."""
    slow = new_job(store, n=100, tenant="north")
    other = new_job(store, n=100, tenant="south")
    recorder = Recorder()
    tenants = {"north": Tenant(id="north", token="n", max_rps=2), "south": Tenant(id="south", token="s")}
    dispatcher(r, recorder, slots=32, tenants=tenants).tick()

    per_job = messages_per_job(recorder.published)
    assert per_job[slow] == 4 and per_job[other] == 64 - 4


def test_items_waiting_for_their_chain_are_skipped_and_come_after_their_predecessor(store, r):
    job_id = new_job(store, n=4, chains={0: 2, 2: 3})
    recorder = Recorder()
    d = dispatcher(r, recorder, slots=8)
    d.tick()
    assert sorted(x.index for x in recorder.published) == [0, 1]

    first = next(x for x in recorder.published if x.index == 0)
    store.record_outcome(first.member, job_id, 0, {"index": 0, "action": "CREATED", "errors": []}, failed=False,
                         successor=2)
    d.tick()
    assert sorted(x.index for x in recorder.published) == [0, 1, 2]


@pytest.mark.lua("reap_leases")
def test_a_lapsed_lease_is_handed_out_again_under_a_new_token_and_the_old_delivery_is_fenced_off(store, r):
    job_id = new_job(store, n=1)
    recorder = Recorder()
    d = dispatcher(r, recorder, slots=1, lease=0.05)
    d.tick()
    (first,) = recorder.published
    r.zadd(keys.INFLIGHT, {first.member: 0})  # its worker stopped renewing: the lease lapsed

    d.recover_lapsed()

    (_, again) = recorder.published
    assert (again.job_id, again.index) == (job_id, 0) and again.token != first.token
    stale = store.record_outcome(first.member, job_id, 0, {"index": 0, "action": "CREATED", "errors": []},
                                 failed=False)
    assert stale.lease_lost and store.get_job(job_id)["processedCount"] == 0


def test_only_lapses_count_towards_giving_an_item_up_not_its_retries(store, r):
    """Defect: retries, chain hand-ons and re-publishes shared one delivery counter, so an item no worker
    ever died on could be given up with 9004."""
    job_id = new_job(store, n=1)
    recorder = Recorder()
    d = dispatcher(r, recorder, slots=1)
    for attempt in range(MAX_LAPSES + 3):  # retried far more often than the lapse limit
        d.tick()
        member = recorder.published[-1].member
        assert store.defer(member, job_id, 0, delay=0, memo={"a": attempt + 2}) == 1
    d.tick()
    for _ in range(MAX_LAPSES):  # now its workers die under it, again and again
        die_running(store, r, job_id, recorder.published[-1].member)
        d.recover_lapsed()
    assert recorder.ended == [] and r.hget(keys.inputs(job_id, 0), "l:0") == str(MAX_LAPSES)
    die_running(store, r, job_id, recorder.published[-1].member)
    d.recover_lapsed()
    assert [(e.state, e.lapses) for e in recorder.ended] == [("RUNNING", MAX_LAPSES + 1)]


def start(store, r, member: str):
    """What a worker does as it starts an item: read it (its lease checked), then take its locks."""
    from worker.dispatch.planning import identifier_keys
    from worker.items.locks import IdentifierLocks

    job_id, index, token = keys.parse_member(member)
    work = store.claim_items(job_id, [index], token, 20)[0]
    if not work.stale:
        locks = IdentifierLocks(r, ttl_ms=10_000)
        assert locks.acquire(locks.keys(work.meta.tenant, identifier_keys(work.element)), member)
    return work


def die_running(store, r, job_id: str, member: str) -> None:
    """A worker starts the item (reads it, takes its locks) and dies: the lease lapses while the item runs."""
    assert not start(store, r, member).stale
    r.zadd(keys.INFLIGHT, {member: 0})


def test_a_lease_that_lapses_while_its_message_waits_never_counts_against_the_item(store, r):
    """Defect: a lease started when the dispatcher took the item, so messages that waited in a worker's
    queue or behind the rate limiter lapsed and, after MAX_LAPSES, failed with 9004 (28 of 60 items at
    CAPILLARY_MAX_RPS=2). Now only a lapse after the item started counts."""
    job_id = new_job(store, n=1)
    recorder = Recorder()
    d = dispatcher(r, recorder, slots=1)
    d.tick()
    for _ in range(MAX_LAPSES * 3):  # its message waits, or is lost, far more often than the limit
        r.zadd(keys.INFLIGHT, {recorder.published[-1].member: 0})
        d.recover_lapsed()

    assert recorder.ended == [] and len(recorder.published) == MAX_LAPSES * 3 + 1
    assert r.hget(keys.inputs(job_id, 0), "l:0") is None
    stale = start(store, r, recorder.published[0].member)
    assert stale.stale and stale.element is None  # an old message finds its lease gone: it does nothing
    live = start(store, r, recorder.published[-1].member)
    assert not live.stale and live.element is not None


def test_a_frozen_leader_cannot_dispatch_after_another_took_over(store, r):
    """Defect: the lock was released with GET then DEL and lived 3 s, so a leader paused past it kept
    dispatching beside the new one. The scripts now check the leader's token."""
    new_job(store, n=10)
    old_recorder, new_recorder = Recorder(), Recorder()
    old = dispatcher(r, old_recorder, slots=1)
    r.delete(keys.LEADER)  # its lock lapsed while it was frozen
    new = Dispatcher(r, Settings(), {}, worker="w2", publish=new_recorder.published.extend,
                     end_lapsed=new_recorder.ended.append, end_job=lambda job_id, tenant: None)
    assert new.lead() and not Dispatcher(r, Settings(), {}, worker="w3", publish=list, end_lapsed=print,
                                         end_job=print).lead()
    new.slow_round()

    old.tick()  # it wakes up and carries on as if it still led
    new.tick()
    old.stop()  # and its release must not delete the new leader's lock

    assert old_recorder.published == [] and new_recorder.published
    assert r.get(keys.LEADER).startswith("w2:") and new.lead() and not old.lead()


def test_a_cancelled_jobs_lapsed_item_is_ended_not_handed_out(store, r):
    job_id = new_job(store, n=1)
    recorder = Recorder()
    d = dispatcher(r, recorder, slots=1)
    d.tick()
    store.cancel(job_id)
    r.zadd(keys.INFLIGHT, {recorder.published[0].member: 0})

    d.recover_lapsed()

    assert len(recorder.published) == 1 and [e.state for e in recorder.ended] == ["CANCELLED"]


def test_a_job_whose_items_all_ended_is_finished_by_the_dispatcher(store, r):
    job_id = new_job(store, n=2)
    recorder = Recorder()
    d = dispatcher(r, recorder, slots=4)
    d.tick()
    for x in recorder.published:
        store.record_outcome(x.member, job_id, x.index, {"index": x.index, "action": "CREATED", "errors": []},
                             failed=False)
    d.tick()
    assert recorder.ended_jobs == [job_id]


@pytest.mark.lua("renew_leases")
def test_the_keeper_renews_leases_and_locks_beyond_their_first_life_and_notices_a_lost_lease(r, monkeypatch):
    """Defect: an identifier lock (120 s) could lapse under a live item; it now lives as long as the lease.
    Locks are extended once held for over half a lease (they are taken for two leases)."""
    keeper = LeaseKeeper(r, worker="w1", slots=2, lease_seconds=10)
    locks = IdentifierLocks(r, ttl_ms=300)
    mine, taken = "job:1:a", "job:2:b"
    r.zadd(keys.INFLIGHT, {mine: 0, taken: 0})
    lock_keys = IdentifierLocks.keys("t", [("mobile", "911", "INSTORE", "")])
    assert locks.acquire(lock_keys, mine)
    keeper.hold(mine, lock_keys)
    keeper.hold(taken, [])
    r.zrem(keys.INFLIGHT, taken)  # handed out again elsewhere
    keeper.renew_once()
    assert r.pttl(lock_keys[0]) <= 300  # taken just now: not extended yet
    later = time.monotonic() + 6
    monkeypatch.setattr("worker.dispatch.leases.time.monotonic", lambda: later)

    keeper.renew_once()

    assert r.pttl(lock_keys[0]) > 10_000  # twice the lease now, not the 300 ms it was taken with
    assert r.zscore(keys.INFLIGHT, mine) > 1e9
    keeper.check(mine)
    with pytest.raises(LeaseLost):
        keeper.check(taken)


@pytest.mark.lua("renew_leases")
def test_a_lease_ended_by_its_own_record_is_not_reported_taken_away(r, caplog):
    """Defect: a worker frozen between recording a message and letting go of its leases woke up to
    report them "taken away", though its own record had ended them (and nothing ran them elsewhere)."""
    keeper = LeaseKeeper(r, worker="w1", slots=2, lease_seconds=10)
    recorded, taken = "job:1:a", "job:2:b"
    keeper.hold(recorded, [])
    keeper.hold(taken, [])
    keeper.settling([recorded])  # its outcome script is about to end its lease

    keeper.renew_once()  # neither lease is in cu:inflight any more

    keeper.check(recorded)
    with pytest.raises(LeaseLost):
        keeper.check(taken)
    assert "1 leases were taken away" in caplog.text


@pytest.mark.lua("take_locks")
def test_locks_are_all_or_none_and_a_later_delivery_of_the_same_item_takes_them_over(r):
    locks = IdentifierLocks(r, ttl_ms=10_000)
    both = IdentifierLocks.keys("t", [("mobile", "1", "S", "a"), ("email", "e", "S", "a")])
    one = IdentifierLocks.keys("t", [("email", "e", "S", "a")])

    assert locks.acquire(one, "job:7:x")
    assert not locks.acquire(both, "job:8:y")  # another item holds the email: none taken
    assert r.get(both[0] if both[0] not in one else both[1]) is None
    assert locks.acquire(both, "job:7:z")  # the same item, delivered again
    assert {r.get(k) for k in both} == {"job:7:z"}
    assert all(":" not in k.split("lock:")[1] for k in both)  # no identifier value in a key name


def test_a_cancelled_job_whose_running_item_hands_on_its_chain_still_ends(store, r):
    """Defect: the running item's outcome queued its chain successor after the cancel, the job went back
    into sched:due, the dispatcher skipped it there without removing it, and the finisher waited for it
    forever (3,000 chained items cancelled: CANCELLED with no finishedAt)."""
    job_id = new_job(store, n=3, chains={0: 1, 1: 2})
    recorder = Recorder()
    d = dispatcher(r, recorder, slots=4)
    d.tick()
    (running,) = recorder.published  # the chain's head; its successors wait for it
    store.cancel(job_id)

    done = store.record_outcome(running.member, job_id, 0, {"index": 0, "action": "CREATED", "errors": []},
                                failed=False, successor=1)
    d.tick()
    d.tick()

    assert done.recorded and recorder.ended_jobs == [job_id] and len(recorder.published) == 1
    assert store.end(job_id)
    job = store.get_job(job_id)
    assert job["state"] == "CANCELLED" and job["finishedAt"] and job["processedCount"] == job["totalCount"] == 3


def test_the_sweeper_ends_a_job_that_nothing_would_end(store, r, monkeypatch):
    """Every job ends: a job with nothing queued, running or due whose outcomes fall short is rescued,
    a running one by dispatching its items without an outcome again, a cancelled one by counting them."""
    import worker.dispatch.reaping as reaping

    monkeypatch.setattr(reaping, "STUCK_SECONDS", 0.0)
    running_id, cancelled_id = new_job(store, n=2), new_job(store, n=2)
    recorder = Recorder()
    d = dispatcher(r, recorder, slots=8)
    d.tick()
    for x in list(recorder.published):  # every outcome lost: the leases end, nothing is recorded
        r.zrem(keys.INFLIGHT, x.member)
    r.hset(keys.job(cancelled_id), "state", "CANCELLED")
    published = len(recorder.published)

    for _ in range(3):
        d._ending.clear()
        d.tick()

    assert set(recorder.ended_jobs) == {cancelled_id}
    assert store.get_job(cancelled_id)["cancelledCount"] == 2  # counted once, however often it was looked at
    assert sorted(x.index for x in recorder.published[published:] if x.job_id == running_id) == [0, 1]


def test_a_lapse_leaves_the_items_memo_as_it_was_empty_lists_included(store, r):
    """Defect: the recovery script decoded and re-encoded the memo with Lua's cjson, which turns an empty
    list into {}: an item's reserved tokens ``{"add": []}`` came back as a mapping. Lapses are counted
    beside the memo now, which no script rewrites."""
    job_id = new_job(store, n=1)
    recorder = Recorder()
    d = dispatcher(r, recorder, slots=1)
    d.tick()
    memo = '{"a":2,"r":{"add":[]},"c":500000001}'
    r.hset(keys.inputs(job_id, 0), "m:0", memo)
    die_running(store, r, job_id, recorder.published[-1].member)

    d.recover_lapsed()

    assert r.hget(keys.inputs(job_id, 0), "m:0") == memo and r.hget(keys.inputs(job_id, 0), "l:0") == "1"


def test_a_job_that_lost_its_place_in_the_scheduler_is_scheduled_again_and_a_gone_one_forgotten(store, r):
    """The last write of an acceptance (the job's place in the scheduler) lost in a failover, or never
    made because the web process died: the leader finds the job among the tenant's active ones and
    schedules it, so an accepted job still runs. A job whose hash is gone only leaves the active set."""
    from worker.dispatch.reaping import ORPHAN_SECONDS

    tenants = {"t": Tenant(id="t", token="x")}
    orphan, young, gone = new_job(store, n=5), new_job(store, n=5), new_job(store, n=5)
    long_ago = time.time() - ORPHAN_SECONDS - 5
    r.zadd(keys.tenant_active("t"), {orphan: long_ago, gone: long_ago})
    r.zrem(keys.SCHED_JOBS, orphan, young)
    r.delete(keys.job(gone))
    d = dispatcher(r, Recorder(), tenants=tenants)  # its first slow round looks for orphans

    assert r.zscore(keys.SCHED_JOBS, orphan) == pytest.approx(long_ago)
    assert r.zscore(keys.SCHED_JOBS, young) is None  # still within its acceptance: not touched
    assert r.zscore(keys.tenant_active("t"), gone) is None
    assert d.schedule_orphans() == 0


def test_a_big_fleets_tick_hands_out_more_items_than_lua_can_unpack_at_once(store, r):
    """Defect: a fleet of 2,100 threads (4,200 messages of 4 items a tick) made the take script fail
    with 'too many results to unpack', and the leader dispatched nothing at all."""
    new_job(store, n=5000 * ITEMS_PER_MESSAGE)
    recorder = Recorder()
    dispatcher(r, recorder, slots=2100).tick()

    # 2,100 messages ramping up from 1 to 16 items and 2,100 full ones: 51,450 items taken in one script call
    ramp = sum(-(-ITEMS_PER_MESSAGE * n // 2100) for n in range(1, 2101))
    assert len(recorder.published) == ramp + 2100 * ITEMS_PER_MESSAGE > 50_000
    assert r.zcard(keys.INFLIGHT) == len(recorder.published)
