"""Real operating conditions: a small rate allowance, cancelled chains, a frozen or killed leader, keys
that must not outlive their jobs.

Nothing here fails an item for waiting, and every job ends. Each test runs its own stack (private
Redis, API, real workers from the Procfile's line) and asserts ordered events and exact counts; the
durations it prints are for people (bench/ measures them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest
import redis

from tests.helpers import JOBS, ApiClient, assert_exact, busiest_second, calls_since, customers, progress, wait_for
from worker.dispatch.leadership import LEADER_SECONDS

pytestmark = pytest.mark.slow


def tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_a_small_allowance_slows_a_job_down_and_fails_nothing(make_stack, sim):
    """Defect: with CAPILLARY_MAX_RPS=2, 28 of 60 new customers failed with 9004: messages waited behind
    the limiter longer than a lease, and their lapses were counted as if workers had died. Here the
    lease is 2 s and the allowance 8 calls a second, so most messages wait many leases."""
    stack = make_stack(capillary_max_rps=8.0, item_lease_seconds=2)
    stack.worker()
    start = time.time()

    job = stack.api.run(customers(40, tag("SLOW")), timeout=120)

    assert_exact(job, 40)
    assert job["createdCount"] == 40 and len(sim.customers()) == 40
    calls = [c for c in calls_since(sim, start) if c["endpoint"] != "token"]
    assert not [c for c in calls if c["status"] == 429 or c["status"] >= 500]
    took = max(c["t"] for c in calls) - min(c["t"] for c in calls)
    allowed = len(calls) / 8.0
    print(f"max_rps 8: {len(calls)} calls in {took:.1f}s, the allowance allows {allowed:.1f}s")
    assert 0.75 * allowed <= took <= 1.25 * allowed


def test_a_cancelled_job_with_chained_items_ends(make_stack, sim):
    """Defect: cancelled with chains running (items sharing a mobile run one after another), the job
    stayed CANCELLED without finishedAt for good."""
    stack = make_stack()
    stack.worker()
    sim.configure(latencyMs=40)  # slow enough that many chain items are running when the cancel comes
    elements = [{"profiles": [{"firstName": f"N{i}", "source": "INSTORE", "identifiers": [
        {"type": "mobile", "value": f"9177{uuid.uuid4().int % 10**4:04d}{i // 3:05d}"}]}]} for i in range(600)]
    job_id = stack.api.submit(elements).get_json()["jobId"]
    wait_for(lambda: progress(stack.api, job_id)["processedCount"] >= 60, timeout=60, what="60 items done")

    assert stack.api.delete(f"/jobs/{job_id}").status_code == 200
    cancelled_at = time.monotonic()
    job = stack.api.wait(job_id, timeout=30)

    print(f"cancelled chains: finishedAt {time.monotonic() - cancelled_at:.1f}s after the cancel")
    assert job["state"] == "CANCELLED" and job["processedCount"] == job["totalCount"] == 600
    assert job["cancelledCount"] > 0


def leader_pid(r: redis.Redis) -> int:
    """The leader's token starts with its worker id, ``host:pid``."""
    token = wait_for(lambda: r.get("cu:sched:leader"), timeout=30, what="a leader")
    return int(token.split(":")[1])


def test_the_leader_killed_mid_job_hands_over_and_no_key_outlives_its_job(make_stack, sim, tmp_path):
    """One leader by construction (redis-py's Lock): SIGKILLed mid-job, another worker leads within
    the lock's timeout, and the job completes once per item. Then every kind of job (completed,
    cancelled, refused, an idempotent retry) is left to expire: no key of theirs remains."""
    stack = make_stack(job_ttl_seconds=3)
    r = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    sim.configure(latencyMs=5)
    workers = [stack.worker(), stack.worker()]
    job_id = stack.api.submit(customers(800, tag("LEAD"))).get_json()["jobId"]
    wait_for(lambda: progress(stack.api, job_id)["processedCount"] >= 100, timeout=60, what="100 items done")

    pid = leader_pid(r)
    (leader,) = [w for w in workers if w.process.pid == pid]
    (survivor,) = [w for w in workers if w is not leader]
    leader.kill()
    killed_at = time.monotonic()
    def survivor_leads() -> bool:
        token = r.get("cu:sched:leader")  # read once: the dead leader's lock expires at any moment
        return token is not None and int(token.split(":")[1]) == survivor.process.pid

    wait_for(survivor_leads, timeout=LEADER_SECONDS + 10, what="the survivor to lead")
    handed_over = time.monotonic() - killed_at

    job = stack.api.wait(job_id, timeout=120)
    print(f"leader killed: the other worker led {handed_over:.1f}s later (lock {LEADER_SECONDS:g}s)")
    assert handed_over <= LEADER_SECONDS + 2
    assert_exact(job, 800)
    assert len(sim.customers()) == 800

    # Every kind of job, then nothing of them once they expire.
    api: ApiClient = stack.api
    ids = [job_id, api.run(customers(5, tag("DONE")))["jobId"]]
    cancelled = api.submit(customers(300, tag("CNCL"))).get_json()["jobId"]
    api.delete(f"/jobs/{cancelled}")
    ids.append(api.wait(cancelled)["jobId"])
    key = {"Idempotency-Key": "retry-" + uuid.uuid4().hex}
    batch = customers(3, tag("IDEM"))
    first = api.client.post(f"{JOBS}/bulk", json=batch, headers=api.headers | key)
    again = api.client.post(f"{JOBS}/bulk", json=batch, headers=api.headers | key)
    assert first.status_code == 202 and again.get_json()["jobId"] == first.get_json()["jobId"]
    ids.append(api.wait(first.get_json()["jobId"])["jobId"])
    refused = api.client.post(f"{JOBS}/bulk", data=b'{"profiles": []}\n{oops\n',
                              content_type="application/x-ndjson", headers=api.headers)
    assert refused.status_code == 400

    def leftover(name: str) -> bool:
        """Of one of these jobs, or of no one: kept for ever and not one of the service's own keys. The
        tenant's record of what it was accepted in the last day (its quota) is its own, and expires."""
        if name.endswith(":accepted") and name.startswith("cu:tenant:"):
            return not 0 < r.ttl(name) <= 86_400
        if any(j in name for j in ids) or name.startswith(("cu:idem:", "cu:tenant:", "cu:lock:")):
            return True
        return r.ttl(name) == -1 and name not in SERVICE_KEYS and not name.startswith("_kombu.")  # the broker's own

    def leftovers() -> list[str]:
        return [name for name in r.scan_iter(count=1000) if leftover(name)]

    try:
        wait_for(lambda: not leftovers(), timeout=30, what="every key of the jobs to expire", interval=0.5)
    except AssertionError:
        raise AssertionError(f"left behind: {[(n, r.type(n), r.ttl(n)) for n in leftovers()]}") from None


#: The service's own keys, that live as long as it does (worker/store/keys.py); each is small.
SERVICE_KEYS = {"cu:metrics", "cu:fleet", "cu:fleet:slots", "cu:sched:jobs", "cu:sched:due", "cu:inflight",
                "cu:callbacks"}


def test_a_frozen_worker_calls_nothing_for_the_items_handed_to_another(make_stack, sim):
    """A worker frozen (SIGSTOP) past its leases and woken once another worker has finished the job:
    the simulator hears no call from it at all, as each of its threads checks its lease after every wait
    and before every call, and its queued messages find their leases gone when they start."""
    stack = make_stack(item_lease_seconds=3, capillary_max_rps=30.0)
    sim.configure(latencyMs=20)
    frozen, other = stack.worker(), stack.worker()
    job_id = stack.api.submit(customers(100, tag("FROZ"))).get_json()["jobId"]
    wait_for(lambda: progress(stack.api, job_id)["processedCount"] >= 20, timeout=60, what="20 items done")

    os.killpg(frozen.process.pid, signal.SIGSTOP)
    try:
        job = stack.api.wait(job_id, timeout=120)
    finally:
        woke = time.time()
        os.killpg(frozen.process.pid, signal.SIGCONT)
    from worker.celery_app import create_celery

    inspect = create_celery(stack.settings).control.inspect([frozen.node_name()], timeout=5)
    wait_for(lambda: inspect.active() and not any(inspect.active().values()), timeout=60,
             what="the woken worker to end every task it had")

    assert_exact(job, 100)
    assert calls_since(sim, woke) == []
    assert len(sim.customers()) == 100
    assert other.process.poll() is None and frozen.process.poll() is None


def test_max_rps_holds_for_a_fleet_of_four_and_a_429_pauses_all_of_it(make_stack, sim):
    """CAPILLARY_MAX_RPS=20 across 4 workers of 16 threads: no second at the simulator sees more than 20
    calls. A 429 with Retry-After 5 mid-job: no call lands for those 5 seconds, from any worker."""
    stack = make_stack(capillary_max_rps=20.0, worker_concurrency=16)
    for _ in range(4):
        stack.worker()
    start = time.time()
    job_id = stack.api.submit(customers(70, tag("FLEET"))).get_json()["jobId"]
    wait_for(lambda: progress(stack.api, job_id)["processedCount"] >= 15, timeout=60, what="15 items done")
    sim.configure(throttleNext=1, throttleRetryAfter=5)

    job = stack.api.wait(job_id, timeout=120)

    assert_exact(job, 70)
    assert len(sim.customers()) == 70
    calls = [c for c in calls_since(sim, start) if c["endpoint"] != "token"]
    (throttled,) = [c["t"] for c in calls if c["status"] == 429]
    times = sorted(c["t"] for c in calls)
    during = [t - throttled for t in times if throttled + 0.3 < t < throttled + 5]
    print(f"fleet of 4: {len(times)} calls, busiest second {busiest_second(times)}, "
          f"{len([t for t in times if throttled < t <= throttled + 0.3])} in flight at the 429, {during} during it")
    assert busiest_second(times) <= 20
    assert during == []
    assert [t for t in times if t > throttled + 5], "the calls came back after the pause"


#: How long the broker is down: long enough for every lease in flight to lapse several times over.
OUTAGE_SECONDS = 20.0


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_a_broker_outage_mid_job_delays_items_and_fails_none(make_stack, sim, request, tmp_path, broker):
    """The broker stopped for 20 s, five leases, mid-job (a Redis broker apart from the job store, without
    persistence, so the messages it held are lost too; or RabbitMQ): the dispatcher's publishes fail,
    its leases go back at once and are handed out again for free, the workers reconnect (or their
    supervisor restarts them, as here), and the job completes with no failure and no duplicate."""
    from tests.helpers import RedisServer

    if broker == "redis":
        (tmp_path / "broker").mkdir()
        broker_redis = RedisServer(tmp_path / "broker").start()
        url = broker_redis.url

        def stop() -> None:
            broker_redis.stop()

        def start() -> None:
            broker_redis.start()
    else:
        url = request.getfixturevalue("rabbitmq_vhost")

        def stop() -> None:
            subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)

        def start() -> None:
            subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)
            subprocess.run(["rabbitmqctl", "await_startup"], check=True, capture_output=True)
    stack = make_stack(broker_url=url, item_lease_seconds=4)
    sim.configure(latencyMs=10)
    # Four threads: the fleet's window (its threads and a few queued messages, up to sixteen items each)
    # then holds about a third of the job, so the outage finds most of it still to hand out.
    stack.worker(worker_concurrency=4)
    job_id = stack.api.submit(customers(400, tag("BRK"))).get_json()["jobId"]
    wait_for(lambda: progress(stack.api, job_id)["processedCount"] >= 50, timeout=60, what="50 items done")

    stop()
    try:
        down_since = time.monotonic()
        wait_for(lambda: time.monotonic() - down_since >= OUTAGE_SECONDS, timeout=OUTAGE_SECONDS + 10,
                 what="the outage to last", interval=0.5)
        during = progress(stack.api, job_id)
        assert during["failureCount"] == 0 and during["processedCount"] < 400
    finally:
        start()
    back_at = time.monotonic()

    def finished_under_a_supervisor():
        if stack.workers[-1].process.poll() is not None:  # a supervisor restarts a worker that gave up
            stack.worker()
        job = progress(stack.api, job_id)
        return job if job.get("finishedAt") else None

    job = wait_for(finished_under_a_supervisor, timeout=180, what="the job to finish after the outage", interval=0.5)
    print(f"{broker} down {back_at - down_since:.1f}s; job done {time.monotonic() - back_at:.1f}s after its return")
    assert_exact(job, 400)
    assert len(sim.customers()) == 400
    if broker == "redis":
        broker_redis.stop()


def test_a_worker_stopped_with_sigterm_mid_job_finishes_what_it_took_and_nothing_waits_for_a_lease(make_stack, sim):
    """A rolling deploy: SIGTERM to one of two workers mid-job (Celery's warm shutdown). It stops taking
    messages, runs to their end the items it had taken (running or waiting for a thread) and exits;
    no lease is left to lapse, so the job goes on at once on the other worker; nothing fails, nothing
    is created twice."""
    stack = make_stack(item_lease_seconds=30)
    sim.configure(latencyMs=20)
    stopping, survivor = stack.worker(), stack.worker()
    job_id = stack.api.submit(customers(600, "TERM-" + uuid.uuid4().hex[:6])).get_json()["jobId"]

    wait_for(lambda: progress(stack.api, job_id)["processedCount"] >= 100, timeout=120, what="100 items done")
    stopping.stop()  # SIGTERM to its process group; it exits once its running tasks end
    stopped_at = time.monotonic()
    assert stopping.process.returncode is not None, "the worker did not exit on SIGTERM"
    assert progress(stack.api, job_id)["processedCount"] < 600, "the stop came too late to prove anything"

    job = stack.api.wait(job_id, timeout=120)
    took = time.monotonic() - stopped_at
    print(f"SIGTERM: job done {took:.1f}s after the worker stopped (lease 30 s)")
    assert_exact(job, 600)
    assert job["createdCount"] == 600 and len(sim.customers()) == 600
    # Handed back, not lapsed: well under the 30 s lease.
    assert took < stack.settings.item_lease_seconds * 0.66, took
    assert survivor.process.poll() is None
