"""Scheduling figures: how long a small job waits behind a big one, how fast a cancel ends a job,
how long a killed worker costs, and what a running job holds in Redis.

Each figure is measured on a private stack (Redis, simulator, real Celery workers from the
Procfile's line) with default settings unless said otherwise, and printed beside its goal.

    .venv/bin/python bench/scheduling.py [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from tests.helpers import Simulator, Stack, customers, ndjson_file, post_ndjson, progress, wait_for


def tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def small_job_latency(stack: Stack, big: int) -> float:
    """Seconds from submitting a one-profile job to its end, while a ``big``-item job runs."""
    big_id = stack.api.submit(customers(big, tag("BIG"))).get_json()["jobId"]
    wait_for(lambda: progress(stack.api, big_id)["processedCount"] >= 200, timeout=120, what="the big job")
    started = time.monotonic()
    stack.api.run(customers(1, tag("ONE"), first_mobile=big), timeout=120)
    took = time.monotonic() - started
    stack.api.delete(f"/jobs/{big_id}")
    stack.api.wait(big_id, timeout=120)
    return took


def cancel_and_memory(stack: Stack, tmp: Path, items: int) -> tuple[float, float, float]:
    """(seconds to accept ``items`` as NDJSON, seconds from cancel to finishedAt, Redis bytes per item
    while the job ran)."""
    store = redis.Redis.from_url(stack.redis.url)
    baseline = store.info("memory")["used_memory"]
    path = ndjson_file(tmp / "bench.ndjson", items)
    started = time.monotonic()
    job_id = post_ndjson(stack.api.client.application, path, stack.settings.upsert_api_token).get_json()["jobId"]
    accepted = time.monotonic() - started
    peak = 0

    def running_a_while() -> bool:
        nonlocal peak
        peak = max(peak, store.info("memory")["used_memory"])
        return progress(stack.api, job_id)["processedCount"] >= 1000

    wait_for(running_a_while, timeout=300, what="1,000 items done", interval=0.5)
    cancelled = time.monotonic()
    stack.api.delete(f"/jobs/{job_id}")
    stack.api.wait(job_id, timeout=300)
    return accepted, time.monotonic() - cancelled, (peak - baseline) / items


def kill_to_done(stack: Stack, items: int) -> float:
    """Seconds from SIGKILLing one of two workers at a fifth of a job to the job's end."""
    doomed, _survivor = stack.worker(), stack.worker()
    job_id = stack.api.submit(customers(items, tag("KILL"))).get_json()["jobId"]
    wait_for(lambda: progress(stack.api, job_id)["processedCount"] >= items // 5, timeout=300, what="a fifth done")
    doomed.kill()
    killed = time.monotonic()
    job = stack.api.wait(job_id, timeout=600)
    assert job["failureCount"] == 0 and job["processedCount"] == items, job
    return time.monotonic() - killed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--big", type=int, default=20_000, help="items of the big job")
    parser.add_argument("--cancel-items", type=int, default=100_000)
    parser.add_argument("--kill-items", type=int, default=1500)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sim = Simulator(tmp_path)
        stacks: list[Stack] = []

        def stack(name: str) -> Stack:
            (tmp_path / name).mkdir()
            made = Stack(tmp_path / name, sim, worker_concurrency=32)
            stacks.append(made)
            sim.reset(latencyMs=args.latency_ms)
            return made

        try:
            one = stack("small")
            one.worker()
            latency = small_job_latency(one, args.big)
            two = stack("cancel")
            two.worker()
            accepted, cancel, per_item = cancel_and_memory(two, tmp_path, args.cancel_items)
            sim.reset(latencyMs=5)
            three = stack("kill")
            killed = kill_to_done(three, args.kill_items)
        finally:
            for made in stacks:
                made.close()
            sim.stop()

    print(f"downstream latency {args.latency_ms:g} ms, one worker x 32 threads, default settings")
    print(f"one-profile job while a {args.big:,}-item job runs:   {latency:6.2f} s   (goal < 5 s)")
    print(f"{args.cancel_items:,} items as NDJSON accepted in:          {accepted:6.2f} s   (goal < 10 s)")
    print(f"cancel to finishedAt, {args.cancel_items:,} items:          {cancel:6.2f} s   (goal < 10 s)")
    print(f"Redis bytes per item while it runs:              {per_item:6.0f} B   (goal <= 2048 B)")
    print(f"one of two workers killed at a fifth of {args.kill_items:,} items, job done after "
          f"{killed:.1f} s   (goal < 45 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
