"""Operating-condition figures: a small rate allowance, a cancelled job with chains, a fleet held to
``max_rps``, a broker outage.

Each figure is measured on a private stack (Redis, simulator, real Celery workers from the
Procfile's line) with default settings unless said otherwise, and printed beside its goal.

    .venv/bin/python bench/conditions.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers import RedisServer, Simulator, Stack, busiest_second, calls_since, customers, progress, wait_for


def tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def small_allowance(stack: Stack, sim: Simulator, items: int, rps: float) -> tuple[dict, int, float, float]:
    """(the job, customers created, seconds the calls took, seconds the allowance allows for them)."""
    start = time.time()
    job = stack.api.run(customers(items, tag("SLOW")), timeout=1200)
    calls = [c for c in calls_since(sim, start) if c["endpoint"] != "token"]
    took = max(c["t"] for c in calls) - min(c["t"] for c in calls)
    return job, len(sim.customers()), took, len(calls) / rps


def cancelled_chains(stack: Stack, items: int) -> tuple[float, dict]:
    """Seconds from cancelling a job of ``items`` (every three sharing a mobile) to its finishedAt."""
    elements = [{"profiles": [{"firstName": f"N{i}", "source": "INSTORE", "identifiers": [
        {"type": "mobile", "value": f"9176{uuid.uuid4().int % 10**3:03d}{i // 3:06d}"}]}]} for i in range(items)]
    job_id = stack.api.submit(elements).get_json()["jobId"]
    wait_for(lambda: progress(stack.api, job_id)["processedCount"] >= 200, timeout=120, what="200 items done")
    stack.api.delete(f"/jobs/{job_id}")
    cancelled = time.monotonic()
    job = stack.api.wait(job_id, timeout=120)
    return time.monotonic() - cancelled, job


def fleet(stack: Stack, sim: Simulator, items: int, rps: float) -> tuple[int, float]:
    """(the busiest second at the simulator, calls per second over the run) for a fleet of four."""
    for _ in range(4):
        stack.worker()
    start = time.time()
    stack.api.run(customers(items, tag("FLEET")), timeout=600)
    times = [c["t"] for c in calls_since(sim, start) if c["endpoint"] != "token"]
    return busiest_second(times), len(times) / (max(times) - min(times))


def broker_outage(stack: Stack, broker: RedisServer, items: int, seconds: float) -> tuple[dict, float]:
    """(the job, seconds from the broker's return to the job's end) with the broker down mid-job."""
    stack.worker()
    job_id = stack.api.submit(customers(items, tag("BRK"))).get_json()["jobId"]
    wait_for(lambda: progress(stack.api, job_id)["processedCount"] >= items // 5, timeout=120, what="a fifth")
    broker.stop()
    time.sleep(seconds)  # the outage's length is the figure's condition, not a wait for an event
    broker.start()
    back = time.monotonic()

    def finished():
        if stack.workers[-1].process.poll() is not None:  # as a supervisor would
            stack.worker()
        job = progress(stack.api, job_id)
        return job if job.get("finishedAt") else None

    job = wait_for(finished, timeout=600, what="the job after the outage", interval=0.5)
    return job, time.monotonic() - back


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allowance-items", type=int, default=60)
    parser.add_argument("--allowance-rps", type=float, default=2.0)
    parser.add_argument("--chain-items", type=int, default=3000)
    parser.add_argument("--fleet-items", type=int, default=200)
    parser.add_argument("--outage-seconds", type=float, default=20.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sim = Simulator(tmp_path)
        stacks: list[Stack] = []

        def stack(name: str, latency_ms: float = 20.0, **settings) -> Stack:
            (tmp_path / name).mkdir()
            made = Stack(tmp_path / name, sim, **settings)
            stacks.append(made)
            sim.reset(latencyMs=latency_ms)
            return made

        try:
            slow = stack("allowance", capillary_max_rps=args.allowance_rps, worker_concurrency=32)
            slow.worker()
            job, created, took, allowed = small_allowance(slow, sim, args.allowance_items, args.allowance_rps)
            chains = stack("chains", latency_ms=10, worker_concurrency=32)
            chains.worker()
            ended, chained = cancelled_chains(chains, args.chain_items)
            four = stack("fleet", latency_ms=5, capillary_max_rps=20.0, worker_concurrency=16)
            busiest, rate = fleet(four, sim, args.fleet_items, 20.0)
            (tmp_path / "broker").mkdir()
            broker = RedisServer(tmp_path / "broker").start()
            outage = stack("outage", latency_ms=10, broker_url=broker.url, worker_concurrency=32)
            out_job, resumed = broker_outage(outage, broker, 1500, args.outage_seconds)
            broker.stop()
        finally:
            for made in stacks:
                made.close()
            sim.stop()

    print(f"CAPILLARY_MAX_RPS={args.allowance_rps:g}, one worker x 32 threads, {args.allowance_items} new customers:")
    print(f"  failed {job['failureCount']}, created {created} (goal: 0 failed, {args.allowance_items} created)")
    print(f"  calls took {took:.1f} s, the allowance allows {allowed:.1f} s: {took / allowed:.2f} (goal 0.75-1.25)")
    print(f"{args.chain_items:,} items, every three sharing a mobile, cancelled after 200:")
    print(f"  finishedAt {ended:.2f} s after the cancel, processed {chained['processedCount']} of "
          f"{chained['totalCount']} (goal: set, all)")
    print(f"4 workers x 16 threads at CAPILLARY_MAX_RPS=20, {args.fleet_items} new customers:")
    print(f"  busiest second {busiest} calls (goal <= 20), {rate:.1f} calls/s over the run")
    print(f"Redis broker (apart from the job store) down {args.outage_seconds:g} s in a 1,500-item job:")
    print(f"  failed {out_job['failureCount']}, processed {out_job['processedCount']} (goal 0, 1500); "
          f"done {resumed:.1f} s after the broker returned")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
