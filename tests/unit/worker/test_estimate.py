"""The job document's completion estimate, from the pace so far and the downstream limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from worker.dispatch.estimate import seconds_left, with_estimate
from worker.downstream.ratelimit import EndpointRate
from worker.settings import Tenant

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def job(processed: int, created: int = 0, updated: int = 0, started_ago: float = 10.0, total: int = 1000) -> dict:
    return {"totalCount": total, "processedCount": processed, "createdCount": created, "updatedCount": updated,
            "startedAt": (NOW - timedelta(seconds=started_ago)).isoformat(), "finishedAt": None}


def test_the_pace_so_far_predicts_the_rest():
    # 100 items in 10 s: 900 left take 90 s.
    assert seconds_left(job(100, created=100), Tenant(id="t", token="x"), NOW) == 90.0


def test_the_add_limit_bounds_a_job_of_new_customers_that_ran_fast_so_far():
    tenant = Tenant(id="t", token="x", rate_limits={"add": 60.0})  # one add a second
    # 100 items in 10 s so far, all new: 900 more adds need 900 s at the limit, not 90.
    assert seconds_left(job(100, created=100), tenant, NOW) == 900.0


def test_updates_are_bounded_by_their_own_limit_not_the_adds():
    tenant = Tenant(id="t", token="x", rate_limits={"add": 60.0, "update": 6000.0})
    # All known customers so far: the add limit does not hold the estimate back.
    assert seconds_left(job(100, updated=100), tenant, NOW) == 90.0


def test_unknown_before_any_progress_without_limits_and_zero_when_finished():
    tenant = Tenant(id="t", token="x")
    assert with_estimate(job(0), tenant, NOW)["estimatedSecondsLeft"] is None
    finished = job(1000, created=1000) | {"finishedAt": NOW.isoformat()}
    assert with_estimate(finished, tenant, NOW)["estimatedSecondsLeft"] == 0.0
    running = with_estimate(job(500, created=500), tenant, NOW)
    assert running["estimatedCompletionAt"] == "2026-01-01T12:00:10Z"


def test_a_cancelled_job_shows_no_estimate_even_while_items_still_run():
    cancelled = job(500, created=500) | {"state": "CANCELLED"}
    shown = with_estimate(cancelled, Tenant(id="t", token="x"), NOW)
    assert shown["estimatedSecondsLeft"] is None and shown["estimatedCompletionAt"] is None


def test_a_dry_run_is_bounded_by_its_lookups_only_since_it_writes_nothing():
    tenant = Tenant(id="t", token="x", rate_limits={"add": 60.0, "lookup": 6000.0})
    # 100 predictions in 10 s: the add limit, which a real run of 900 new customers would wait for, does not apply.
    assert seconds_left(job(100) | {"dryRun": True}, tenant, NOW) == 90.0
def test_a_learned_add_rate_bounds_the_estimate_and_a_slow_start_does_not():
    tenant = Tenant(id="t", token="x")  # nothing configured
    found = {"add": EndpointRate(per_minute=60.0, ceiling_per_minute=None, found=True, throttled=3,
                                 waited_seconds=0.0)}
    # 900 more adds at the rate the 429s showed, one a second.
    assert seconds_left(job(100, created=100), tenant, NOW, rates=found) == 900.0
    growing = {"add": EndpointRate(per_minute=60.0, ceiling_per_minute=None, found=False, throttled=0,
                                   waited_seconds=0.0)}
    assert seconds_left(job(100, created=100), tenant, NOW, rates=growing) == 90.0
