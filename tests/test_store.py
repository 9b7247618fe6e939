"""A full or missing store is an answer, not an outage: 503 with Retry-After, nothing of a refused
submission left behind, and every accepted job finishes.

Each test runs real Redis processes of its own, filled or killed for real.
"""

from __future__ import annotations

import json
import os
import signal
import uuid

import pytest
import redis

from tests.helpers import assert_exact, customers, ndjson_file, post_ndjson, stored_job_ids, wait_for
from worker.store import keys

pytestmark = pytest.mark.slow


def test_a_full_store_refuses_new_submissions_with_503_and_every_accepted_job_finishes(make_stack, sim, tmp_path):
    """Defect: Redis at maxmemory (noeviction) answered the intake's writes with an OutOfMemoryError, a 500,
    and the jobs already accepted stalled for good, as no outcome could be written any more."""
    stack = make_stack(redis_args=("--maxmemory", "8mb", "--maxmemory-policy", "noeviction"))
    store = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    sim.configure(latencyMs=5)
    stack.worker()
    path = ndjson_file(tmp_path / "batch.ndjson", 400)

    accepted: list[str] = []
    refusal = None
    for _ in range(40):
        response = post_ndjson(stack.api.client.application, path, stack.settings.upsert_api_token)
        if response.status_code != 202:
            refusal = response
            break
        accepted.append(response.get_json()["jobId"])
    peak = 0

    def all_finished() -> bool:
        nonlocal peak
        peak = max(peak, int(store.info("memory")["used_memory"]))
        return all(stack.api.get(f"/jobs/{j}").get_json()["finishedAt"] for j in accepted)

    assert refusal is not None, "the store never filled up"
    assert refusal.status_code == 503 and refusal.headers["Retry-After"].isdigit()
    (error,) = refusal.get_json()["errors"]
    assert error["code"] == "store_full" and "try again later" in error["message"]
    # Nothing of the refused submission remains: the only jobs are the accepted ones.
    assert stored_job_ids(store) == set(accepted)
    assert accepted, "not even one job was accepted"

    wait_for(all_finished, timeout=180, what="every accepted job to finish", interval=0.5)
    for job_id in accepted:
        assert_exact(stack.api.get(f"/jobs/{job_id}").get_json(), 400)
    maxmemory = int(store.config_get("maxmemory")["maxmemory"])
    print(f"full store: {len(accepted)} jobs of 400 accepted, the next refused; peak {peak / maxmemory:.0%} "
          f"of maxmemory while they ran")
    assert peak < maxmemory


def test_submissions_while_redis_restarts_get_202_or_503_and_every_accepted_job_completes(make_stack, sim):
    """Defect: a submission that arrived while Redis was down answered 500, where a client needs 503 and
    Retry-After to know it may try again."""
    stack = make_stack(appendonly=True)
    sim.configure(latencyMs=2)
    tag = "RST-" + uuid.uuid4().hex[:6]
    answers: list[tuple[int, dict, dict]] = []

    def submit(n: int) -> None:
        response = stack.api.submit(customers(20, f"{tag}-{n}", first_mobile=20 * n))
        answers.append((response.status_code, dict(response.headers), response.get_json()))

    for n in range(3):
        submit(n)
    os.kill(stack.redis.process.pid, signal.SIGKILL)
    stack.redis.process.wait(10)
    for n in range(3, 6):
        submit(n)
    stack.redis.start()
    for n in range(6, 9):
        submit(n)
    stack.worker()

    refused = [a for a in answers if a[0] != 202]
    assert [a[0] for a in answers] == [202] * 3 + [503] * 3 + [202] * 3, [(a[0], a[2]) for a in answers]
    for _status, headers, body in refused:
        assert headers["Retry-After"].isdigit() and body["errors"][0]["code"] == "store_unavailable"
    ids = [body["jobId"] for status, _h, body in answers if status == 202]
    for job_id in ids:
        assert_exact(stack.api.wait(job_id, timeout=60), 20)
    stored = sim.customers()
    assert len(stored) == 20 * len(ids)
    assert len({json.dumps(c["profiles"][0]["identifiers"], sort_keys=True) for c in stored}) == len(stored)


def test_an_unsafe_store_is_warned_about_at_start_in_readyz_in_metrics_and_by_doctor(tmp_path, simulator, caplog):
    """Redis with an eviction policy and no persistence serves, but everyone who looks is told: the web's
    log at start, /readyz, /metrics and `customer-upsert doctor` (exit 1); a fit Redis passes (exit 0)."""
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from werkzeug.serving import make_server

    from api.app import create_app
    from cli import procfile
    from tests.helpers import RedisServer, free_port, make_settings

    def served(server: RedisServer):
        app = create_app(make_settings(server.url, simulator.url))
        web = make_server("127.0.0.1", free_port(), app, threaded=True)
        threading.Thread(target=web.serve_forever, daemon=True).start()
        return app, web

    def doctor(url: str) -> subprocess.CompletedProcess:
        cli = str(Path(sys.executable).parent / "customer-upsert")
        return subprocess.run([cli, "doctor"], env=procfile.process_env({"UPSERT_URL": url, "UPSERT_API_TOKEN": ""}),
                              capture_output=True, text=True, timeout=60)

    (tmp_path / "lru").mkdir()
    (tmp_path / "fit").mkdir()
    unsafe = RedisServer(tmp_path / "lru", extra=("--maxmemory-policy", "allkeys-lru")).start()
    fit = RedisServer(tmp_path / "fit", appendonly=True,
                      extra=("--maxmemory", "64mb", "--maxmemory-policy", "noeviction")).start()
    try:
        with caplog.at_level("WARNING", logger="api.app"):
            app, web = served(unsafe)
        started = " ".join(r.getMessage() for r in caplog.records)
        assert "maxmemory-policy is allkeys-lru" in started and "neither the append-only file" in started
        base = f"http://127.0.0.1:{web.server_port}"
        ready = app.test_client().get("/readyz").get_json()
        assert {w["reason"] for w in ready["store"]["warnings"]} == {"eviction", "no_persistence", "no_maxmemory"}
        scraped = app.test_client().get("/metrics").get_data(as_text=True)
        assert 'upsert_store_unsafe{reason="eviction"} 1.0' in scraped
        told = doctor(base)
        assert told.returncode == 1, told.stdout + told.stderr
        assert "warning: maxmemory-policy is allkeys-lru" in told.stdout and "append-only file off" in told.stdout
        web.shutdown()

        _app, web = served(fit)
        passed = doctor(f"http://127.0.0.1:{web.server_port}")
        assert passed.returncode == 0 and "the store is fit for accepted jobs" in passed.stdout, passed.stdout
        web.shutdown()
    finally:
        unsafe.stop()
        fit.stop()


def test_a_tenant_over_each_quota_gets_429_naming_it_and_the_others_go_on(make_stack, sim, tmp_path):
    """Quotas per tenant: jobs not yet ended, items pending, items in a rolling day. Over one: 429 with
    the quota, its use, its limit and Retry-After, nothing queued; another tenant is served at once; once
    the first tenant's job ends, it is served again."""
    from tests.helpers import JOBS, simulator_tenant, tenants_file

    quotas = {"north": {"max_concurrent_jobs": 1}, "east": {"max_pending_items": 10},
              "west": {"max_items_per_day": 10}, "south": {}}
    path = tenants_file(tmp_path / "tenants.toml", **{
        name: simulator_tenant(f"token-{name}", sim.url) | extra for name, extra in quotas.items()})
    stack = make_stack(tenants_file=str(path), upsert_api_token="")
    client = stack.api.client

    def submit(tenant: str, n: int):
        tag = f"{tenant}-{uuid.uuid4().hex[:6]}"
        return client.post(f"{JOBS}/bulk", json=customers(n, tag), headers={"Authorization": f"Bearer token-{tenant}"})

    def refused(response, quota: str, used: int, limit: int) -> None:
        assert response.status_code == 429, response.get_json()
        (error,) = response.get_json()["errors"]
        assert (error["code"], error["quota"], error["used"], error["limit"]) == ("quota_exceeded", quota, used, limit)
        assert int(response.headers["Retry-After"]) == error["retryAfterSeconds"] > 0

    first = submit("north", 3)  # no worker yet: it stays unfinished
    refused(submit("north", 3), "max_concurrent_jobs", 1, 1)
    assert submit("south", 3).status_code == 202  # another tenant, at once
    assert submit("east", 8).status_code == 202
    refused(submit("east", 5), "max_pending_items", 8, 10)
    day = submit("west", 6)
    refused(submit("west", 6), "max_items_per_day", 6, 10)
    jobs = stored_job_ids(redis.Redis.from_url(stack.redis.url), whole_jobs_only=True)
    assert len(jobs) == 4  # the refused submissions left nothing

    def wait(tenant: str, response) -> dict:
        path, auth = f"{JOBS}/jobs/{response.get_json()['jobId']}", {"Authorization": f"Bearer token-{tenant}"}
        return wait_for(lambda: (lambda j: j if j.get("finishedAt") else None)(client.get(path, headers=auth)
                                                                                .get_json()),
                        timeout=60, what=f"{tenant}'s job to finish")

    stack.worker()
    assert_exact(wait("north", first), 3)
    assert_exact(wait("west", day), 6)
    scraped = client.get("/metrics").get_data(as_text=True)
    assert 'upsert_tenant_quota_used{quota="max_items_per_day",tenant="west"} 6.0' in scraped
    assert 'upsert_tenant_quota_limit{quota="max_items_per_day",tenant="west"} 10.0' in scraped
    assert submit("north", 3).status_code == 202  # its job ended: served again
    refused(submit("west", 6), "max_items_per_day", 6, 10)  # the day's window has not moved on
    wait_for(lambda: submit("east", 2).status_code == 202, timeout=60, what="east's pending items to end")


def test_with_a_replica_a_202_means_the_replica_has_the_job_and_503_when_none_confirms(tmp_path, simulator):
    """With replicas, the intake answers 202 only once one of them has the job (WAIT, bounded); a
    replica that cannot confirm (frozen here) makes the submission a 503 store_unavailable with
    Retry-After, and nothing of it is left on the primary."""
    from api.app import create_app
    from tests.helpers import ApiClient, RedisServer, make_settings, start_replica

    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    primary = RedisServer(tmp_path / "primary", appendonly=True).start()
    replica = start_replica(tmp_path / "replica", primary)
    try:
        api = ApiClient(create_app(make_settings(primary.url, simulator.url, store_replica_wait_seconds=0.5)))
        accepted = api.submit(customers(30, "REPL-" + uuid.uuid4().hex[:6]))
        assert accepted.status_code == 202, accepted.get_json()
        job_id = accepted.get_json()["jobId"]
        on_replica = redis.Redis(port=replica.port, decode_responses=True)
        # Checked at once: WAIT returned only after the replica had it.
        assert on_replica.hget(keys.job(job_id), "totalCount") == "30"

        os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            refused = api.submit(customers(30, "REPL-" + uuid.uuid4().hex[:6]))
            assert refused.status_code == 503, refused.get_json()
            assert refused.headers["Retry-After"].isdigit()
            (error,) = refused.get_json()["errors"]
            assert error["code"] == "store_unavailable" and "replica" in error["message"], error
            on_primary = redis.Redis(port=primary.port, decode_responses=True)
            assert stored_job_ids(on_primary) == {job_id}, "the refused submission left keys behind"
            assert on_primary.zrange("cu:sched:jobs", 0, -1) == [job_id]
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        assert api.submit(customers(5, "REPL-" + uuid.uuid4().hex[:6])).status_code == 202
    finally:
        replica.stop()
        primary.stop()


def test_sentinel_failover_mid_job_loses_no_accepted_job(tmp_path, sim):
    """Broker and job store through Redis Sentinel: the primary SIGKILLed mid-job, Sentinel promotes the
    replica, the worker and the intake find it; every job answered 202 before the kill exists after it
    and completes exactly, with no customer created twice."""
    from api.app import create_app
    from tests.helpers import ApiClient, RedisSentinel, RedisServer, Worker, make_settings, start_replica

    for name in ("primary", "replica", "sentinel"):
        (tmp_path / name).mkdir()
    primary = RedisServer(tmp_path / "primary", appendonly=True).start()
    replica = start_replica(tmp_path / "replica", primary, appendonly=True)
    sentinel = RedisSentinel(tmp_path / "sentinel", primary)
    worker = None
    try:
        wait_for(lambda: sentinel.replicas() == 1, timeout=30, what="the sentinel to find the replica")
        settings = make_settings(sentinel.url, sim.url, redis_sentinel_master=sentinel.name)
        api = ApiClient(create_app(settings))
        sim.configure(latencyMs=15)
        tag = "SNT-" + uuid.uuid4().hex[:6]
        sizes = [300, 40, 40]
        ids = []
        for n, size in enumerate(sizes):
            response = api.submit(customers(size, f"{tag}-{n}", first_mobile=1000 * n))
            assert response.status_code == 202, response.get_json()
            ids.append(response.get_json()["jobId"])
        worker = Worker(settings, tmp_path / "worker.log")
        wait_for(lambda: api.get(f"/jobs/{ids[0]}").get_json()["processedCount"] >= 60, timeout=60,
                 what="the first job to be under way")
        before = api.get(f"/jobs/{ids[0]}").get_json()["processedCount"]
        os.kill(primary.process.pid, signal.SIGKILL)
        primary.process.wait(10)
        wait_for(lambda: sentinel.primary_port() == replica.port, timeout=60, what="Sentinel to promote the replica")

        # The intake finds the new primary by itself: a submission is accepted again.
        late = wait_for(lambda: (lambda r: r if r.status_code == 202 else None)(
            api.submit(customers(20, f"{tag}-late", first_mobile=9000))), timeout=60, what="a 202 after failover")
        ids.append(late.get_json()["jobId"])
        sizes.append(20)
        for job_id, size in zip(ids, sizes, strict=True):
            assert_exact(api.wait(job_id, timeout=180, interval=0.5), size)
        stored = sim.customers()
        assert len(stored) == sum(sizes)
        assert len({json.dumps(c["profiles"][0]["identifiers"], sort_keys=True) for c in stored}) == len(stored)
        print(f"sentinel failover: the primary killed at {before} of 300 items; {len(ids)} jobs, "
              f"{sum(sizes)} customers, 0 duplicates")
    finally:
        if worker is not None:
            worker.stop()
        sentinel.stop()
        replica.stop()
        primary.stop()
