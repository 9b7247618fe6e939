"""Tenant quotas: one brand's big upload must not stop every other brand's work.

Each tenant has three (the tenants file's ``max_pending_items``, ``max_concurrent_jobs`` and
``max_items_per_day``; ``TENANT_MAX_*`` for tenants that set none):

* **items pending**: accepted and without an outcome yet, over all its jobs not yet ended;
* **concurrent jobs**: its jobs not yet ended;
* **items per day**: accepted in the last 24 hours (a rolling window).

A submission over one is refused with 429 ``quota_exceeded``, naming the quota, what is in use, the
limit, and ``Retry-After``: when the day's window frees enough, or, for the other two, a guess (jobs
end as their items do). They are checked twice: before the body is read (is the tenant at a limit
already?) and once its items are counted, before the job is committed (would this batch go over?);
a refused submission leaves nothing behind. Two submissions racing past the first check may both
be committed: a quota can be overshot by one batch, never by more.
"""

from __future__ import annotations

from api.errors import ApiError
from worker.settings import Tenant
from worker.store.jobstore import JobStore, TenantUsage
from worker.store.keys import DAY_SECONDS

#: Retry-After for the pending-items and concurrent-jobs quotas: they free as jobs end.
BUSY_RETRY_SECONDS = 30


def check_quotas(store: JobStore, tenant: Tenant, *, items: int = 0) -> None:
    """Raise 429 if the tenant is over a quota, or would be with ``items`` more (0: before reading)."""
    usage = store.tenant_usage(tenant.id)
    if tenant.max_concurrent_jobs and usage.jobs + (1 if items == 0 else 0) > tenant.max_concurrent_jobs:
        raise over("max_concurrent_jobs", usage.jobs, tenant.max_concurrent_jobs, BUSY_RETRY_SECONDS,
                   "jobs not yet ended")
    if tenant.max_pending_items and usage.pending_items + max(items, 1) > tenant.max_pending_items:
        raise over("max_pending_items", usage.pending_items, tenant.max_pending_items, BUSY_RETRY_SECONDS,
                   "items accepted and not yet ended")
    if tenant.max_items_per_day and usage.items_today + max(items, 1) > tenant.max_items_per_day:
        raise over("max_items_per_day", usage.items_today, tenant.max_items_per_day,
                   day_frees_in(usage, tenant.max_items_per_day - max(items, 1)), "items accepted in the last 24 h")


#: Each quota's name and what its use counts, in the order the dashboard shows them.
QUOTAS = (("max_concurrent_jobs", "jobs not yet ended"),
          ("max_pending_items", "items accepted and not yet ended"),
          ("max_items_per_day", "items accepted in the last 24 h"))


def tenant_view(store: JobStore, tenant: Tenant) -> dict:
    """The tenant's quotas with what it uses of each (limit 0: none), for ``GET .../tenant``."""
    usage = store.tenant_usage(tenant.id)
    used = {"max_concurrent_jobs": usage.jobs, "max_pending_items": usage.pending_items,
            "max_items_per_day": usage.items_today}
    return {"tenant": tenant.id,
            "quotas": [{"quota": name, "used": used[name], "limit": getattr(tenant, name), "counts": what}
                       for name, what in QUOTAS]}


def day_frees_in(usage: TenantUsage, room_for: int) -> int:
    """Seconds until the day's window holds at most ``room_for`` items (the oldest jobs leave it first)."""
    left = usage.items_today
    for at, count in usage.accepted:
        left -= count
        if left <= room_for:
            return max(1, int(at + DAY_SECONDS - usage.now) + 1)
    return DAY_SECONDS


def over(quota: str, used: int, limit: int, retry_after: int, what: str) -> ApiError:
    return ApiError(429, "quota_exceeded",
                    f"this token is over its {quota} quota: {used:,} {what}, at most {limit:,}; "
                    f"try again in {retry_after} s, or ask for a larger quota",
                    headers={"Retry-After": str(retry_after)},
                    extra={"quota": quota, "used": used, "limit": limit, "retryAfterSeconds": retry_after})
