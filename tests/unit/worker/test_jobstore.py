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


@pytest.mark.lua("record_outcome")
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


@pytest.mark.lua("claim_item")
def test_claiming_an_item_takes_the_same_locks_the_worker_would_compute_all_or_none(store, r):
    """The intake stores each item's lock digests so the worker reads the item and locks it in one
    round trip; the keys must be exactly those IdentifierLocks names, or items stored by an older
    version and new ones would not exclude each other."""
    from worker.dispatch.planning import identifier_keys
    from worker.items.locks import IdentifierLocks

    element = {"profiles": [{"identifiers": [{"type": "mobile", "value": "919800000001"},
                                             {"type": "email", "value": "a@b.example"}], "source": "INSTORE"}]}
    job = store.new_job("t")
    job.add(element)
    job.add({"profiles": [{"identifiers": [{"type": "email", "value": "a@b.example"}], "source": "INSTORE"}]})
    job_id = job.commit(skip_change_identifier=False, next_index={})
    other = store.new_job("t")
    other.add(element)
    other_id = other.commit(skip_change_identifier=False, next_index={})
    expected = IdentifierLocks.keys("t", identifier_keys(element))

    mine = store.claim_item(job_id, 0, lease(store, job_id, 0, "a"), lock_ttl_ms=10_000)
    refused = store.claim_item(other_id, 0, lease(store, other_id, 0, "b"), lock_ttl_ms=10_000)
    again = store.claim_item(job_id, 0, lease(store, job_id, 0, "c"), lock_ttl_ms=10_000)

    assert mine.locked and mine.locks == expected and mine.element == element
    assert not refused.locked and refused.locks == expected  # another job's item holds them: none taken
    assert again.locked  # a later delivery of the same item takes them over
    assert {r.get(k) for k in expected} == {keys.inflight_member(job_id, 0, "c")}
    assert 0 < r.pttl(expected[0]) <= 10_000


def test_a_cancelled_or_unlocked_item_is_claimed_without_locks(store, r):
    job_id = new_job(store, 2)
    r.hdel(keys.inputs(job_id, 1), keys.lock_field(1))  # as stored by a version without lock digests
    store.cancel(job_id)

    cancelled = store.claim_item(job_id, 0, lease(store, job_id, 0, "a"), lock_ttl_ms=10_000)
    old = store.claim_item(job_id, 1, lease(store, job_id, 1, "a"), lock_ttl_ms=10_000)

    assert cancelled.cancelled and not cancelled.locked and r.keys(keys.LOCK_PREFIX + "*") == []
    assert old.locks is None and not old.locked


@pytest.mark.lua("save_memo")
def test_a_stale_delivery_cannot_overwrite_the_items_memo(store, r):
    """Defect: the memo written before an add was a plain HSET, so a delivery whose lease had been taken
    away could overwrite what the live delivery wrote (an add in doubt, a created id)."""
    job_id = new_job(store, n=1)
    stale, live = lease(store, job_id, 0, "old"), lease(store, job_id, 0, "new")
    r.zrem(keys.INFLIGHT, stale)  # the leader took the old delivery's lease away
    assert store.save_memo(live, job_id, 0, {"c": 500000001})

    assert not store.save_memo(stale, job_id, 0, {"d": 1})

    assert store.load_item(job_id, 0).memo == {"c": 500000001}


def test_every_key_of_a_job_hashes_to_one_slot_and_other_jobs_spread(store, r):
    """A job's keys carry its hash tag, so the scripts of one job touch one Redis Cluster slot."""
    from redis.crc import key_slot

    job_id = new_job(store, n=keys.CHUNK + 1)  # two chunks
    stored = [k for k in r.scan_iter(match="cu:{job:*") if job_id in k]
    assert len(stored) >= 3  # the hash and its two input chunks, at least
    assert set(stored) <= set(keys.job_keys(job_id, keys.CHUNK + 1))
    assert len({key_slot(k.encode()) for k in keys.job_keys(job_id, keys.CHUNK + 1)}) == 1
    assert len({key_slot(keys.job(f"{n:032x}").encode()) for n in range(20)}) > 1
