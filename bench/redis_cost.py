"""What an item costs Redis: commands (every command the server executes, script internals and the
broker included, and apart from those the commands clients send: round trips), and bytes held while a
job runs, by kind of key.

Commands: one job of ``--items`` new customers on a private stack (Redis, the simulator at
``--latency-ms``, one worker process of ``--concurrency`` threads from the Procfile's line), with a
client polling the job once a second, as a patient client does. The server's own count (INFO
commandstats, reset before the job) is the honest figure: it is what Redis's one core executes.
Beside it, read from MONITOR for the same job: the commands clients sent (each command of a
pipeline counted, a script call counted once: an upper bound on round trips) and what they were, and
the commands scripts ran.

Bytes: a job of ``--memory-items`` customers sent as NDJSON (a realistic 355 bytes a line) on a
stack of its own; Redis's ``used_memory`` is sampled while the job runs, and its peak above the
idle store is divided by the items; then the job is cancelled. ``MEMORY USAGE`` of each kind of
key, per item, tells where the bytes are.

    .venv/bin/python bench/redis_cost.py [--items 3000] [--latency-ms 20] [--memory-items 100000]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from tests.helpers import Simulator, Stack, customers, ndjson_file, post_ndjson, progress, wait_for


class Monitor:
    """MONITOR on a connection of its own: every command, with whether a script ran it."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.by_client: Counter[str] = Counter()
        self.by_script: Counter[str] = Counter()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        with self.client.monitor() as monitor:
            self._ready.set()
            for command in monitor.listen():
                if self._stop.is_set():
                    return
                name = command["command"].split(" ", 1)[0].upper()
                (self.by_script if command.get("client_type") == "lua" else self.by_client)[name] += 1

    def stop(self) -> None:
        """Stop counting: a command from another connection wakes the listener up to see it."""
        self._stop.set()
        kwargs = self.client.connection_pool.connection_kwargs
        redis.Redis(host=kwargs["host"], port=kwargs["port"]).ping()
        self._thread.join(5)


def commands_per_item(stack: Stack, items: int, first_mobile: int = 0) -> dict:
    store = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    wait_for(lambda: store.zcard("cu:fleet") or store.keys("*fleet*"), timeout=30, what="the worker's heartbeat")
    monitor = Monitor(stack.redis.url)
    store.config_resetstat()
    started = time.monotonic()
    response = stack.api.submit(customers(items, "R" + uuid.uuid4().hex[:6], first_mobile))
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["jobId"]
    polls = 0
    while True:  # the client: once a second
        polls += 1
        job = progress(stack.api, job_id)
        if job.get("finishedAt"):
            break
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started) % 1.0))
    elapsed = time.monotonic() - started
    stats = store.info("commandstats")
    monitor.stop()
    assert job["failureCount"] == 0, job
    executed = Counter({name.removeprefix("cmdstat_").upper(): int(v["calls"]) for name, v in stats.items()})
    return {"items": items, "seconds": elapsed, "polls": polls, "executed": executed,
            "by_client": monitor.by_client, "by_script": monitor.by_script}


KINDS = (("input chunks", re.compile(r":in:\d+$")), ("result chunks", re.compile(r":res:\d+$")),
         ("identifier locks", re.compile(r":lock:")), ("leases", re.compile(r"inflight")),
         ("broker", re.compile(r"^(celery|_kombu|unacked)")))


def bytes_per_item(stack: Stack, tmp: Path, items: int) -> dict:
    store = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    wait_for(lambda: store.zcard("cu:fleet") or store.keys("*fleet*"), timeout=30, what="the worker's heartbeat")
    baseline = int(store.info("memory")["used_memory"])
    path = ndjson_file(tmp / "memory.ndjson", items)
    started = time.monotonic()
    response = post_ndjson(stack.api.client.application, path, stack.settings.upsert_api_token)
    assert response.status_code == 202, response.get_json()
    accepted = time.monotonic() - started
    job_id = response.get_json()["jobId"]
    peak = 0

    def running_a_while() -> bool:
        nonlocal peak
        peak = max(peak, int(store.info("memory")["used_memory"]))
        return progress(stack.api, job_id)["processedCount"] >= min(2000, items // 2)

    wait_for(running_a_while, timeout=600, what="2,000 items done", interval=0.5)
    by_kind: Counter[str] = Counter()
    for key in store.scan_iter(count=1000):
        for kind, pattern in KINDS:
            if pattern.search(key):
                by_kind[kind] += int(store.memory_usage(key, samples=0) or 0)
                break
        else:
            by_kind["other"] += int(store.memory_usage(key, samples=0) or 0)
    done = progress(stack.api, job_id)["processedCount"]
    result_chunks = max(1, done // 1000)
    stack.api.delete(f"/jobs/{job_id}")
    stack.api.wait(job_id, timeout=300)
    return {"items": items, "payload": path.stat().st_size / items, "accepted": accepted,
            "per_item": (peak - baseline) / items, "by_kind": by_kind, "done": done,
            "result_chunks": result_chunks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--memory-items", type=int, default=100_000, help="0 skips the bytes part")
    parser.add_argument("--rates", choices=("learned", "configured"), default="learned",
                        help="learned: the default, CAPILLARY_RATE_LEARNING on; configured: off, no limit set")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sim = Simulator(tmp_path)
        sim.reset(latencyMs=args.latency_ms)
        stacks: list[Stack] = []
        try:
            for name in ("commands", "memory"):  # a stack each, so neither figure counts the other's job
                (tmp_path / name).mkdir()
                stacks.append(Stack(tmp_path / name, sim, worker_concurrency=args.concurrency,
                                    max_items_per_job=max(args.memory_items, 100_000),
                                    capillary_rate_learning=args.rates == "learned"))
                stacks[-1].worker()
            # The first job on a fresh store learns the tenant's rates from their slow start; the next
            # finds them learned (they last CAPILLARY_RATE_MEMORY_SECONDS unused), as a tenant's jobs do.
            costs = [("first job, rates learned from a fresh store", commands_per_item(stacks[0], args.items)),
                     ("next job, rates already learned",
                      commands_per_item(stacks[0], args.items, first_mobile=args.items))]
            memory = bytes_per_item(stacks[1], tmp_path, args.memory_items) if args.memory_items else None
        finally:
            for made in stacks:
                made.close()
            sim.stop()

    print(f"{args.items} new customers a job, downstream latency {args.latency_ms:g} ms, one worker x "
          f"{args.concurrency} threads, {os.cpu_count()} cores, rates {args.rates}, a client polling once a second")
    for title, cost in costs:
        n = cost["items"]
        executed, by_client, by_script = cost["executed"], cost["by_client"], cost["by_script"]
        # MONITOR's own command is not the service's.
        total = sum(executed.values()) - executed["MONITOR"] - executed["CONFIG"]
        sent = sum(by_client.values())
        print(f"{title}: {cost['seconds']:.1f} s ({cost['polls']} polls)")
        print(f"  Redis commands per item (executed by the server, scripts' and broker's included): {total / n:5.2f}"
              "   (goal <= 6)")
        print(f"  commands sent by clients per item (a script call is one; a pipeline's apart): {sent / n:5.2f}")
        print("  sent by clients, per item:  " + ", ".join(f"{k} {v / n:.2f}" for k, v in by_client.most_common(12)))
        print("  run by scripts, per item:   " + ", ".join(f"{k} {v / n:.2f}" for k, v in by_script.most_common(12)))
    if memory is not None:
        m = memory["items"]
        print(f"{m:,} customers as NDJSON ({memory['payload']:.0f} B a line), accepted in {memory['accepted']:.1f} s")
        print(f"Redis bytes per item while it runs: {memory['per_item']:5.0f} B   (goal <= 300 B, and below the "
              f"payload's {memory['payload']:.0f} B)")
        kinds = memory["by_kind"]
        print("by kind of key, per item of the job: " + ", ".join(
            f"{kind} {size / m:.0f} B" for kind, size in kinds.most_common() if kind != "result chunks")
            + f"; results {kinds['result chunks'] / max(1, memory['done']):.0f} B per finished item")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
