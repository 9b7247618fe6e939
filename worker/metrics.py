"""The fleet's Prometheus metrics: counted where things happen, summed in Redis, served by the web process.

Why Redis: Prometheus should scrape one target, the API's ``/metrics``, for what every worker process
on every host did. prometheus_client's multiprocess directory sums the processes of one host only,
and an exporter port per worker process needs service discovery and one more open port per
process. So each worker process counts in memory (:class:`Metrics`: a lock and two dicts, so an
item's hot path gains no Redis command), and :class:`Flusher` adds those counts into one hash,
``cu:metrics``, every :data:`FLUSH_SECONDS` in one MULTI/EXEC (HINCRBY, HINCRBYFLOAT), and once more
as the worker shuts down. A worker killed outright loses at most its last flush interval's counts.
Counts made by one Redis script go into the same hash from that script: items a cancel ends at once,
and jobs finished (worker/store/jobstore.py). A field of the hash is the JSON array of the metric's name
and label values (:func:`field`), so any tenant id fits in it.

:class:`Collector` is registered with the web process's own registry. At each scrape it reads the
hash and turns it into counters and a histogram, and computes gauges from the scheduler's keys
(unfinished jobs by state, items without an outcome yet, items in flight, live workers and their
slots) in two round trips, whatever the size of the jobs.
"""

from __future__ import annotations

import json
import logging
import threading
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from worker.downstream.ratelimit import Learning, learned_rates
from worker.store import keys
from worker.store.health import store_findings
from worker.store.metric_fields import ITEMS, JOBS_FINISHED, field

if TYPE_CHECKING:
    from worker.settings import Tenant
    from worker.store.jobstore import JobStore

log = logging.getLogger(__name__)

#: How often a worker process adds its counts into Redis: a scrape is at most this much behind.
FLUSH_SECONDS = 2.0

CALLS = "upsert_downstream_calls_total"
CALL_SECONDS = "upsert_downstream_call_duration_seconds"
RETRIES = "upsert_item_retries_total"
WAITS = "upsert_rate_limit_waits_total"
WAIT_SECONDS = "upsert_rate_limit_wait_seconds_total"
THROTTLED = "upsert_downstream_throttled_total"

#: Counters kept in the hash: name -> (help, label names).
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    ITEMS: ("Items that ended, by tenant and outcome (CREATED, UPDATED, CREATED_WITH_ERRORS, "
            "UPDATED_WITH_ERRORS, FAILED, CANCELLED)", ("tenant", "outcome")),
    CALLS: ("Requests to the downstream API, by endpoint and HTTP status (or timeout, connection_error)",
            ("endpoint", "status")),
    RETRIES: ("Items handed back to the scheduler to run again, by reason (transient, throttled, "
              "rate_limited, identifiers_locked)", ("reason",)),
    WAITS: ("Downstream calls that waited for the rate limiter (in place, or requeued)", ("endpoint",)),
    WAIT_SECONDS: ("Seconds downstream calls waited for the rate limiter", ("endpoint",)),
    THROTTLED: ("Downstream 429 answers, each of which pauses its endpoint on every worker and cuts its learned "
                "rate", ("endpoint",)),
    JOBS_FINISHED: ("Jobs that ended, by final state (COMPLETED, CANCELLED)", ("state",)),
}

#: Upper bounds of the call duration histogram's buckets: from a fast gateway's answer to the
#: default timeout (CAPILLARY_TIMEOUT_SECONDS, 10 s).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))
_LE = tuple(floatToGoString(b) for b in BUCKETS)
_BUCKET = CALL_SECONDS + "_bucket"
_SUM = CALL_SECONDS + "_sum"

#: Why an item went back to the scheduler: the ``reason`` label of RETRIES (see worker/items/run.py).
RETRY_TRANSIENT = "transient"
RETRY_THROTTLED = "throttled"
RETRY_RATE_LIMITED = "rate_limited"
RETRY_IDENTIFIERS_LOCKED = "identifiers_locked"


def item_outcome(action: str, failed: bool) -> str:
    """The ``outcome`` label: the item's action, ``_WITH_ERRORS`` when a write was applied with errors."""
    return f"{action}_WITH_ERRORS" if failed and action in ("CREATED", "UPDATED") else action


class Metrics:
    """One worker process's counts since its last flush. Thread-safe; every method is a few
    dictionary updates under a lock, cheap enough for every downstream call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, ...]] = Counter()
        self._seconds: defaultdict[tuple[str, ...], float] = defaultdict(float)

    def item(self, tenant: str, action: str, failed: bool) -> None:
        """An item's outcome, once it is recorded (not a delivery that lost its lease or came twice)."""
        with self._lock:
            self._counts[(ITEMS, tenant, item_outcome(action, failed))] += 1

    def downstream_call(self, endpoint: str, status: str, seconds: float) -> None:
        """One HTTP request to the downstream (worker.downstream.client.CallObserver)."""
        le = _LE[bisect_left(BUCKETS, seconds)]
        with self._lock:
            self._counts[(CALLS, endpoint, status)] += 1
            self._counts[(_BUCKET, endpoint, le)] += 1
            self._seconds[(_SUM, endpoint)] += seconds

    def retry(self, reason: str) -> None:
        with self._lock:
            self._counts[(RETRIES, reason)] += 1

    def rate_limit_wait(self, endpoint: str, seconds: float) -> None:
        with self._lock:
            self._counts[(WAITS, endpoint)] += 1
            self._seconds[(WAIT_SECONDS, endpoint)] += seconds

    def throttled(self, endpoint: str) -> None:
        with self._lock:
            self._counts[(THROTTLED, endpoint)] += 1

    def flush(self, client: redis.Redis) -> None:
        """Add the counts into ``cu:metrics`` in one MULTI/EXEC, so a scrape never sees half a flush
        (a histogram's buckets without its sum). On a Redis error the counts are kept for the next
        flush and the error raised: a count is late rather than lost (only a flush applied whose
        answer was then lost is counted twice)."""
        with self._lock:
            counts, seconds = self._counts, self._seconds
            self._counts, self._seconds = Counter(), defaultdict(float)
        if not counts and not seconds:
            return
        pipe = client.pipeline(transaction=True)
        for series, n in counts.items():
            pipe.hincrby(keys.METRICS, field(*series), n)
        for series, s in seconds.items():
            pipe.hincrbyfloat(keys.METRICS, field(*series), s)
        try:
            pipe.execute()
        except redis.RedisError:
            with self._lock:
                self._counts.update(counts)
                for series, s in seconds.items():
                    self._seconds[series] += s
            raise


class Flusher:
    """The worker process's thread that flushes :class:`Metrics` every FLUSH_SECONDS, and at stop."""

    def __init__(self, metrics: Metrics, client: redis.Redis, interval: float = FLUSH_SECONDS) -> None:
        self.metrics = metrics
        self.redis = client
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.flush()

    def flush(self) -> None:
        try:
            self.metrics.flush(self.redis)
        except redis.RedisError as exc:
            log.warning("cannot flush metrics (%s); keeping them for the next flush", type(exc).__name__)

    def stop(self) -> None:
        """Called after Celery has let the running items end: their counts go out with this flush."""
        self.stopping.set()
        self.flush()


class Collector:
    """A prometheus_client collector for the web process: the fleet's counters and gauges from Redis.

    It has no ``describe``: registering it reads nothing from Redis.
    """

    def __init__(self, store: JobStore, *, lease_seconds: float, tenants: dict[str, Tenant] | None = None,
                 learning: Learning | None = None) -> None:
        self.store = store
        self.tenants = tenants or {}
        self.learning = learning or Learning()
        #: A worker whose heartbeat is older than a lease counts as gone, as the dispatcher counts it.
        self.lease = lease_seconds

    def collect(self) -> Iterator[Metric]:
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.hgetall(keys.METRICS)
        pipe.zrange(keys.SCHED_JOBS, 0, -1)
        pipe.zcard(keys.INFLIGHT)
        pipe.zrange(keys.FLEET, 0, -1, withscores=True)
        pipe.hgetall(keys.FLEET_SLOTS)
        pipe.time()
        raw, job_ids, in_flight, fleet, slots, (now_s, now_us) = pipe.execute()
        yield from _families(raw)

        jobs = GaugeMetricFamily("upsert_jobs", "Unfinished jobs by state (CANCELLED: cancelled, with items "
                                 "still running)", labels=["state"])
        by_state: Counter[str] = Counter({"QUEUED": 0, "RUNNING": 0, "CANCELLED": 0})
        pending = 0
        for state, left in self.store.progress(job_ids):
            by_state[state] += 1
            pending += left
        for state, n in sorted(by_state.items()):
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily("upsert_items_pending", "Items of unfinished jobs without an outcome yet (waiting, "
                                "queued, running or waiting for a retry)", value=pending)
        yield GaugeMetricFamily("upsert_items_in_flight", "Items dispatched to the workers and not yet ended",
                                value=in_flight)
        alive_since = now_s + now_us / 1e6 - self.lease
        alive = [worker for worker, beat in fleet if beat >= alive_since]
        yield GaugeMetricFamily("upsert_workers", "Worker processes that renewed their heartbeat within a lease",
                                value=len(alive))
        yield GaugeMetricFamily("upsert_worker_slots", "Items the live worker processes run at once, together",
                                value=sum(int(slots.get(worker) or 0) for worker in alive))
        unsafe = GaugeMetricFamily("upsert_store_unsafe", "1 for each way the job store is unfit for accepted jobs "
                                   "(eviction, no_persistence, no_maxmemory, old_version, policy_unknown)",
                                   labels=["reason"])
        for finding in store_findings(self.store.redis):
            unsafe.add_metric([finding.reason], 1)
        yield unsafe
        yield from self._quotas()
        yield self._rates()

    def _rates(self) -> Metric:
        """Each tenant's downstream rate per endpoint, as the fleet learned it (worker/downstream/ratelimit.py)."""
        gauge = GaugeMetricFamily("upsert_downstream_rate_per_minute", "Calls a minute each downstream endpoint "
                                  "is let through at now, learned from its 429s under any configured ceiling; "
                                  "an endpoint not limited has none", labels=["tenant", "endpoint"])
        for tenant in sorted(self.tenants.values(), key=lambda t: t.id):
            for endpoint, rate in learned_rates(self.store.redis, tenant.id, tenant.rate_limits,
                                                self.learning).items():
                if rate.per_minute is not None:
                    gauge.add_metric([tenant.id, endpoint], rate.per_minute)
        return gauge

    def _quotas(self) -> Iterator[Metric]:
        """Each tenant's quotas (api/quotas.py) and what it uses of them."""
        used = GaugeMetricFamily("upsert_tenant_quota_used", "What a tenant uses of each quota: jobs not yet ended, "
                                 "their items without an outcome, items accepted in the last 24 h",
                                 labels=["tenant", "quota"])
        limit = GaugeMetricFamily("upsert_tenant_quota_limit", "Each tenant's quotas (0: none)",
                                  labels=["tenant", "quota"])
        for tenant in sorted(self.tenants.values(), key=lambda t: t.id):
            usage = self.store.tenant_usage(tenant.id)
            for quota, value in (("max_concurrent_jobs", usage.jobs), ("max_pending_items", usage.pending_items),
                                 ("max_items_per_day", usage.items_today)):
                used.add_metric([tenant.id, quota], value)
                limit.add_metric([tenant.id, quota], getattr(tenant, quota))
        yield used
        yield limit


def _families(raw: dict[str, str]) -> Iterator[Metric]:
    """The counters and the call duration histogram from the hash's fields."""
    counters = {name: CounterMetricFamily(name, doc, labels=labels) for name, (doc, labels) in COUNTERS.items()}
    buckets: defaultdict[str, Counter[str]] = defaultdict(Counter)
    sums: defaultdict[str, float] = defaultdict(float)
    for key, value in sorted(raw.items()):
        try:
            name, *labels = json.loads(key)
        except (ValueError, TypeError):
            continue  # not ours: skip rather than fail the scrape
        if name in counters and len(labels) == len(COUNTERS[name][1]):
            counters[name].add_metric(labels, float(value))
        elif name == _BUCKET and len(labels) == 2:
            buckets[labels[0]][labels[1]] += int(value)
        elif name == _SUM and len(labels) == 1:
            sums[labels[0]] += float(value)
    yield from counters.values()
    histogram = HistogramMetricFamily(CALL_SECONDS, "Duration of requests to the downstream API, by endpoint",
                                      labels=["endpoint"])
    for endpoint in sorted(buckets):
        cumulative, running = [], 0
        for le in _LE:
            running += buckets[endpoint][le]
            cumulative.append((le, running))
        histogram.add_metric([endpoint], cumulative, sum_value=sums[endpoint])
    yield histogram
