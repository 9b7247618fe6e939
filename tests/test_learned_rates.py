"""Rates learned from the downstream's own answers: a simulator that limits adds and updates apart, and
nothing configured. Few 429s, adds near their limit, updates not held to the adds' pace; the add limit
halved and restored mid-job, the learned rate follows both ways; no item fails for any of it.

Bounds on durations are generous (a busy 2-core machine); bench/learned_rates.py prints the figures.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest
import requests

from tests.helpers import assert_exact, calls_since, customers, progress, seed_customers, wait_for, write_figures

pytestmark = pytest.mark.slow

ADD_LIMIT, UPDATE_LIMIT = 900.0, 3000.0  # a minute: 300 adds take 20 s, 300 updates 6 s


def test_nothing_configured_adds_and_updates_find_their_own_limits(make_stack, sim):
    stack = make_stack()  # learning is on unless CAPILLARY_RATE_LEARNING=off
    tag = "LRN" + uuid.uuid4().hex[:6]
    known, new = customers(300, tag + "K"), customers(300, tag + "N", first_mobile=500)
    seed_customers(stack.settings, known)
    for element in known:
        element["profiles"][0]["firstName"] = "Changed"
    stack.worker()
    sim.configure(rateLimits={"add": ADD_LIMIT, "update": UPDATE_LIMIT})
    start = time.time()

    job = stack.api.run([e for pair in zip(known, new, strict=True) for e in pair], timeout=180)

    assert_exact(job, 600)
    assert (job["createdCount"], job["updatedCount"]) == (300, 300)
    figures = write_figures(calls_since(sim, start), ADD_LIMIT)
    print(f"learned: {figures}")
    assert figures["share_429"] <= 0.05
    assert figures["add_rate"] >= 0.8
    assert figures["updates_done"] < 0.6


def learned_add_rate(stack) -> float:
    """The add rate as /metrics shows it, calls a minute."""
    text = stack.api.client.get("/metrics").get_data(as_text=True)
    found = re.search(r'^upsert_downstream_rate_per_minute\{endpoint="add",tenant="default"\} (\S+)$', text, re.M)
    assert found, "no learned add rate in /metrics"
    return float(found.group(1))


def test_the_learned_rate_follows_a_limit_halved_and_restored_mid_job(make_stack, sim):
    limit = 1200.0
    sim.configure(rateLimits={"add": limit})
    stack = make_stack()
    stack.worker()
    stack.worker()
    job_id = stack.api.submit(customers(700, "HLV" + uuid.uuid4().hex[:6])).get_json()["jobId"]
    wait_for(lambda: progress(stack.api, job_id)["createdCount"] >= 100, timeout=60, what="100 customers added")

    sim.configure(rateLimits={"add": limit / 2})
    halved_at = time.monotonic()
    wait_for(lambda: learned_add_rate(stack) <= 1.1 * limit / 2, timeout=30, interval=0.25,
             what="the learned add rate to follow the halved limit")
    followed = time.monotonic() - halved_at
    low = learned_add_rate(stack)
    added = progress(stack.api, job_id)["createdCount"]  # some adds at the halved limit, about 4 s of them
    wait_for(lambda: progress(stack.api, job_id)["createdCount"] >= min(added + 40, 650), timeout=30,
             what="adds at the halved limit")
    sim.configure(rateLimits={"add": limit})
    restored_at = time.monotonic()
    wait_for(lambda: learned_add_rate(stack) >= limit, timeout=45, interval=0.25,
             what="the learned add rate to climb back")
    climbed = time.monotonic() - restored_at

    job = stack.api.wait(job_id, timeout=120)
    print(f"halved: followed in {followed:.1f}s (down to {low:.0f}/min); restored: back to the limit in {climbed:.1f}s")
    assert_exact(job, 700)
    assert job["createdCount"] == 700
    assert len(requests.get(f"{sim.url}/__admin/customers", timeout=10).json()["customers"]) == 700
