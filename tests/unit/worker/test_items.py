"""One delivery of an item, on a real Redis, for the outcomes that need no downstream call."""

from __future__ import annotations

from tests.unit.worker.test_jobstore import lease
from worker.context import WorkerContext
from worker.items.run import run_item, run_items
from worker.settings import Settings
from worker.store import keys


def context(r, store, **settings) -> WorkerContext:
    return WorkerContext(Settings(upsert_api_token="tok", **settings), store=store)


def submit(store, element, tenant: str = "default") -> str:
    job = store.new_job(tenant)
    job.add(element)
    return job.commit(skip_change_identifier=False, next_index={})


def three_invalid_items(store) -> str:
    """A job of three items that fail validation (no source: 8004), so that they need no downstream."""
    invalid = {"profiles": [{"identifiers": [{"type": "mobile", "value": "911111111"}]}]}
    job = store.new_job("default")
    for _ in range(3):
        job.add(invalid)
    return job.commit(skip_change_identifier=False, next_index={})


def test_an_invalid_item_fails_without_a_call_and_leaves_no_lock(r, store):
    """Validation runs before an item takes its identifier locks: an invalid one takes none."""
    job_id = submit(store, {"profiles": [{"identifiers": [{"type": "mobile", "value": "911111111"}]}]})
    lease(store, job_id, 0, "t1")

    run = run_item(context(r, store, capillary_base_url="http://127.0.0.1:9"), job_id, 0, "t1")

    (result,) = store.results(job_id, offset=0, limit=1)
    assert run.summary.startswith("FAILED") and result["errors"][0]["field"] == "[0].profiles[0].source"
    assert not r.keys("cu:lock:*")


def test_an_item_of_a_tenant_this_worker_does_not_know_fails_at_once_saying_so(r, store):
    """Defect: an unknown tenant escaped the task as KeyError and looped until 9004."""
    job_id = submit(store, {"profiles": [{"identifiers": [{"type": "mobile", "value": "919999999999"}],
                                          "source": "INSTORE"}]}, tenant="ghost")
    lease(store, job_id, 0, "t1")

    run = run_item(context(r, store), job_id, 0, "t1")

    (result,) = store.results(job_id, offset=0, limit=1)
    assert run.summary == "FAILED 9005" and "tenant 'ghost'" in result["errors"][0]["message"]
    assert store.get_job(job_id)["processedCount"] == 1


def test_a_delivery_of_a_cancelled_job_ends_cancelled_without_a_call(r, store):
    job_id = submit(store, {"profiles": []})
    lease(store, job_id, 0, "t1")
    store.cancel(job_id)

    assert run_item(context(r, store), job_id, 0, "t1").summary == "CANCELLED"
    assert store.get_job(job_id)["cancelledCount"] == 1


def test_a_messages_items_run_in_turn_and_those_waiting_keep_their_lease_alive(r, store):
    """A message of several items (worker/dispatch/scheduler.py): while the first runs, the keeper renews the
    leases of those behind it, so a slow first item never lets them lapse and run twice elsewhere."""
    job_id = three_invalid_items(store)
    members = [lease(store, job_id, i, "t1") for i in range(3)]
    ctx = context(r, store)
    seen: list[float | None] = []

    def guard(run):
        r.zadd(keys.INFLIGHT, {members[2]: 1.0})  # close to lapsing
        ctx.keeper.renew_once()
        seen.append(r.zscore(keys.INFLIGHT, members[2]))
        return run()

    runs = run_items(ctx, job_id, [0, 1, 2], "t1", guard=guard)

    assert [run.summary for run in runs] == ["FAILED 8004"] * 3
    assert [result["index"] for result in store.results(job_id, offset=0, limit=3)] == [0, 1, 2]
    assert seen[0] is not None and seen[0] > 1e9  # renewed while it waited behind the first item
    assert r.zcard(keys.INFLIGHT) == 0 and store.get_job(job_id)["failureCount"] == 3


def test_a_messages_outcomes_wait_for_its_last_item_and_a_lost_lease_records_nothing(r, store):
    """A message's outcomes are recorded in one step once its last item has run; an item whose lease was
    taken away meanwhile (handed out again elsewhere) is not recorded, and the others are."""
    job_id = three_invalid_items(store)
    members = [lease(store, job_id, i, "t1") for i in range(3)]
    ctx = context(r, store)
    processed: list[int] = []

    def guard(run):
        processed.append(store.get_job(job_id)["processedCount"])
        if len(processed) == 4:  # the last item has run; its message's record comes next
            r.zrem(keys.INFLIGHT, members[1])
        return run()

    runs = run_items(ctx, job_id, [0, 1, 2], "t1", guard=guard)

    assert processed == [0] * 5  # the read, three runs, the record: nothing recorded before the record
    assert [run.summary for run in runs] == ["FAILED 8004", "ABANDONED: lease lost", "FAILED 8004"]
    assert [result["action"] for result in store.results(job_id, offset=0, limit=3)] == ["FAILED", "PENDING", "FAILED"]
    assert store.get_job(job_id)["processedCount"] == 2


def test_a_cancel_while_a_messages_first_item_runs_ends_the_items_behind_it_cancelled(r, store):
    """The message's items are read together, before the first runs: the ones behind it look again, so a
    cancel meanwhile still ends every item not yet started CANCELLED."""
    job_id = three_invalid_items(store)
    for i in range(3):
        lease(store, job_id, i, "t1")
    calls: list[str] = []

    def guard(run):
        calls.append("call")
        if len(calls) == 3:  # the first item has run; the second is about to start
            store.cancel(job_id)
        return run()

    runs = run_items(context(r, store), job_id, [0, 1, 2], "t1", guard=guard)

    assert [run.summary for run in runs] == ["FAILED 8004", "CANCELLED", "CANCELLED"]
    job = store.get_job(job_id)
    assert (job["processedCount"], job["cancelledCount"]) == (3, 2)
