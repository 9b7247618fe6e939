"""Counts and a bounded log of calls, so tests can assert the exact number of calls a client made."""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

COUNTED_ENDPOINTS = ("lookup", "get", "add", "update", "changeIdentifier", "token")
LOG_LIMIT = 500_000


class CallLog:
    def __init__(self, limit: int = LOG_LIMIT) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[int]] = {name: Counter() for name in COUNTED_ENDPOINTS}
        self._log: deque[dict[str, Any]] = deque(maxlen=limit)

    def record(self, arrived: float, endpoint: str, status: int) -> None:
        with self._lock:
            self._counts[endpoint][status] += 1
            self._log.append({"t": arrived, "endpoint": endpoint, "status": status})

    def summary(self) -> dict[str, Any]:
        with self._lock:
            by_endpoint = {
                name: {str(status): n for status, n in sorted(counts.items())}
                for name, counts in self._counts.items()
            }
        return {"total": sum(sum(c.values()) for c in by_endpoint.values()), "byEndpoint": by_endpoint}

    def entries(self, since: float | None = None) -> list[dict[str, Any]]:
        with self._lock:
            calls = list(self._log)
        return calls if since is None else [c for c in calls if c["t"] >= since]

    def clear(self) -> None:
        with self._lock:
            for counts in self._counts.values():
                counts.clear()
            self._log.clear()
