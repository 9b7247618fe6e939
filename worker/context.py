"""What a worker process shares between its item threads: the job store, the lease keeper, the
cancel watch, the identifier locks, the metrics and one downstream client per tenant."""

from __future__ import annotations

import threading

import requests

from worker.dispatch.leases import LeaseKeeper, worker_id
from worker.downstream.client import CapillaryClient
from worker.downstream.ratelimit import RateLimiter, learning_of
from worker.items.locks import IdentifierLocks
from worker.metrics import Flusher, Metrics
from worker.settings import Settings, Tenant
from worker.store.cancels import CancelWatch
from worker.store.jobstore import JobStore


class WorkerContext:
    """Built lazily on first use, so importing the worker opens no connection."""

    def __init__(self, settings: Settings, store: JobStore | None = None) -> None:
        self.settings = settings
        self.tenants: dict[str, Tenant] = settings.tenants()
        self.store = store or JobStore.from_url(
            settings.redis_url, ttl_seconds=settings.job_ttl_seconds,
            max_connections=settings.worker_concurrency + 16, sentinel_master=settings.redis_sentinel_master,
        )
        self.worker = worker_id()
        self.keeper = LeaseKeeper(self.store.redis, worker=self.worker, slots=settings.worker_concurrency,
                                  lease_seconds=settings.item_lease_seconds)
        self.cancels = CancelWatch(self.store.redis)
        self.locks = IdentifierLocks(self.store.redis, ttl_ms=int(settings.item_lease_seconds * 2000))
        self.metrics = Metrics()
        self.metrics_flusher = Flusher(self.metrics, self.store.redis)
        #: For callbacks: a session of its own, apart from the downstream's pools.
        self.http = requests.Session()
        self._clients: dict[str, tuple[CapillaryClient, RateLimiter]] = {}
        self._lock = threading.Lock()

    def client_for(self, tenant_id: str) -> tuple[CapillaryClient, RateLimiter]:
        """The tenant's client and rate limiter; KeyError for a tenant this worker does not know."""
        with self._lock:
            found = self._clients.get(tenant_id)
            if found is None:
                tenant = self.tenants[tenant_id]
                limiter = RateLimiter(self.store.redis, tenant.id, max_rps=tenant.max_rps,
                                      per_minute=tenant.rate_limits, metrics=self.metrics,
                                      learning=learning_of(self.settings))
                client = CapillaryClient(
                    tenant,
                    timeout=self.settings.capillary_timeout_seconds,
                    on_throttle=limiter.pause,
                    observer=self.metrics.downstream_call,
                )
                found = self._clients[tenant_id] = (client, limiter)
            return found


_contexts: dict[int, WorkerContext] = {}
_contexts_lock = threading.Lock()


def context_of(app) -> WorkerContext:
    """The context of a Celery app built by :func:`worker.celery_app.create_celery`."""
    with _contexts_lock:
        ctx = _contexts.get(id(app))
        if ctx is None:
            ctx = _contexts[id(app)] = WorkerContext(app.upsert_settings)
        return ctx
