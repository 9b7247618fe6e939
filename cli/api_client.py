"""A small client of our own HTTP API, for the command line: it talks to the API over HTTP only."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests

from cli.batches import Batch
from cli.errors import CliError
from worker.paths import JOBS_PREFIX


class ApiClient:
    """A small client of our own HTTP API, for the command line."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        if not token:
            raise CliError("UPSERT_API_TOKEN is not set (customer-upsert dev prints one)")
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, self.base_url + path, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as exc:
            if "refused" in str(exc).lower():
                raise CliError(f"cannot reach {self.base_url}: connection refused (is the API running? "
                               f"UPSERT_URL says where it is; `customer-upsert dev` starts one)")
            raise CliError(f"the connection to {self.base_url} failed or broke off ({type(exc).__name__})")
        except requests.RequestException as exc:
            raise CliError(f"cannot reach {self.base_url}: {type(exc).__name__}")
        if response.status_code >= 400:
            try:
                errors = response.json().get("errors") or []
                detail = "; ".join(e.get("message", "") for e in errors)
            except ValueError:
                detail = response.text[:200]
            raise CliError(f"HTTP {response.status_code}: {detail}")
        return response

    def submit_batch(self, batch: Batch, *, skip_change_identifier: bool, dry_run: bool = False) -> dict:
        # The file's name labels the job in `jobs` and the dashboard (the API takes printable text only).
        params = {"skipChangeIdentifier": str(skip_change_identifier).lower(),
                  "label": "".join(c for c in batch.path.name if c.isprintable())[:200]}
        if dry_run:
            params["dryRun"] = "true"
        return self.request(
            "POST", f"{JOBS_PREFIX}/bulk", params=params,
            data=batch.body() if batch.kind in ("ndjson", "csv") else b"".join(batch.body()),
            headers={"Content-Type": batch.content_type},
        ).json()

    def run_dry_run(self, job_id: str) -> dict:
        return self.request("POST", f"{JOBS_PREFIX}/jobs/{job_id}/run").json()

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"{JOBS_PREFIX}/jobs/{job_id}").json()

    def jobs(self, *, state: str | None = None, limit: int = 20) -> list[dict]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        return self.request("GET", f"{JOBS_PREFIX}/jobs", params=params).json()["jobs"]

    def cancel(self, job_id: str) -> dict:
        return self.request("DELETE", f"{JOBS_PREFIX}/jobs/{job_id}").json()

    def results(self, job_id: str, *, failed: bool = False) -> Iterator[dict]:
        outcome = "failed" if failed else "all"
        response = self.request("GET", f"{JOBS_PREFIX}/jobs/{job_id}/results",
                                params={"format": "ndjson", "outcome": outcome}, stream=True)
        for line in response.iter_lines():
            if line:
                yield json.loads(line)

    def wait(self, job_id: str, *, timeout: float, on_progress: Callable[[dict], None] | None = None,
             interval: float = 0.25) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job.get("finishedAt"):
                return job
            if time.monotonic() > deadline:
                raise CliError(f"job {job_id} did not finish within {timeout:g}s (state {job.get('state')}); "
                               f"it keeps running: customer-upsert status {job_id}")
            time.sleep(interval)
