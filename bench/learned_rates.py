"""Learned rate limits against a simulator that limits each endpoint apart, with nothing configured.

Split limits: the simulator holds adds to ``--add-limit`` and updates to ``--update-limit`` calls a
minute; a job of 300 customers it knows and 300 it does not (interleaved) runs through one worker
of 32 threads, once with nothing configured (the rates learned from 429s) and once with the limits
written into ``CAPILLARY_RATE_LIMITS`` (the baseline, measured in the same run). Printed for each:
answers 429 per write, the adds' rate over their limit (first add to last), when the last update
landed as a share of the time the adds took, and failures.

Halved: ``--halve-items`` new customers, two workers, nothing configured; once the job is under way
the simulator halves the add limit, and restores it ``--halved-seconds`` later. Printed: how long the
learned add rate took to come within 10% of the halved limit, the share of add calls answered 429
from 30 s after the change until the restore, how long the rate took to climb back to the restored
limit, and the adds made from 5 to 25 s after the restore over that limit.

    .venv/bin/python bench/learned_rates.py [--add-limit 600] [--update-limit 3000] [--halve-items 1200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from tests.helpers import Simulator, Stack, calls_since, customers, seed_customers, wait_for, write_figures
from worker.downstream.ratelimit import learned_rates, learning_of
from worker.settings import DEFAULT_TENANT_ID


def split_limits(sim: Simulator, tmp: Path, limits: dict[str, float], configured: bool) -> dict[str, float]:
    """The mixed job against per-endpoint limits; the write figures and the job's failures."""
    name = "configured" if configured else "learned"
    (tmp / name).mkdir()
    stack = Stack(tmp / name, sim, worker_concurrency=32, capillary_rate_limits=limits if configured else {},
                  capillary_rate_learning=not configured)
    try:
        tag = name[:3].upper() + uuid.uuid4().hex[:6]
        known = customers(300, tag + "K", first_mobile=0)
        new = customers(300, tag + "N", first_mobile=500)
        sim.reset()
        seed_customers(stack.settings, known)
        for element in known:
            element["profiles"][0]["firstName"] = "Changed"  # so each known customer is updated
        stack.worker()
        sim.configure(rateLimits=limits)
        start = time.time()
        job = stack.api.run([e for pair in zip(known, new, strict=True) for e in pair], timeout=600)
        figures = write_figures(calls_since(sim, start), limits["add"])
        figures["failures"] = job["failureCount"]
        return figures
    finally:
        stack.close()
        sim.reset()


def halved(sim: Simulator, tmp: Path, add_limit: float, items: int, halved_seconds: float) -> dict[str, float]:
    (tmp / "halved").mkdir()
    stack = Stack(tmp / "halved", sim, worker_concurrency=32, capillary_rate_learning=True)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        client = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
        learning = learning_of(stack.settings)
        while not stop.wait(0.25):
            rate = learned_rates(client, DEFAULT_TENANT_ID, {}, learning)["add"].per_minute
            samples.append((time.time(), rate or 0.0))

    try:
        sim.reset(rateLimits={"add": add_limit})
        stack.worker()
        stack.worker()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.time()
        job_id = stack.api.submit(customers(items, "HLV" + uuid.uuid4().hex[:6])).get_json()["jobId"]
        wait_for(lambda: stack.api.get(f"/jobs/{job_id}").get_json()["createdCount"] >= items // 8, timeout=300,
                 what="an eighth of the job", interval=0.25)
        sim.configure(rateLimits={"add": add_limit / 2})
        halved_at = time.time()
        time.sleep(halved_seconds)
        sim.configure(rateLimits={"add": add_limit})
        restored_at = time.time()
        job = stack.api.wait(job_id, timeout=900, interval=0.5)
        stop.set()
        sampler.join()
        calls = [c for c in calls_since(sim, start) if c["endpoint"] == "add"]
    finally:
        stop.set()
        stack.close()
        sim.reset()
    followed = next((t - halved_at for t, rate in samples if t > halved_at and rate <= 1.1 * add_limit / 2), None)
    climbed = next((t - restored_at for t, rate in samples if t > restored_at and rate >= add_limit), None)
    late = [c for c in calls if halved_at + 30 <= c["t"] < restored_at]
    after = [c["t"] for c in calls if restored_at + 5 <= c["t"] < restored_at + 25 and c["status"] == 200]
    return {
        "followed": followed if followed is not None else float("nan"),
        "share_429_after_30s": sum(c["status"] == 429 for c in late) / max(1, len(late)),
        "climbed": climbed if climbed is not None else float("nan"),
        "restored_rate": len(after) / 20 * 60 / add_limit,
        "failures": job["failureCount"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--add-limit", type=float, default=600.0, help="calls a minute")
    parser.add_argument("--update-limit", type=float, default=3000.0, help="calls a minute")
    parser.add_argument("--halve-items", type=int, default=1200)
    parser.add_argument("--halved-seconds", type=float, default=40.0)
    args = parser.parse_args()
    limits = {"add": args.add_limit, "update": args.update_limit}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sim = Simulator(tmp_path)
        try:
            runs = {configured: split_limits(sim, tmp_path, limits, configured) for configured in (False, True)}
            half = halved(sim, tmp_path, args.add_limit, args.halve_items, args.halved_seconds)
        finally:
            sim.stop()
    print(f"simulator limits {limits} (per minute), 300 known + 300 new customers, one worker of 32 threads, "
          f"{os.cpu_count()} cores")
    print("limits      | 429 per write | adds / add limit | last update at (share of the adds' time) | failures")
    for configured, f in runs.items():
        print(f"{'configured' if configured else 'learned':11} | {f['share_429']:13.3f} | {f['add_rate']:16.2f} | "
              f"{f['updates_done']:5.2f} ({f['updates_seconds']:.1f} s of {f['adds_seconds']:.1f} s){'':14} | "
              f"{f['failures']:8.0f}")
    print(f"add limit halved mid-job ({args.halve_items} new customers, two workers, nothing configured): "
          f"the learned rate within 10% of it after {half['followed']:.1f} s; "
          f"{half['share_429_after_30s']:.3f} of the add calls 429 from 30 s after the change; "
          f"restored: back to the limit after {half['climbed']:.1f} s, adds at {half['restored_rate']:.2f} of it "
          f"from 5 to 25 s after; {half['failures']:.0f} failures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
