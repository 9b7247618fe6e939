"""What the web process shares between requests: settings, tenants, the job store, the Celery app and
the registry ``/metrics`` serves."""

from __future__ import annotations

from dataclasses import dataclass, field

from celery import Celery
from flask import current_app
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from api.admission import Admission
from worker.celery_app import create_celery
from worker.downstream.ratelimit import learning_of
from worker.metrics import Collector
from worker.settings import Settings, Tenant
from worker.store.jobstore import JobStore


@dataclass
class Services:
    settings: Settings
    store: JobStore
    celery: Celery
    #: The app's own registry, not prometheus_client's global one: two apps in one process (the
    #: tests make many) must not register the same collector twice.
    registry: CollectorRegistry
    admission: Admission
    tenants: dict[str, Tenant] = field(default_factory=dict)
    openapi: dict | None = None

    @classmethod
    def build(cls, settings: Settings) -> Services:
        store = JobStore.from_url(settings.redis_url, ttl_seconds=settings.job_ttl_seconds,
                                  sentinel_master=settings.redis_sentinel_master,
                                  replica_wait_seconds=settings.store_replica_wait_seconds)
        registry = CollectorRegistry()
        tenants = settings.tenants()
        registry.register(Collector(store, lease_seconds=settings.item_lease_seconds, tenants=tenants,
                                    learning=learning_of(settings)))
        # This web process's own CPU, memory and Python version, as the default registry would show them.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        return cls(
            settings=settings,
            store=store,
            celery=create_celery(settings),
            registry=registry,
            admission=Admission(store, watermark=settings.store_admit_watermark, max_bytes=settings.store_max_bytes),
            tenants=tenants,
        )


def services() -> Services:
    return current_app.extensions["upsert"]
