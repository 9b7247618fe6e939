"""The job store's scripts against a real Redis: outcomes fenced by leases, counted once; deferral,
cancel and end."""

from __future__ import annotations

import pytest

from worker.store import keys
from worker.store.jobstore import JobStore, job_document


def new_job(store: JobStore, n: int = 3, tenant: str = "t", chains: dict[int, int] | None = None) -> str:
    job = store.new_job(tenant)
    for i in range(n):
        job.add({"profiles": [{"identifiers": [{"type": "externalId", "value": f"E{i}"}], "source": "INSTORE"}]})
    return job.commit(skip_change_identifier=False, next_index=chains or {})


def lease(store: JobStore, job_id: str, index: int, token: str = "tok") -> str:
    """What the dispatcher does for one item: a lease in cu:inflight."""
    member = keys.inflight_member(job_id, index, token)
    store.redis.zadd(keys.INFLIGHT, {member: 9e12})
    return member


def item(index: int, action: str = "CREATED") -> dict:
    return {"index": index, "action": action, "entityId": 1, "result": None, "errors": [], "warnings": []}


@pytest.mark.lua("record_outcomes")
def test_an_outcome_is_recorded_once_and_only_under_its_lease(store):
    job_id = new_job(store)
    member = lease(store, job_id, 0)

    first = store.record_outcome(member, job_id, 0, item(0), failed=False)
    again = store.record_outcome(member, job_id, 0, item(0), failed=False)

    assert first.recorded and not again.recorded and again.lease_lost
    job = store.get_job(job_id)
    assert (job["processedCount"], job["createdCount"], job["successCount"]) == (1, 1, 1)


def test_a_second_delivery_of_an_item_cannot_count_it_twice(store):
    job_id = new_job(store)
    one, two = lease(store, job_id, 1, "a"), lease(store, job_id, 1, "b")  # handed out twice

    assert store.record_outcome(one, job_id, 1, item(1), failed=False).recorded
    late = store.record_outcome(two, job_id, 1, item(1, "UPDATED"), failed=False)

    assert not late.recorded and not late.lease_lost
    assert store.get_job(job_id)["processedCount"] == 1 and store.results(job_id, offset=1, limit=1,
                                                                          outcome="all")[0]["action"] == "CREATED"


def test_a_stale_delivery_of_an_expired_job_writes_nothing(store, r):
    """Defect: an item of an expired job used to recreate its hash (no TTL, no jobId), which then broke
    every sweep with KeyError."""
    job_id = new_job(store)
    r.delete(*keys.job_keys(job_id, 3))  # the job expired

    done = store.record_outcome(keys.inflight_member(job_id, 0, "old"), job_id, 0, item(0), failed=False)

    assert done.lease_lost and not r.exists(keys.job(job_id))
    assert store.get_job(job_id) is None
    assert job_document({"processedCount": "4"}) is None  # a stray hash is no job, not a crash


def test_a_failed_item_is_listed_with_the_failures_and_hands_its_chain_on(store, r):
    job_id = new_job(store, chains={0: 2})
    member = lease(store, job_id, 0)

    store.record_outcome(member, job_id, 0, item(0, "FAILED") | {"errors": [{"code": 1}]}, failed=True, successor=2)

    assert [i["index"] for i in store.results(job_id, offset=0, limit=10, outcome="failed")] == [0]
    assert r.lrange(keys.ready(job_id), 0, -1) == ["2"] and r.zscore(keys.SCHED_DUE, job_id) is not None
    job = store.get_job(job_id)
    assert (job["failureCount"], job["successCount"], job["processedCount"]) == (1, 0, 1)


@pytest.mark.lua("defer_item", "cancel_job")
def test_deferring_hands_the_item_back_with_its_memo_unless_its_lease_is_gone_or_the_job_cancelled(store, r):
    job_id = new_job(store)
    member = lease(store, job_id, 0)

    assert store.defer(member, job_id, 0, delay=5, memo={"a": 2}) == 1
    assert store.defer(member, job_id, 0, delay=5, memo={"a": 3}) == -1  # its lease ended with the first
    assert r.zscore(keys.delayed(job_id), "0") is not None and store.load_item(job_id, 0).memo == {"a": 2}
    other = lease(store, job_id, 1)
    store.cancel(job_id)
    assert store.defer(other, job_id, 1, delay=5, memo={}) == 0  # record it as cancelled instead


@pytest.mark.lua("cancel_job", "end_job")
def test_cancel_counts_every_item_not_in_flight_at_once_and_ends_an_idle_job(store, r):
    job_id = new_job(store, n=5)
    running = lease(store, job_id, 0)

    before, idle = store.cancel(job_id)

    assert (before, idle) == ("QUEUED", False)
    job = store.get_job(job_id)
    assert (job["state"], job["processedCount"], job["cancelledCount"], job["failureCount"]) == ("CANCELLED", 4, 4, 4)
    assert store.load_item(job_id, 3).cancelled  # a queued delivery sees it before it starts
    store.record_outcome(running, job_id, 0, item(0), failed=False)
    assert store.end(job_id) and not store.end(job_id)  # ends once
    ended = store.get_job(job_id)
    assert (ended["state"], ended["processedCount"], ended["finishedAt"] is not None) == ("CANCELLED", 5, True)
    cancelled = store.results(job_id, offset=0, limit=10, outcome="failed")
    assert [i["index"] for i in cancelled] == [1, 2, 3, 4] and cancelled[0]["input"]["profiles"]


@pytest.mark.lua("end_job")
def test_a_job_ends_only_when_every_item_has_an_outcome_and_its_keys_expire_only_then(store, r):
    job_id = new_job(store, n=2)
    assert r.ttl(keys.job(job_id)) == -1 and r.ttl(keys.inputs(job_id, 0)) == -1  # nothing expires while it runs
    store.record_outcome(lease(store, job_id, 0), job_id, 0, item(0), failed=False)
    assert not store.end(job_id)

    store.record_outcome(lease(store, job_id, 1), job_id, 1, item(1, "UPDATED"), failed=False)

    assert store.end(job_id)
    assert 0 < r.ttl(keys.job(job_id)) <= 3600 and 0 < r.ttl(keys.inputs(job_id, 0)) <= 3600
    assert r.zscore(keys.SCHED_JOBS, job_id) is None
    assert store.get_job(job_id)["state"] == "COMPLETED"


@pytest.mark.parametrize("action", ["CREATED", "UPDATED"])
def test_a_partial_success_counts_as_written_and_as_failed(store, action):
    job_id = new_job(store)
    store.record_outcome(lease(store, job_id, 0), job_id, 0, item(0, action) | {"errors": [{"code": 3017}]},
                         failed=True)
    job = store.get_job(job_id)
    assert (job[f"{action.lower()}Count"], job["failureCount"], job["successCount"]) == (1, 1, 0)


@pytest.mark.lua("record_outcomes")
def test_a_messages_outcomes_are_recorded_in_one_step_each_under_its_own_lease(store, r):
    """One script for a message's items: each is recorded once, only under its own lease, with its
    counter, its failure, its locks released, its memo removed and its chain handed on."""
    from worker.store.jobstore import Outcome

    job_id = new_job(store, n=1200, chains={3: 1100})  # two input and result chunks
    members = {i: lease(store, job_id, i) for i in (0, 3, 999, 1000)}
    r.zrem(keys.INFLIGHT, members[999])  # its lease was taken away
    r.set("cu:lock:a", members[0])
    r.set("cu:lock:b", members[999])
    store.save_memo(job_id, 1000, {"d": 1})

    done = store.record_outcomes(job_id, [
        Outcome(members[0], 0, item(0), False, locks=["cu:lock:a"]),
        Outcome(members[3], 3, item(3, "FAILED") | {"errors": [{"code": 1}]}, True, successor=1100),
        Outcome(members[999], 999, item(999), False, locks=["cu:lock:b"]),
        Outcome(members[1000], 1000, item(1000, "UPDATED"), False, memo=True),
    ])

    assert [(d.recorded, d.lease_lost) for d in done] == [(True, False), (True, False), (False, True), (True, False)]
    job = store.get_job(job_id)
    assert (job["processedCount"], job["createdCount"], job["updatedCount"], job["failureCount"]) == (3, 1, 1, 1)
    assert r.zcard(keys.INFLIGHT) == 0 and r.get("cu:lock:a") is None and r.get("cu:lock:b") == members[999]
    assert store.load_item(job_id, 1000).memo == {} and r.lrange(keys.ready(job_id), 0, -1) == ["1100"]
    assert [i["index"] for i in store.results(job_id, offset=0, limit=10, outcome="failed")] == [3]
    assert store.results(job_id, offset=1000, limit=1)[0]["action"] == "UPDATED"
    again = store.record_outcomes(job_id, [Outcome(lease(store, job_id, 0, "b"), 0, item(0, "UPDATED"), False)])
    assert not again[0].recorded and not again[0].lease_lost  # recorded already: not counted twice
    assert store.get_job(job_id)["processedCount"] == 3


@pytest.mark.lua("claim_items")
def test_a_message_is_read_in_one_round_trip_and_a_stale_delivery_is_told_so(store, r):
    """Items are stored packed, a block of them to a field; a message's items (here across two input
    chunks) are read with their memos and successors, and their leases checked, together."""
    job_id = new_job(store, n=1005, chains={998: 1003})
    for i in (998, 999, 1000):
        lease(store, job_id, i, "m")
    store.save_memo(job_id, 999, {"a": 2})
    r.zrem(keys.INFLIGHT, keys.inflight_member(job_id, 1000, "m"))

    works = store.claim_items(job_id, [998, 999, 1000], "m", 20)

    assert [w.element["profiles"][0]["identifiers"][0]["value"] if w.element else None for w in works] == [
        "E998", "E999", None]
    assert works[0].successor == 1003 and works[1].memo == {"a": 2} and works[2].stale
    assert not any(k.startswith("999") or k == "0" for k in r.hkeys(keys.inputs(job_id, 0)))  # no field per item
    assert [e["profiles"][0]["identifiers"][0]["value"] for e in store.iter_inputs(job_id)][1003] == "E1003"


@pytest.mark.lua("claim_items")
def test_a_claim_extends_a_standing_lease_and_refuses_one_that_has_run_out_before_the_reaper_came(store, r):
    """A message that waited in the broker for most of a lease gets a whole lease as it starts, so it
    cannot lapse (and run a second time elsewhere) before its worker's next renewal; one whose lease ran
    out is not taken back, as the reaper may hand its item out again at any moment."""
    job_id = new_job(store, n=3)
    now = float(r.time()[0])
    nearly, ran_out, far = (keys.inflight_member(job_id, i, "w") for i in range(3))
    r.zadd(keys.INFLIGHT, {nearly: now + 1, ran_out: now - 1, far: now + 1000})

    works = store.claim_items(job_id, [0, 1, 2], "w", 20)

    assert [w.stale for w in works] == [False, True, False]
    assert now + 19 <= r.zscore(keys.INFLIGHT, nearly) <= now + 22
    assert r.zscore(keys.INFLIGHT, ran_out) == now - 1  # left to the reaper as it was
    assert r.zscore(keys.INFLIGHT, far) == now + 1000  # never shortened


def test_items_stored_one_field_each_by_an_earlier_version_are_read_as_before(store, r):
    job_id = new_job(store, n=2)
    chunk = keys.inputs(job_id, 0)
    r.hdel(chunk, "z:0", "f:0")
    r.hset(chunk, mapping={"0": '{"profiles":[{"source":"A"}]}', "1": '{"profiles":[{"source":"B"}]}'})

    assert [w.element["profiles"][0]["source"] for w in store.load_items(job_id, [0, 1])] == ["A", "B"]
    assert store.claim_items(job_id, [0, 1], "x", 20)[0].stale  # no lease under that token


def test_a_cancelled_item_is_read_as_cancelled(store, r):
    job_id = new_job(store, 2)
    lease(store, job_id, 0, "a")
    store.cancel(job_id)

    cancelled = store.claim_items(job_id, [0], "a", 20)[0]

    assert cancelled.cancelled and not cancelled.stale and r.keys(keys.LOCK_PREFIX + "*") == []


@pytest.mark.lua("take_locks")
def test_an_item_takes_the_locks_its_intake_named_all_or_none_and_takes_over_its_own(store, r):
    """The worker names an item's locks from its element; the intake stores the first of them, by which
    the reaper tells whether an item had started: the two must agree. A lock held by another job's item
    refuses them all (none is kept); a later delivery of the same item takes them over."""
    from worker.dispatch.planning import identifier_keys
    from worker.items.locks import IdentifierLocks

    element = {"profiles": [{"identifiers": [{"type": "mobile", "value": "919800000001"},
                                             {"type": "email", "value": "a@b.example"}], "source": "INSTORE"}]}
    job = store.new_job("t")
    job.add(element)
    job_id = job.commit(skip_change_identifier=False, next_index={})
    locks = IdentifierLocks(r, ttl_ms=10_000)
    expected = locks.keys("t", identifier_keys(element))
    assert r.hget(keys.inputs(job_id, 0), "f:0") == expected[0].removeprefix(keys.LOCK_PREFIX)

    assert locks.acquire(expected, keys.inflight_member(job_id, 0, "a"))
    assert not locks.acquire(expected[::-1], keys.inflight_member("other", 0, "b"))  # another job's item
    assert {r.get(k) for k in expected} == {keys.inflight_member(job_id, 0, "a")}
    r.delete(expected[0])  # one free, one held by the other item: it must not keep the free one
    assert not locks.acquire(expected, keys.inflight_member("other", 0, "b")) and not r.exists(expected[0])
    r.set(expected[0], keys.inflight_member(job_id, 0, "a"))
    assert locks.acquire(expected, keys.inflight_member(job_id, 0, "c"))  # a later delivery takes them over
    assert {r.get(k) for k in expected} == {keys.inflight_member(job_id, 0, "c")}
    assert 0 < r.pttl(expected[0]) <= 10_000


def test_every_key_of_a_job_hashes_to_one_slot_and_other_jobs_spread(store, r):
    """A job's keys carry its hash tag, so the scripts of one job touch one Redis Cluster slot."""
    from redis.crc import key_slot

    job_id = new_job(store, n=keys.CHUNK + 1)  # two chunks
    stored = [k for k in r.scan_iter(match="cu:{job:*") if job_id in k]
    assert len(stored) >= 3  # the hash and its two input chunks, at least
    assert set(stored) <= set(keys.job_keys(job_id, keys.CHUNK + 1))
    assert len({key_slot(k.encode()) for k in keys.job_keys(job_id, keys.CHUNK + 1)}) == 1
    assert len({key_slot(keys.job(f"{n:032x}").encode()) for n in range(20)}) > 1
