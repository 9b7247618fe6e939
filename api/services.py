"""What the web process shares between requests: settings, tenants, the job store, the Celery app."""

from __future__ import annotations

from dataclasses import dataclass, field

from celery import Celery
from flask import current_app

from worker.celery_app import create_celery
from worker.jobstore import JobStore
from worker.settings import Settings, Tenant


@dataclass
class Services:
    settings: Settings
    store: JobStore
    celery: Celery
    tenants: dict[str, Tenant] = field(default_factory=dict)
    openapi: dict | None = None

    @classmethod
    def build(cls, settings: Settings) -> Services:
        return cls(
            settings=settings,
            store=JobStore.from_url(settings.redis_url, ttl_seconds=settings.job_ttl_seconds),
            celery=create_celery(settings),
            tenants=settings.tenants(),
        )


def services() -> Services:
    return current_app.extensions["upsert"]
