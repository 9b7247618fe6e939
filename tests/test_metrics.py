"""/metrics: the whole fleet's counts, whichever process made them, read from Redis at scrape time."""

from __future__ import annotations

import uuid
from collections import defaultdict

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.helpers import RedisServer, assert_exact, customers, wait_for
from worker.jobs import cancel_job
from worker.metrics import Collector, Flusher, Metrics
from worker.store import keys
from worker.store.jobstore import JobStore

Samples = dict[tuple[str, frozenset], float]
LE = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf")

#: An element without a source: it fails validation (8004) without any downstream call.
NO_SOURCE = {"profiles": [{"identifiers": [{"type": "mobile", "value": "919900000001"}], "accountId": "acc1"}]}


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def by_label(samples: Samples, name: str, *label_names: str) -> dict[tuple[str, ...], float]:
    return {tuple(dict(labels)[n] for n in label_names): v for (sample, labels), v in samples.items() if sample == name}


def total(samples: Samples, name: str) -> float:
    return sum(v for (sample, _labels), v in samples.items() if sample == name)


def test_the_collector_serves_the_sum_of_every_process_flushes_and_the_gauges(tmp_path):
    server = RedisServer(tmp_path).start()
    try:
        store = JobStore.from_url(server.url)
        registry = CollectorRegistry()
        registry.register(Collector(store, lease_seconds=20))
        one, two = Metrics(), Metrics()  # two worker processes
        for _ in range(3):
            one.item("default", "CREATED", False)
        two.item("default", "UPDATED", True)
        two.item("north", "FAILED", True)
        one.downstream_call("lookup", "200", 0.004)
        one.downstream_call("lookup", "400", 0.03)
        two.downstream_call("lookup", "200", 0.03)
        two.downstream_call("add", "timeout", 12.0)
        one.retry("transient")
        one.rate_limit_wait("add", 1.5)
        two.rate_limit_wait("add", 0.5)
        two.throttled("update")
        Flusher(one, store.redis).stop()  # a worker's shutdown flushes what it has
        two.flush(store.redis)
        one.item("default", "CREATED", False)
        one.flush(store.redis)  # a later flush adds to the earlier ones

        seconds, _micros = store.redis.time()
        store.redis.zadd(keys.FLEET, {"host:1": seconds, "host:2": seconds - 60})  # host:2 stopped a minute ago
        store.redis.hset(keys.FLEET_SLOTS, mapping={"host:1": 16, "host:2": 32})
        queued = store.new_job("default")
        for i in range(3):
            queued.add({"i": i})
        queued.commit(skip_change_identifier=False, next_index={})
        cancelled = store.new_job("north")
        for i in range(5):
            cancelled.add({"i": i})
        cancel_job(store, cancelled.commit(skip_change_identifier=False, next_index={}))

        m = parse(generate_latest(registry).decode())

        assert by_label(m, "upsert_items_total", "tenant", "outcome") == {
            ("default", "CREATED"): 4, ("default", "UPDATED_WITH_ERRORS"): 1, ("north", "FAILED"): 1,
            ("north", "CANCELLED"): 5}  # counted by the cancel itself, none of them ran
        assert by_label(m, "upsert_downstream_calls_total", "endpoint", "status") == {
            ("lookup", "200"): 2, ("lookup", "400"): 1, ("add", "timeout"): 1}
        buckets = by_label(m, "upsert_downstream_call_duration_seconds_bucket", "endpoint", "le")
        assert [buckets["lookup", le] for le in LE] == [1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3, 3]  # cumulative
        assert [buckets["add", le] for le in LE] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]  # past the last bound
        assert value(m, "upsert_downstream_call_duration_seconds_count", endpoint="lookup") == 3
        assert abs(value(m, "upsert_downstream_call_duration_seconds_sum", endpoint="lookup") - 0.064) < 1e-9
        assert value(m, "upsert_item_retries_total", reason="transient") == 1
        assert value(m, "upsert_rate_limit_waits_total", endpoint="add") == 2
        assert value(m, "upsert_rate_limit_wait_seconds_total", endpoint="add") == 2.0
        assert value(m, "upsert_downstream_throttled_total", endpoint="update") == 1
        assert by_label(m, "upsert_jobs_finished_total", "state") == {("CANCELLED",): 1}
        assert by_label(m, "upsert_jobs", "state") == {("QUEUED",): 1, ("RUNNING",): 0, ("CANCELLED",): 0}
        assert value(m, "upsert_items_pending") == 3
        assert value(m, "upsert_items_in_flight") == 0
        assert (value(m, "upsert_workers"), value(m, "upsert_worker_slots")) == (1, 16)
    finally:
        server.stop()


def test_a_failed_flush_keeps_its_counts_for_the_next(tmp_path):
    server = RedisServer(tmp_path).start()
    metrics = Metrics()
    metrics.item("default", "CREATED", False)
    metrics.downstream_call("add", "200", 0.02)
    try:
        down = redis.Redis(port=server.port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
        server.stop()
        Flusher(metrics, down).flush()  # logs, keeps the counts
        server.start()
        Flusher(metrics, down).flush()

        assert down.hgetall(keys.METRICS) == {
            b'["upsert_items_total","default","CREATED"]': b"1",
            b'["upsert_downstream_calls_total","add","200"]': b"1",
            b'["upsert_downstream_call_duration_seconds_bucket","add","0.025"]': b"1",
            b'["upsert_downstream_call_duration_seconds_sum","add"]': b"0.02"}
    finally:
        server.stop()


def test_after_a_200_item_job_metrics_count_every_item_and_exactly_the_calls_the_simulator_saw(make_stack, sim):
    stack = make_stack()
    stack.worker()
    job = stack.api.run([*customers(199, "MET-" + uuid.uuid4().hex[:6]), NO_SOURCE], timeout=120)
    assert_exact(job, 200, failures=1)

    def scrape() -> Samples:
        response = stack.api.client.get("/metrics")
        assert response.status_code == 200
        return parse(response.get_data(as_text=True))

    # A worker flushes every two seconds; it counts an item after that item's calls, so once all 200
    # items are in, so are all their calls.
    def all_items_in() -> Samples | None:
        samples = scrape()
        return samples if total(samples, "upsert_items_total") == 200 else None

    m = wait_for(all_items_in, timeout=15, what="the worker's counts of 200 items to reach /metrics")

    assert by_label(m, "upsert_items_total", "tenant", "outcome") == {
        ("default", "CREATED"): 199, ("default", "FAILED"): 1}
    seen: dict[str, dict[str, float]] = defaultdict(dict)
    for (endpoint, status), n in by_label(m, "upsert_downstream_calls_total", "endpoint", "status").items():
        seen[endpoint][status] = n
    logged = {endpoint: {status: float(n) for status, n in statuses.items()}
              for endpoint, statuses in sim.calls()["byEndpoint"].items() if statuses}
    # The simulator answers a lookup of a customer it does not have 400 (8015): every one of these, as
    # all 199 are new. The metric counts them as not_found, an answer, not an error.
    logged["lookup"]["not_found"] = logged["lookup"].pop("400")
    assert seen == logged
    assert seen["lookup"]["not_found"] >= 199 and "400" not in seen["lookup"]
    assert by_label(m, "upsert_downstream_call_duration_seconds_count", "endpoint") == {
        (endpoint,): sum(statuses.values()) for endpoint, statuses in logged.items()}
    assert by_label(m, "upsert_jobs_finished_total", "state") == {("COMPLETED",): 1}
    assert by_label(m, "upsert_jobs", "state") == {("QUEUED",): 0, ("RUNNING",): 0, ("CANCELLED",): 0}
    assert (value(m, "upsert_items_pending"), value(m, "upsert_items_in_flight")) == (0, 0)
    assert (value(m, "upsert_workers"), value(m, "upsert_worker_slots")) == (1, stack.settings.worker_concurrency)
    assert value(m, "process_resident_memory_bytes") > 0  # the web process's own, beside the fleet's
