"""Showing jobs on the terminal: a live progress bar, a finished job's summary, the jobs table."""

from __future__ import annotations

from cli.api_client import ApiClient
from worker.clock import parse_iso

#: How much of a job's label `jobs` shows.
LABEL_WIDTH = 40


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
