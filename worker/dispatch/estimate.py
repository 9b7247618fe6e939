"""How long a job has left, from the work left, the pace so far and the downstream limits."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from worker.clock import iso, parse_iso
from worker.settings import Tenant

if TYPE_CHECKING:
    from worker.downstream.ratelimit import EndpointRate

#: Calls an item makes, on average, when nothing is known of the batch: two identifiers looked
#: up, one write, one read-back by id for the result (counted under the lookup limit).
LOOKUPS_PER_ITEM = 3
CALLS_PER_ITEM = 4


def seconds_left(job: dict[str, Any], tenant: Tenant, now: datetime,
                 rates: Mapping[str, EndpointRate] | None = None) -> float | None:
    """The larger of what the pace so far and what the rate limits allow; None when unknown.

    The limits bound the estimate from below: a job that has run fast while the add bucket
    was full cannot go on faster than the add limit allows for the new customers still to come.
    ``rates``: each endpoint's rate as the fleet learned it (worker/downstream/ratelimit.py); those found from
    the downstream's answers or configured count, not one still growing from its start. Without
    them, the configured limits.
    """
    left = job["totalCount"] - job["processedCount"]
    if job.get("finishedAt") or left <= 0:
        return 0.0
    bounds: list[float] = []
    if job["processedCount"] and job.get("startedAt"):
        elapsed = (now - parse_iso(job["startedAt"])).total_seconds()
        bounds.append(left * max(elapsed, 0.0) / job["processedCount"])
    written = job["createdCount"] + job["updatedCount"]
    share_new = job["createdCount"] / written if written else 1.0
    if rates is None:
        per_second = {name: rpm / 60.0 for name, rpm in tenant.rate_limits.items()}
    else:
        per_second = {name: rate.per_minute / 60.0 for name, rate in rates.items()
                      if rate.found and rate.per_minute}
    if job.get("dryRun"):  # lookups only: no write, no read-back
        per_second = {name: rate for name, rate in per_second.items() if name == "lookup"}
    if "add" in per_second:
        bounds.append(left * share_new / per_second["add"])
    if "update" in per_second:
        bounds.append(left * (1 - share_new) / per_second["update"])
    if "lookup" in per_second:
        bounds.append(left * LOOKUPS_PER_ITEM / per_second["lookup"])
    if tenant.max_rps > 0:
        bounds.append(left * CALLS_PER_ITEM / tenant.max_rps)
    return max(bounds) if bounds else None


def with_estimate(job: dict[str, Any], tenant: Tenant, now: datetime | None = None,
                  rates: Mapping[str, EndpointRate] | None = None) -> dict[str, Any]:
    """The document with its estimate; a cancelled job has none (what still runs of it is no completion)."""
    now = now or datetime.now(UTC)
    left = None if job.get("state") == "CANCELLED" else seconds_left(job, tenant, now, rates)
    job["estimatedSecondsLeft"] = None if left is None else round(left, 1)
    job["estimatedCompletionAt"] = (
        None if left is None or job.get("finishedAt")
        else iso(now + timedelta(seconds=left), timespec="seconds")
    )
    return job
