"""What a worker process shares between its item threads: the job store and one client per tenant."""

from __future__ import annotations

import threading

import requests

from worker.client import CapillaryClient
from worker.jobstore import JobStore
from worker.locks import IdentifierLocks
from worker.ratelimit import RateLimiter
from worker.settings import Settings, Tenant


class WorkerContext:
    """Built lazily on first use, so importing the worker opens no connection."""

    def __init__(self, settings: Settings, store: JobStore | None = None) -> None:
        self.settings = settings
        self.tenants: dict[str, Tenant] = settings.tenants()
        self.store = store or JobStore.from_url(
            settings.redis_url, ttl_seconds=settings.job_ttl_seconds,
            max_connections=settings.worker_concurrency + 16,
        )
        self.locks = IdentifierLocks(self.store.redis)
        #: For callbacks: a session of its own, apart from the downstream's pools.
        self.http = requests.Session()
        self._clients: dict[str, CapillaryClient] = {}
        self._lock = threading.Lock()

    def client_for(self, tenant_id: str) -> CapillaryClient:
        with self._lock:
            client = self._clients.get(tenant_id)
            if client is None:
                tenant = self.tenants.get(tenant_id)
                if tenant is None:
                    raise KeyError(f"unknown tenant {tenant_id!r}")
                limiter = RateLimiter(self.store.redis, tenant.id, max_rps=tenant.max_rps,
                                      per_minute=tenant.rate_limits,
                                      horizon=self.settings.max_rate_sleep_seconds)
                client = CapillaryClient(
                    tenant,
                    timeout=self.settings.capillary_timeout_seconds,
                    pool_size=self.settings.worker_concurrency,
                    before_call=limiter.acquire,
                    on_throttle=limiter.pause,
                )
                self._clients[tenant_id] = client
            return client


_contexts: dict[int, WorkerContext] = {}
_contexts_lock = threading.Lock()


def context_of(app) -> WorkerContext:
    """The context of a Celery app built by :func:`worker.celery_app.create_celery`."""
    with _contexts_lock:
        ctx = _contexts.get(id(app))
        if ctx is None:
            ctx = _contexts[id(app)] = WorkerContext(app.upsert_settings)
        return ctx
