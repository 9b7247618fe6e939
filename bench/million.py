"""A job of a million profiles, end to end through the processes the Procfile starts: accepted as
NDJSON, run a while, cancelled, exported.

A private Redis, the simulator (``--latency-ms``), one worker process of 32 threads and the web
process (gunicorn) with ``MAX_ITEMS_PER_JOB`` and ``MAX_BODY_BYTES`` raised, as the README says a
million-profile job needs. The bench streams ``--items`` customers (a realistic 355 bytes a line)
over HTTP and prints: the time to the 202 and the web worker's peak memory meanwhile; Redis's
``used_memory`` at its peak while the job is accepted and while it runs (``--run-seconds``), against
the payload's own size;
the progress and estimated time left a client sees meanwhile, against the rate the job makes;
the time from the cancel to the job's ``finishedAt``; and the export of every item's result as an
NDJSON stream (the cancelled ones with their input), its time and the web worker's peak memory
while it streams.

    .venv/bin/python bench/million.py [--items 1000000] [--run-seconds 60] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis
import requests

from tests.helpers import JOBS, TOKEN, RedisServer, Simulator, Worker, make_settings, ndjson_file, wait_for
from tests.web_process import big_job_limits, web_process

HEADERS = {"Authorization": f"Bearer {TOKEN}"}


class PeakMemory:
    """Redis's used_memory, sampled twice a second on a thread of its own; the highest seen."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, int(self.client.info("memory")["used_memory"]))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--run-seconds", type=float, default=60.0, help="how long the job runs before the cancel")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = ndjson_file(folder / "million.ndjson", args.items)
        payload = path.stat().st_size
        server = RedisServer(folder).start()
        sim = Simulator(folder)
        sim.reset(latencyMs=args.latency_ms)
        settings = make_settings(server.url, sim.url, worker_concurrency=32)
        worker = Worker(settings, folder / "worker.log")
        store = redis.Redis.from_url(server.url)
        try:
            with web_process(folder, settings, **big_job_limits(args.items, payload)) as (url, memory):
                idle = memory.peak()
                baseline = int(store.info("memory")["used_memory"])
                redis_peak = PeakMemory(server.url)

                memory.mark()
                with path.open("rb") as body:
                    started = time.perf_counter()
                    response = requests.post(f"{url}{JOBS}/bulk", data=body, timeout=900, headers=HEADERS | {
                        "Content-Type": "application/x-ndjson", "Content-Length": str(payload)})
                    accepted = time.perf_counter() - started
                assert response.status_code == 202, response.text[:500]
                job_id = response.json()["jobId"]
                intake_peak = memory.peak()
                # The intake's peak holds the chain planner's identifiers, removed at the commit; the
                # job's own bytes are what stays while it runs.
                intake_redis = redis_peak.stop()
                redis_peak = PeakMemory(server.url)

                def job() -> dict:
                    return requests.get(f"{url}{JOBS}/jobs/{job_id}", headers=HEADERS, timeout=30).json()

                samples = []  # (seconds since the 202, processed, estimated seconds left)
                running_from = time.monotonic()
                while time.monotonic() - running_from < args.run_seconds:
                    doc = job()
                    samples.append((time.monotonic() - running_from, doc["processedCount"],
                                    doc.get("estimatedSecondsLeft")))
                    time.sleep(5)
                peak = redis_peak.stop()

                cancelled = time.monotonic()
                assert requests.delete(f"{url}{JOBS}/jobs/{job_id}", headers=HEADERS, timeout=60).ok
                done = wait_for(lambda: (lambda d: d if d.get("finishedAt") else None)(job()), timeout=120,
                                what="the cancelled job to finish", interval=0.05)
                cancel = time.monotonic() - cancelled

                memory.mark()
                started = time.perf_counter()
                lines = size = 0
                with requests.get(f"{url}{JOBS}/jobs/{job_id}/results", params={"format": "ndjson"},
                                  headers=HEADERS, stream=True, timeout=900) as export:
                    assert export.ok, export.text[:500]
                    for line in export.iter_lines(chunk_size=1 << 16):
                        lines += 1
                        size += len(line) + 1
                exported = time.perf_counter() - started
                export_peak = memory.peak()
        finally:
            worker.stop()
            sim.stop()
            server.stop()

    n = args.items
    print(f"{n:,} customers as NDJSON ({payload / 1e6:.0f} MB, {payload / n:.0f} B a line) through the web process "
          f"(gunicorn, the Procfile's web line), one worker x 32 threads at {args.latency_ms:g} ms, "
          f"{os.cpu_count()} cores")
    print(f"accepted in {accepted:6.1f} s (goal < 60 s); web worker peak {intake_peak / 1e6:.0f} MB resident "
          f"({(intake_peak - idle) / 1e6:.0f} MB above idle)")
    print(f"Redis used_memory at its peak above the idle store, while the job ran: {(peak - baseline) / 1e6:.0f} MB = "
          f"{(peak - baseline) / n:.0f} B per item (goal <= 300 B, below the payload's {payload / n:.0f} B); "
          f"while it was accepted: {(intake_redis - baseline) / 1e6:.0f} MB = {(intake_redis - baseline) / n:.0f} B "
          "per item")
    print("while it ran: seconds | processed | items/s since the last | estimated seconds left | "
          "left / that rate")
    previous = None
    for at, processed, eta in samples:
        if previous is not None and processed > previous[1]:
            rate = (processed - previous[1]) / (at - previous[0])
            naive = (n - processed) / rate
            print(f"  {at:5.0f} | {processed:9,} | {rate:6.1f} | {eta if eta is None else round(eta):>9} | "
                  f"{naive:9.0f}")
        previous = (at, processed)
    print(f"cancel to finishedAt: {cancel:.2f} s ({done['cancelledCount']:,} cancelled, {done['processedCount']:,} "
          "processed)")
    print(f"export of every result as NDJSON: {lines:,} lines, {size / 1e6:.0f} MB in {exported:.1f} s; web worker "
          f"peak {export_peak / 1e6:.0f} MB resident ({(export_peak - idle) / 1e6:.0f} MB above idle)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
