"""How a counter of the fleet is named in the ``cu:metrics`` hash: shared by worker/metrics.py,
which counts and serves the counters, and the job store, whose scripts count what a cancel ends
and the jobs that end (so the store needs these names, not the metrics machinery)."""

from __future__ import annotations

import json

ITEMS = "upsert_items_total"
JOBS_FINISHED = "upsert_jobs_finished_total"


def field(name: str, *labels: str) -> str:
    """The hash field of one series: ``["upsert_items_total","default","CREATED"]``."""
    return json.dumps([name, *labels], separators=(",", ":"))
