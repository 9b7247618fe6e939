"""Throughput of the whole service against a baseline measured in the same run.

Baseline: the same upsert logic (worker/upsert.py) called directly from a thread pool of the same
size, with no API, broker, job store or Celery in the way: what the simulator and the client alone
allow on this machine right now. Service: the same number of new customers submitted as one job
to the API, processed by one real Celery worker process. The ratio service/baseline is the figure
to watch: it is the cost of everything the service adds (durability, accounting, retries), and it
does not depend on how fast or loaded this machine happens to be.

    .venv/bin/python bench/throughput.py [--items 2000] [--latency-ms 20] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.app import create_app
from tests.helpers import ApiClient, RedisServer, Simulator, Worker, make_settings
from worker.client import CapillaryClient
from worker.upsert import upsert_customer


def batch(n: int, tag: str) -> list[dict]:
    return [{"profiles": [{"firstName": "B", "identifiers": [
        {"type": "externalId", "value": f"{tag}-{i}"}, {"type": "mobile", "value": f"91{60000000 + i:08d}"}],
        "source": "WEB_ENGAGE", "accountId": "bench"}]} for i in range(n)]


def direct(sim: Simulator, settings, elements: list[dict], concurrency: int) -> float:
    client = CapillaryClient(settings.default_tenant(), timeout=10, pool_size=concurrency)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(lambda e: upsert_customer(client, e, skip_change_identifier=False,
                                                           priority=settings.identifier_priority), elements))
    elapsed = time.perf_counter() - start
    assert all(not o.errors for o in outcomes)
    return len(elements) / elapsed


def service(api: ApiClient, elements: list[dict]) -> float:
    start = time.perf_counter()
    job = api.run(elements, timeout=1800)
    elapsed = time.perf_counter() - start
    assert job["failureCount"] == 0, job
    return len(elements) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="simulated downstream latency")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sim = Simulator(tmp_path)
        redis_server = RedisServer(tmp_path).start()
        settings = make_settings(redis_server.url, sim.url, worker_concurrency=args.concurrency)
        worker = Worker(settings, tmp_path / "worker.log")
        try:
            sim.reset(latencyMs=args.latency_ms, latencyJitterMs=0)
            baseline = direct(sim, settings, batch(args.items, "D" + uuid.uuid4().hex[:6]), args.concurrency)
            sim.reset(latencyMs=args.latency_ms, latencyJitterMs=0)
            through = service(ApiClient(create_app(settings)), batch(args.items, "S" + uuid.uuid4().hex[:6]))
        finally:
            worker.stop()
            redis_server.stop()
            sim.stop()
    print(f"items={args.items} latency={args.latency_ms:g}ms concurrency={args.concurrency}")
    print(f"baseline (direct calls, no service): {baseline:8.1f} items/s")
    print(f"service (API + Redis + 1 worker):    {through:8.1f} items/s")
    print(f"ratio service/baseline:              {through / baseline:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
