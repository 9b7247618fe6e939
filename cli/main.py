"""``customer-upsert``: run the whole stack locally, submit files, follow and fetch jobs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import requests

from worker.settings import Settings

JOBS_PATH = "/v2/integrations/customer/upsert"


class CliError(Exception):
    pass


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

    def submit(self, elements: list, *, skip_change_identifier: bool) -> dict:
        return self.request(
            "POST", f"{JOBS_PATH}/bulk",
            params={"skipChangeIdentifier": str(skip_change_identifier).lower()},
            data=json.dumps(elements), headers={"Content-Type": "application/json"},
        ).json()

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"{JOBS_PATH}/jobs/{job_id}").json()

    def cancel(self, job_id: str) -> dict:
        return self.request("DELETE", f"{JOBS_PATH}/jobs/{job_id}").json()

    def results(self, job_id: str, *, failed: bool = False):
        outcome = "failed" if failed else "all"
        response = self.request("GET", f"{JOBS_PATH}/jobs/{job_id}/results",
                                params={"format": "ndjson", "outcome": outcome}, stream=True)
        for line in response.iter_lines():
            if line:
                yield json.loads(line)

    def wait(self, job_id: str, *, timeout: float, on_progress=None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job.get("finishedAt"):
                return job
            if time.monotonic() > deadline:
                raise CliError(f"job {job_id} did not finish within {timeout:g}s (state {job.get('state')})")
            time.sleep(0.25)


def read_batch(path: Path) -> list:
    """A JSON array, or NDJSON (one customer per line); lines of a results export count as their input."""
    return [_as_input(element) for element in _read_elements(path)]


def _as_input(element: Any) -> Any:
    if isinstance(element, dict) and "input" in element and "action" in element and "index" in element:
        return element["input"]
    return element


def _read_elements(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
        elements = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    elements.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise CliError(f"{path}:{number}: not JSON ({exc.msg})")
        return elements
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        return [data]
    raise CliError(f"{path}: expected a JSON array of customers or NDJSON")


def follow(client: ApiClient, job_id: str, timeout: float) -> dict:
    """Wait for a job with a live progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as progress:
        bar = progress.add_task(f"job {job_id[:8]}", total=None)

        def update(job: dict) -> None:
            progress.update(bar, total=job["totalCount"], completed=job["processedCount"],
                            description=f"job {job_id[:8]} {job['state']} failed={job['failureCount']}")

        return client.wait(job_id, timeout=timeout, on_progress=update)


def summary(job: dict) -> str:
    return (f"job {job['jobId']} {job['state']}: total {job['totalCount']}, created {job['createdCount']}, "
            f"updated {job['updatedCount']}, failed {job['failureCount']}")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="customer-upsert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run Redis, the simulator, the API, a worker and Flower on this machine")
    dev.add_argument("--submit", type=Path, metavar="FILE", help="submit FILE once the stack is up, print the result")
    dev.add_argument("--exit-after-submit", action="store_true", help="stop everything once FILE's job is printed")

    submit = sub.add_parser("submit", help="submit a JSON array or NDJSON file of customers")
    submit.add_argument("file", type=Path)
    submit.add_argument("--skip-change-identifier", action="store_true")
    submit.add_argument("--wait", action="store_true", help="show progress until the job ends, then a summary")
    submit.add_argument("--timeout", type=float, default=24 * 3600)

    for name, text in (("status", "print a job"), ("cancel", "cancel a job")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("job")
    results = sub.add_parser("results", help="print or save a job's per-profile results (NDJSON)")
    results.add_argument("job")
    results.add_argument("--failed", action="store_true", help="only the failed items")
    results.add_argument("-o", "--output", type=Path)

    sub.add_parser("simulator", help="run the local stand-in for the v2 customer API", add_help=False)

    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "simulator":
        from simulator.cli import main as simulator_main

        return simulator_main(argv[1:]) or 0

    args = parser.parse_args(argv)
    settings = Settings.from_env()
    try:
        if args.command == "dev":
            from cli.devstack import run_dev

            return run_dev(settings, submit=args.submit, exit_after_submit=args.exit_after_submit)
        client = ApiClient(settings.upsert_url, settings.upsert_api_token)
        if args.command == "submit":
            job = client.submit(read_batch(args.file), skip_change_identifier=args.skip_change_identifier)
            if not args.wait:
                _print_json(job)
                return 0
            job = follow(client, job["jobId"], args.timeout)
            print(summary(job))
            return 0 if job["failureCount"] == 0 else 1
        if args.command == "status":
            _print_json(client.job(args.job))
        elif args.command == "cancel":
            _print_json(client.cancel(args.job))
        elif args.command == "results":
            out = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
            try:
                for item in client.results(args.job, failed=args.failed):
                    out.write(json.dumps(item) + "\n")
            finally:
                if args.output:
                    out.close()
        return 0
    except CliError as exc:
        print(f"customer-upsert: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
