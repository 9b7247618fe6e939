"""customer-upsert: run the whole stack locally, submit files, follow, list and cancel jobs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from api.paths import JOBS_PREFIX
from worker.clock import parse_iso
from worker.settings import Settings, SettingsError

NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".ldjson")
CSV_SUFFIXES = (".csv",)
BOM = b"\xef\xbb\xbf"
#: How much of a job's label `jobs` shows.
LABEL_WIDTH = 40
#: NDJSON is sent in chunks of about this many bytes, read from the file as they go.
CHUNK_BYTES = 1 << 16

EXIT_OK, EXIT_FAILURES, EXIT_PROBLEM, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = """\
exit codes:
  0    done; for `submit --wait`: every item succeeded
  1    `submit --wait`, `watch`: the job had failed or cancelled items; `doctor`: the store is unsafe
  2    usage, file or connection problem, or an error answer from the API
  130  interrupted by Ctrl-C (a submitted job keeps running)

Client commands read UPSERT_URL (default http://127.0.0.1:8000) and UPSERT_API_TOKEN."""


class CliError(Exception):
    """A problem to report in one line, exit code 2."""


# -- the API ---------------------------------------------------------------------------------------


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


# -- reading a file of customers -------------------------------------------------------------------


@dataclass
class Batch:
    """A file of customers, checked; ``body()`` reads it again to send it (NDJSON a chunk at a time)."""

    path: Path
    kind: str  # "json" (an array), "ndjson" or "csv"
    count: int
    body: Callable[[], Iterator[bytes]]

    @property
    def content_type(self) -> str:
        return {"ndjson": "application/x-ndjson", "csv": "text/csv"}.get(self.kind, "application/json")


def open_batch(path: Path) -> Batch:
    """Check a file of customers: a JSON array, NDJSON (one customer per line) or CSV (a header row naming
    columns by their JSON path, then one customer per row; by its extension, or by a header that names
    an ``identifiers.`` column). The API checks a CSV's columns and rows; it is sent as it is.

    Lines of a results export (``customer-upsert results JOB --failed``) count as their ``input``,
    so a failed export is a batch to resubmit. Every problem is a CliError naming the file.
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except FileNotFoundError:
        raise CliError(f"{path}: no such file")
    except IsADirectoryError:
        raise CliError(f"{path} is a directory, not a file of customers")
    except PermissionError:
        raise CliError(f"{path}: cannot read it (permission denied)")
    except OSError as exc:
        raise CliError(f"{path}: cannot read it ({exc.strerror or exc})")
    if b"\0" in head:
        raise CliError(f"{path} is a binary file, not JSON or NDJSON")
    start = head.removeprefix(BOM).lstrip()
    if not start:
        raise CliError(f"{path} is empty: no customers in it")
    if path.name.lower().endswith(CSV_SUFFIXES) or (
            not start.startswith((b"[", b"{")) and b"identifiers." in start.split(b"\n", 1)[0]):
        return _csv(path)
    if start.startswith(b"["):
        return _json_array(path)
    if start.startswith(b"{"):
        return _ndjson(path)
    raise CliError(f"{path}: expected a JSON array of customers, NDJSON (one customer per line), or CSV (a header "
                   f"row naming columns such as identifiers.mobile, then one customer per row)")


def read_batch(path: Path) -> list:
    """The file's customers as a list (for tests and small files; submitting streams NDJSON instead)."""
    batch = open_batch(path)
    if batch.kind == "json":
        return json.loads(b"".join(batch.body()))
    return [json.loads(line) for chunk in batch.body() for line in chunk.splitlines() if line.strip()]


def _is_export_line(value: Any) -> bool:
    return isinstance(value, dict) and "input" in value and "action" in value and "index" in value


def _as_input(element: Any) -> Any:
    return element["input"] if _is_export_line(element) else element


def _not_json(path: Path, exc: ValueError, line: int | None = None) -> CliError:
    if isinstance(exc, UnicodeDecodeError):
        return CliError(f"{path} is not UTF-8 text (a binary file?)")
    if isinstance(exc, json.JSONDecodeError):
        if line is not None:
            return CliError(f"{path}: line {line} is not JSON ({exc.msg})")
        return CliError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})")
    return CliError(f"{path}: not JSON ({exc})")


def _single_object(path: Path) -> CliError:
    return CliError(f"{path} holds one JSON object; the API takes a JSON array of customers ([{{...}}, ...]) "
                    f"or NDJSON (one customer per line, in a file named .ndjson)")


def _json_array(path: Path) -> Batch:
    try:
        data = json.loads(path.read_bytes().removeprefix(BOM).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _not_json(path, exc)
    except RecursionError:
        raise CliError(f"{path}: nests JSON too deeply")
    if not isinstance(data, list):
        raise CliError(f"{path}: expected a JSON array of customers")
    if not data:
        raise CliError(f"{path} holds an empty array: no customers in it")
    body = json.dumps([_as_input(element) for element in data]).encode()
    return Batch(path, "json", len(data), lambda: iter([body]))


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The file's non-blank lines with their numbers, a leading byte order mark dropped."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if number == 1:
                line = line.removeprefix(BOM)
            if line.strip():
                yield number, line


def _ndjson(path: Path) -> Batch:
    """One pass to check every line (nothing is held but the line), then ``body`` streams the file."""
    count, exported, first = 0, False, None
    for number, line in _lines(path):
        try:
            value = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if count == 0:
                _whole_file_is_one_object(path)
            raise _not_json(path, exc, number)
        except RecursionError:
            raise CliError(f"{path}: line {number} nests JSON too deeply")
        count += 1
        first = value if count == 1 else None
        exported = exported or _is_export_line(value)
    if count == 1 and isinstance(first, dict) and not path.name.lower().endswith(NDJSON_SUFFIXES):
        raise _single_object(path)

    def body() -> Iterator[bytes]:
        buffer: list[bytes] = []
        size = 0
        for _number, line in _lines(path):
            if exported:
                value = json.loads(line)
                if _is_export_line(value):
                    line = json.dumps(value["input"], separators=(",", ":")).encode()
            if not line.endswith(b"\n"):
                line += b"\n"
            buffer.append(line)
            size += len(line)
            if size >= CHUNK_BYTES:
                yield b"".join(buffer)
                buffer, size = [], 0
        if buffer:
            yield b"".join(buffer)

    return Batch(path, "ndjson", count, body)


def _csv(path: Path) -> Batch:
    """A CSV file, sent as it is, a chunk at a time; ``count`` is its lines after the header (a quoted
    cell may hold line breaks: the API counts the rows)."""
    with path.open("rb") as handle:
        count = max(sum(1 for line in handle if line.strip()) - 1, 0)
    if not count:
        raise CliError(f"{path} has a header but no rows: no customers in it")

    def body() -> Iterator[bytes]:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                yield chunk

    return Batch(path, "csv", count, body)


def _whole_file_is_one_object(path: Path) -> None:
    """A file whose first line is not JSON may be one pretty-printed object: say so if it is."""
    try:
        value = json.loads(path.read_bytes().removeprefix(BOM).decode("utf-8"))
    except (ValueError, RecursionError):
        return
    if isinstance(value, dict):
        raise _single_object(path)


# -- showing jobs ----------------------------------------------------------------------------------


def follow(client: ApiClient, job_id: str, timeout: float) -> dict:
    """Wait for a job with a live progress bar: processed of total, rate, the job's own ETA."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        """Items per second: lately, while the job runs; over the whole job, once it has finished."""

        def render(self, task) -> Text:
            speed = task.fields.get("overall") or task.speed
            return Text(f"{speed:,.0f} items/s" if speed else "- items/s", style="progress.data.speed")

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                  TextColumn("{task.fields[eta]}", style="progress.remaining"), TimeElapsedColumn()) as progress:
        bar = progress.add_task("QUEUED", total=None, eta="", overall=None)

        def update(job: dict) -> None:
            failed = job["failureCount"] - job.get("cancelledCount", 0)
            progress.update(bar, total=job["totalCount"], completed=job["processedCount"],
                            description=job["state"] + (f" failed {failed:,}" if failed else ""),
                            eta=eta_text(job), overall=overall_rate(job))

        return client.wait(job_id, timeout=timeout, on_progress=update)


def overall_rate(job: dict) -> float | None:
    """A finished job's items per second, start to finish by the server's clock; cancelled items not counted."""
    if not (job.get("finishedAt") and job.get("startedAt")):
        return None
    seconds = (parse_iso(job["finishedAt"]) - parse_iso(job["startedAt"])).total_seconds()
    worked = job["processedCount"] - job.get("cancelledCount", 0)
    return worked / seconds if seconds > 0 and worked > 0 else None


def eta_text(job: dict) -> str:
    if job.get("finishedAt"):
        return "done"
    if job.get("state") == "CANCELLED":
        return "cancelled"  # items in flight finish; there is no completion to estimate
    left = job.get("estimatedSecondsLeft")
    return "ETA -" if left is None else f"ETA {clock_duration(left)}"


def clock_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def summary(job: dict) -> str:
    """The counts, how long the job took and its rate; when items failed or were cancelled, a second
    line with the command that saves them to resubmit. ``failed`` counts the items that failed,
    ``cancelled`` those a cancel stopped. A dry run says what it would do, and how to do it."""
    cancelled = job.get("cancelledCount", 0)
    if job.get("dryRun"):
        line = (f"dry run {job['jobId']} {job['state']}: total {job['totalCount']}, would create "
                f"{job.get('wouldCreateCount', 0)}, would update {job.get('wouldUpdateCount', 0)}, would fail "
                f"{job['failureCount'] - cancelled}, cancelled {cancelled}; nothing was written")
        if job["state"] == "COMPLETED":
            line += (f"\n  see each change:  customer-upsert results {job['jobId']}"
                     f"\n  apply it:         customer-upsert run {job['jobId']} --wait")
        return line
    line = (f"job {job['jobId']} {job['state']}: total {job['totalCount']}, created {job['createdCount']}, "
            f"updated {job['updatedCount']}, failed {job['failureCount'] - cancelled}, cancelled {cancelled}")
    took = job_seconds(job)
    if took is not None:
        rate = overall_rate(job)
        line += f"; took {seconds_text(took)}" + (f", {rate:,.0f} items/s" if rate else "")
    if job["failureCount"]:
        name = f"{job['jobId']}-failed.ndjson"
        line += (f"\n  the {'failed and cancelled' if cancelled else 'failed'} items, to resubmit: "
                 f"customer-upsert results {job['jobId']} --failed -o {name} && customer-upsert submit {name}")
    return line


def job_seconds(job: dict) -> float | None:
    """From start (or submission, for a job cancelled before it started) to finish; None while it runs."""
    began = job.get("startedAt") or job.get("createdAt")
    if not (job.get("finishedAt") and began):
        return None
    return max(0.0, (parse_iso(job["finishedAt"]) - parse_iso(began)).total_seconds())


def seconds_text(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else clock_duration(seconds)


def jobs_table(jobs: list[dict]) -> str:
    rows = [("JOB", "STATE", "PROCESSED", "FAILED", "CANCELLED", "ETA", "SUBMITTED", "LABEL")]
    for job in jobs:
        cancelled = job.get("cancelledCount", 0)
        rows.append((job["jobId"], job["state"], f"{job['processedCount']:,}/{job['totalCount']:,}",
                     f"{job['failureCount'] - cancelled:,}", f"{cancelled:,}",
                     "" if job.get("finishedAt") else eta_text(job).removeprefix("ETA "), local_time(job["createdAt"]),
                     label_text(job.get("label"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4}
    return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
                     for row in rows)


def label_text(label: str | None, width: int = LABEL_WIDTH) -> str:
    if not label:
        return ""
    return label if len(label) <= width else label[:width - 1] + "…"


def local_time(stamp: str | None) -> str:
    if not stamp:
        return ""
    try:
        return parse_iso(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return stamp


def _print_json(value: Any) -> int:
    print(json.dumps(value, indent=2))
    return EXIT_OK


def _hint(job_id: str, base_url: str) -> str:
    return (f"  follow it:  customer-upsert watch {job_id}   (or the dashboard, {base_url}/ui/)\n"
            f"  cancel it:  customer-upsert cancel {job_id}")


# -- commands --------------------------------------------------------------------------------------


def cmd_submit(client: ApiClient, args: argparse.Namespace) -> int:
    try:
        job = client.submit_batch(args.batch, skip_change_identifier=args.skip_change_identifier,
                                  dry_run=args.dry_run)
    except KeyboardInterrupt:
        print("\ninterrupted while sending; a job accepted meanwhile is listed by `customer-upsert jobs`",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return _accepted(client, job, args)


def cmd_run(client: ApiClient, args: argparse.Namespace) -> int:
    """Apply a finished dry run: the real job from its stored inputs."""
    job = client.run_dry_run(args.job)
    return _accepted(client, job, args)


def _accepted(client: ApiClient, job: dict, args: argparse.Namespace) -> int:
    """Tell that a job was accepted; with ``--wait``, follow it to its end and summarise it."""
    job_id = job["jobId"]
    what = "dry run" if job.get("dryRun") else "job"
    if not args.wait:
        print(f"{what} {job_id} accepted: {job['totalCount']:,} customers\n{_hint(job_id, client.base_url)}",
              file=sys.stderr)
        _print_json(job)
        return EXIT_OK
    print(f"{what} {job_id} accepted: {job['totalCount']:,} customers (Ctrl-C stops watching, not the job)",
          flush=True)
    return follow_to_summary(client, job_id, args.timeout)


def cmd_watch(client: ApiClient, args: argparse.Namespace) -> int:
    """The progress bar of a job submitted earlier (``--no-wait``, another terminal), then its summary."""
    return follow_to_summary(client, args.job, args.timeout)


def follow_to_summary(client: ApiClient, job_id: str, timeout: float) -> int:
    """The bar until the job ends, then the summary; the exit code says whether every item succeeded.
    Ctrl-C stops the watching, not the job, and says how to follow or cancel it."""
    try:
        job = follow(client, job_id, timeout)
    except KeyboardInterrupt:
        print(f"\njob {job_id} keeps running on the server.\n{_hint(job_id, client.base_url)}", file=sys.stderr,
              flush=True)
        return EXIT_INTERRUPTED
    print(summary(job))
    return EXIT_OK if job["failureCount"] == 0 else EXIT_FAILURES


def cmd_cancel(client: ApiClient, args: argparse.Namespace) -> int:
    job = client.job(args.job)
    if not job.get("finishedAt") and job["state"] != "CANCELLED":
        job = client.cancel(args.job)
        if job["state"] == "CANCELLED":
            print(f"job {args.job} cancelled: items not yet started end CANCELLED", flush=True)
            try:
                job = client.wait(args.job, timeout=args.timeout)
            except CliError:
                print(f"items in flight are still finishing; see `customer-upsert status {args.job}`")
                return EXIT_OK
            print(summary(job))
            return EXIT_OK
    if job.get("finishedAt"):
        print(f"job {args.job} had already finished ({job['state']}); nothing was cancelled")
        print(summary(job))
    else:
        print(f"job {args.job} was already cancelled; items in flight are still finishing")
    return EXIT_OK


def cmd_jobs(client: ApiClient, args: argparse.Namespace) -> int:
    jobs = client.jobs(state=args.state, limit=args.limit)
    print(jobs_table(jobs) if jobs else "no jobs" + (f" in state {args.state}" if args.state else ""))
    return EXIT_OK


def cmd_results(client: ApiClient, args: argparse.Namespace) -> int:
    out = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    count = 0
    try:
        for item in client.results(args.job, failed=args.failed):
            out.write(json.dumps(item) + "\n")
            count += 1
    finally:
        if args.output:
            out.close()
    if args.output:
        print(f"wrote {count:,} items to {args.output}", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="customer-upsert", description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("dev", help="run Redis, the simulator, the API, a worker and Flower on this machine")
    dev.add_argument("--submit", type=Path, metavar="FILE", help="submit FILE once the stack is up, print the result")
    dev.add_argument("--exit-after-submit", action="store_true", help="stop everything once FILE's job is printed")
    dev.add_argument("--host", default="127.0.0.1",
                     help="address the API and Flower listen on (default 127.0.0.1: this machine only)")
    dev.add_argument("--port", type=int, help="the API's port (default PORT or 8000, a free one if taken)")
    dev.add_argument("--flower-port", type=int, help="Flower's port (default 5555, a free one if taken)")
    dev.add_argument("--simulator-port", type=int, help="the simulator's port (default 8100, a free one if taken)")
    dev.add_argument("--keep-data", action="store_true",
                     help="keep jobs and metrics from one run to the next (default: each run starts empty)")

    def client_command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, epilog=EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    submit = client_command("submit", "submit a JSON array, NDJSON or CSV file of customers (NDJSON and CSV are "
                                      "streamed)")
    submit.add_argument("file", type=Path)
    submit.add_argument("--skip-change-identifier", action="store_true")
    submit.add_argument("--dry-run", action="store_true",
                        help="validate and look up only, write nothing: what each customer would do; "
                             "`customer-upsert run JOB` applies it")
    submit.add_argument("--wait", action="store_true",
                        help="show a progress bar until the job ends, then a summary; exit 1 if any item failed")
    submit.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait at most (default a day)")

    run = client_command("run", "apply a finished dry run: start the real job from its stored inputs")
    run.add_argument("job", metavar="JOB_ID")
    run.add_argument("--wait", action="store_true",
                     help="show a progress bar until the job ends, then a summary; exit 1 if any item failed")
    run.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait at most (default a day)")

    client_command("status", "print a job's document (JSON)").add_argument("job", metavar="JOB_ID")
    watch = client_command("watch", "show a running job's progress bar until it ends, then the summary; "
                                    "exit 1 if any item failed")
    watch.add_argument("job", metavar="JOB_ID")
    watch.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait at most (default a day)")
    cancel = client_command("cancel", "cancel a job: items not yet started end CANCELLED")
    cancel.add_argument("job", metavar="JOB_ID")
    cancel.add_argument("--timeout", type=float, default=30, help="seconds to wait for items in flight (default 30)")
    jobs = client_command("jobs", "list your recent jobs, newest first")
    jobs.add_argument("--state", choices=("QUEUED", "RUNNING", "COMPLETED", "CANCELLED"))
    jobs.add_argument("--limit", type=int, default=20, help="at most this many (1 to 100, default 20)")
    results = client_command("results", "print or save a job's per-customer results (NDJSON)")
    results.add_argument("job", metavar="JOB_ID")
    results.add_argument("--failed", action="store_true", help="only the failed (and cancelled) items, to resubmit")
    results.add_argument("-o", "--output", type=Path, metavar="FILE")

    client_command("doctor", "check the job store the API uses: eviction policy, persistence, version, memory")

    sub.add_parser("simulator", help="run the local stand-in for the v2 customer API", add_help=False)
    return parser


def cmd_doctor(client: ApiClient, args: argparse.Namespace) -> int:
    """The store as the API sees it (``/readyz``): exit 0 when it is fit, 1 with warnings."""
    store = client.request("GET", "/readyz").json()["store"]
    memory = (f"{store['usedMemory'] / 2**20:,.1f} MiB of {store['maxMemory'] / 2**20:,.0f} MiB"
              if store["maxMemory"] else f"{store['usedMemory'] / 2**20:,.1f} MiB, no maxmemory")
    print(f"Redis {store['version']}: {memory}; append-only file {'on' if store['appendOnly'] else 'off'}, "
          f"{store['replicas']} replicas")
    for warning in store["warnings"]:
        print(f"warning: {warning['message']}")
    if not store["warnings"]:
        print("the store is fit for accepted jobs")
    return EXIT_FAILURES if store["warnings"] else EXIT_OK


COMMANDS = {"submit": cmd_submit, "run": cmd_run, "watch": cmd_watch, "doctor": cmd_doctor, "cancel": cmd_cancel,
            "jobs": cmd_jobs, "results": cmd_results,
            "status": lambda client, args: _print_json(client.job(args.job))}


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "simulator":
        from simulator.cli import main as simulator_main

        return simulator_main(argv[1:]) or 0

    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.command == "dev":
            from cli.devstack import DevOptions, run_dev

            options = DevOptions(host=args.host, port=args.port, flower_port=args.flower_port,
                                 simulator_port=args.simulator_port, keep_data=args.keep_data)
            return run_dev(settings, submit=args.submit, exit_after_submit=args.exit_after_submit, options=options)
        if args.command == "submit":
            args.batch = open_batch(args.file)  # a file problem is told before anything else
        # /readyz needs no token: doctor works without one
        token = settings.upsert_api_token or ("-" if args.command == "doctor" else "")
        client = ApiClient(settings.upsert_url, token)
        code = COMMANDS[args.command](client, args)
        sys.stdout.flush()  # a reader gone (`| head`) shows here, while it can still be handled
        return code
    except BrokenPipeError:
        # The reader (`| head -1`) has what it wanted: stop quietly, and keep Python's own flush at exit
        # from raising again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (CliError, SettingsError) as exc:
        print(f"customer-upsert: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    # `python -m cli.main`: run the module as imported, so cli.devstack raises the CliError caught here.
    from cli.main import main as imported_main

    raise SystemExit(imported_main())
