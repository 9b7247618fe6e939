"""No job waits behind another: windowed fair dispatch, immediate cancel, leases that outlive nothing.

Each test runs its own stack (private Redis, API, real workers) and asserts the order of events;
the times are printed (``-s``), and bench/scheduling.py measures them with their goals.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid

import pytest
import redis

from tests.helpers import (
    ApiClient,
    assert_exact,
    calls_since,
    customers,
    ndjson_file,
    post_ndjson,
    progress,
    simulator_tenant,
    tenants_file,
    wait_for,
)

pytestmark = pytest.mark.slow


def tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_a_one_profile_job_finishes_while_a_big_job_submitted_before_it_still_runs(make_stack, sim):
    """The order of events, not a time: the small job ends before the big one (a queue served in order
    would end it after all 5,000). How long it takes is bench/scheduling.py's figure."""
    stack = make_stack()
    stack.worker()
    sim.configure(latencyMs=20)
    big = stack.api.submit(customers(5000, tag("BIG"))).get_json()["jobId"]
    wait_for(lambda: progress(stack.api, big)["processedCount"] >= 100, timeout=60, what="the big job to run")

    started = time.monotonic()
    small = stack.api.run(customers(1, tag("SMALL"), first_mobile=5000), timeout=60)
    took = time.monotonic() - started
    big_now = progress(stack.api, big)

    print(f"one-profile job under a 5,000-item job: {took:.2f}s; the big job had "
          f"{big_now['totalCount'] - big_now['processedCount']} items left")
    assert_exact(small, 1)
    assert big_now["finishedAt"] is None and big_now["processedCount"] < big_now["totalCount"], big_now
    stack.api.delete(f"/jobs/{big}")
    assert stack.api.wait(big, timeout=30)["state"] == "CANCELLED"


def test_a_second_tenants_job_runs_beside_the_first_tenants_big_job_and_ends_first(make_stack, sim, tmp_path):
    """Fair shares as an order of events: the second tenant's smaller job, submitted while the first
    tenant's big one runs, ends while the big one still runs, and the big one kept going meanwhile
    (served in order, the small one would wait for all of the big one; starved, the big one would stop)."""
    tenants = tenants_file(tmp_path / "tenants.toml", east=simulator_tenant("token-east", sim.url),
                           west=simulator_tenant("token-west", sim.url))
    stack = make_stack(tenants_file=str(tenants), upsert_api_token="")
    stack.worker()
    sim.configure(latencyMs=20)
    east, west = ApiClient(stack.api.client.application, token="token-east"), \
        ApiClient(stack.api.client.application, token="token-west")
    first = east.submit(customers(3000, tag("EAST"))).get_json()["jobId"]
    wait_for(lambda: progress(east, first)["processedCount"] >= 300, timeout=60, what="the first tenant's job")

    e0 = progress(east, first)["processedCount"]
    second = west.run(customers(600, tag("WEST"), first_mobile=3000), timeout=120)
    e1 = progress(east, first)
    left = e1["totalCount"] - e1["processedCount"]

    print(f"while the second tenant ran its 600 items the first ran {e1['processedCount'] - e0}; {left} left")
    assert_exact(second, 600)
    assert e1["finishedAt"] is None and left > 0, e1
    assert e1["processedCount"] > e0
    east.delete(f"/jobs/{first}")
    assert east.wait(first, timeout=30)["state"] == "CANCELLED"


def test_cancelling_a_big_job_ends_it_at_once_and_no_cancelled_item_reaches_the_downstream(make_stack, sim):
    stack = make_stack()
    stack.worker()
    sim.configure(latencyMs=5)
    job_id = stack.api.submit(customers(20_000, tag("CXL"))).get_json()["jobId"]
    wait_for(lambda: progress(stack.api, job_id)["processedCount"] >= 300, timeout=60, what="300 items done")

    answered = stack.api.delete(f"/jobs/{job_id}").get_json()
    cancelled_at, started = time.time(), time.monotonic()
    job = stack.api.wait(job_id, timeout=30)
    took = time.monotonic() - started

    running_at_cancel = answered["totalCount"] - answered["processedCount"]
    print(f"cancel of 20,000 items: finished {took:.2f}s after the cancel answered; "
          f"{answered['cancelledCount']} cancelled at once, {running_at_cancel} were running")
    assert answered["state"] == "CANCELLED" and answered["estimatedSecondsLeft"] is None
    assert answered["cancelledCount"] > 15_000  # most were never dispatched
    assert (job["state"], job["processedCount"]) == ("CANCELLED", 20_000)
    ran = job["createdCount"] + job["updatedCount"] + (job["failureCount"] - job["cancelledCount"])
    assert ran + job["cancelledCount"] == 20_000
    adds = [c for c in calls_since(sim, cancelled_at) if c["endpoint"] == "add"]
    assert len(adds) <= running_at_cancel  # only items already running went on
    assert len(sim.customers()) == job["createdCount"]
    lines = stack.api.get(f"/jobs/{job_id}/results", format="ndjson", outcome="failed").get_data(as_text=True)
    failed = [json.loads(line) for line in lines.splitlines()]
    assert len(failed) == job["failureCount"]
    assert {item["action"] for item in failed} == {"CANCELLED"}
    assert all(item["input"]["profiles"] for item in failed)  # ready to resubmit


def test_a_frozen_worker_costs_one_lease_and_changes_nothing_when_it_wakes(make_stack, sim):
    stack = make_stack(item_lease_seconds=6)
    sim.configure(latencyMs=5)
    frozen, other = stack.worker(), stack.worker()
    job_id = stack.api.submit(customers(1500, tag("FRZ"))).get_json()["jobId"]
    wait_for(lambda: progress(stack.api, job_id)["processedCount"] >= 300, timeout=60, what="300 items done")

    os.killpg(frozen.process.pid, signal.SIGSTOP)
    try:
        job = stack.api.wait(job_id, timeout=90)  # without the frozen worker, which never wakes meanwhile
        assert_exact(job, 1500)
        customers_before = len(sim.customers())
    finally:
        os.killpg(frozen.process.pid, signal.SIGCONT)
    # Awake: its keeper finds the leases gone, and each of its threads stops before its next call or
    # finds its outcome fenced off.
    taken = wait_for(lambda: re.search(rb"(\d+) leases were taken away", frozen.log_path.read_bytes()),
                     timeout=30, what="the woken worker to notice")
    wait_for(lambda: frozen.log_path.read_bytes().count(b"lease lost to another worker") >= int(taken.group(1)),
             timeout=30, what="every item of the woken worker to stand down")

    assert progress(stack.api, job_id) | {"estimatedCompletionAt": None} == job | {"estimatedCompletionAt": None}
    assert len(sim.customers()) == customers_before == 1500
    assert other.process.poll() is None and frozen.process.poll() is None


def test_a_hundred_thousand_profiles_as_ndjson_run_cancel_and_export_whole(make_stack, sim, tmp_path):
    stack = make_stack()
    stack.worker()
    sim.configure(latencyMs=20)
    store = redis.Redis.from_url(stack.redis.url)
    baseline = store.info("memory")["used_memory"]
    path = ndjson_file(tmp_path / "big.ndjson", 100_000)

    started = time.monotonic()
    response = post_ndjson(stack.api.client.application, path, stack.settings.upsert_api_token)
    accepted = time.monotonic() - started
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["jobId"]

    peak = 0

    def thousands_done() -> bool:
        """Running a while, counted in items, not seconds: a loaded machine only takes longer to get there."""
        nonlocal peak
        peak = max(peak, store.info("memory")["used_memory"])
        return progress(stack.api, job_id)["processedCount"] >= 5_000

    wait_for(thousands_done, timeout=180, what="5,000 items to run", interval=0.5)
    stack.api.delete(f"/jobs/{job_id}")
    job = stack.api.wait(job_id, timeout=60)
    export = stack.api.get(f"/jobs/{job_id}/results", format="ndjson").get_data(as_text=True).splitlines()

    per_item = (peak - baseline) / 100_000
    print(f"100,000 NDJSON profiles: accepted in {accepted:.1f}s, {job['processedCount'] - job['cancelledCount']} "
          f"ran before the cancel, Redis {per_item:.0f} bytes per item while running")
    assert (job["state"], job["processedCount"]) == ("CANCELLED", 100_000)
    assert len(export) == 100_000
    assert [json.loads(line)["index"] for line in export[:3]] == [0, 1, 2]
    assert per_item <= 2048
