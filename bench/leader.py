"""The leader's ceiling: how many items a second one dispatching worker can hand out, with nothing else
in the way (items end the moment they are handed out, as with a downstream that answers at once and
workers without limit).

The real dispatcher (worker/dispatch/scheduler.py) runs its own loop against a private Redis, publishing real
Celery messages to the Redis broker; a stand-in for the fleet frees every slot as soon as it is
taken (it removes the leases and empties the broker's queue, the work a fleet's items would do),
so the only limit left is the leader's own: its CPU, and the Redis commands of its ticks. Measured
for fleets of several sizes (threads of all workers together), since each tick reads the leases in
flight.

    .venv/bin/python bench/leader.py [--seconds 10] [--fleets 64,1024,8192]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from tests.helpers import RedisServer
from worker.celery_app import create_celery
from worker.dispatch.leases import LeaseKeeper
from worker.dispatch.publishing import publish
from worker.dispatch.scheduler import Dispatcher
from worker.queues import Queues
from worker.settings import Settings, Tenant
from worker.store import keys
from worker.store.jobstore import JobStore

#: A day of Salesforce Bulk 2.0's allowance, the scale our largest users push.
ITEMS_PER_DAY = 150_000_000


def make_jobs(store: JobStore, tenants: list[str], items: int, jobs_per_tenant: int) -> list[str]:
    """Jobs enough to keep the leader busy for the whole run: they must not run out (a job whose items
    have all been handed out and never end would be swept, which is not what is measured)."""
    element = {"profiles": [{"identifiers": [{"type": "externalId", "value": "E"}], "source": "INSTORE"}]}
    ids = []
    per_job = items // (len(tenants) * jobs_per_tenant)
    for tenant in tenants:
        for _ in range(jobs_per_tenant):
            job = store.new_job(tenant)
            for _ in range(per_job):
                job.add(element)
            ids.append(job.commit(skip_change_identifier=False, next_index={}))
    return ids


def free_slots(url: str, stop) -> None:
    """The fleet, as fast as can be: every item handed out ends at once. A process of its own, so that
    it takes nothing of the leader's interpreter."""
    r = redis.Redis.from_url(url, decode_responses=True)
    while not stop.is_set():
        members = r.zrange(keys.INFLIGHT, 0, -1)
        pipe = r.pipeline(transaction=False)
        if members:
            pipe.zrem(keys.INFLIGHT, *members)
        pipe.delete(Queues.ITEMS)
        pipe.execute()
        stop.wait(0.01)


def dispatched(r: redis.Redis, job_ids: list[str]) -> int:
    pipe = r.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(keys.job(job_id), "cursor")
    return sum(int(c or 0) for c in pipe.execute())


def measure(tmp: Path, fleet: int, seconds: float, items: int) -> dict:
    server = RedisServer(tmp).start()
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        tenants = ["t1", "t2"]
        store = JobStore(r)
        job_ids = make_jobs(store, tenants, items, jobs_per_tenant=2)
        settings = Settings(redis_url=server.url, upsert_api_token="bench")
        app = create_celery(settings)
        workers = max(1, fleet // 32)
        keepers = [LeaseKeeper(r, worker=f"bench-{n}", slots=fleet // workers, lease_seconds=20)
                   for n in range(workers)]
        for keeper in keepers:
            keeper.renew_once()
        dispatcher = Dispatcher(r, settings, {t: Tenant(id=t, token=t) for t in tenants}, worker="bench-leader",
                                publish=lambda deliveries: publish(app, deliveries), end_lapsed=lambda _lapsed: None,
                                end_job=lambda _job, _tenant: None)
        stop = multiprocessing.Event()
        fleet_process = multiprocessing.Process(target=free_slots, args=(server.url, stop), daemon=True)
        leader = threading.Thread(target=dispatcher.run, daemon=True)
        fleet_process.start()
        leader.start()
        time.sleep(1.5)  # the first slow round, the jobs learned, the broker connection made
        clock = time.pthread_getcpuclockid(leader.ident)
        before_items, before_cpu = dispatched(r, job_ids), time.clock_gettime(clock)
        before_redis = r.info("cpu")
        started = time.monotonic()
        deadline = started + seconds
        while time.monotonic() < deadline:
            for keeper in keepers:  # the fleet's heartbeats
                keeper.renew_once()
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        items_done = dispatched(r, job_ids) - before_items
        leader_cpu = time.clock_gettime(clock) - before_cpu
        after_redis = r.info("cpu")
        dispatcher.stop()
        stop.set()
        leader.join(5)
        fleet_process.join(5)
        assert items_done < items * 0.9, "the jobs ran out: give --items more"
        redis_cpu = sum(after_redis[k] - before_redis[k] for k in ("used_cpu_user", "used_cpu_sys"))
        return {"fleet": fleet, "rate": items_done / elapsed, "leader_cpu_ms": 1e6 * leader_cpu / max(items_done, 1),
                "redis_cpu_us": 1e6 * redis_cpu / max(items_done, 1), "leader_busy": leader_cpu / elapsed}
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fleets", default="64,1024,8192", help="threads of the whole fleet, comma-separated")
    parser.add_argument("--items", type=int, default=600_000, help="items waiting in the jobs")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, fleet in enumerate(int(f) for f in args.fleets.split(",")):
            (Path(tmp) / str(n)).mkdir()
            results.append(measure(Path(tmp) / str(n), fleet, args.seconds, args.items))
    average = ITEMS_PER_DAY / 86400
    print("one leader, items ending as soon as handed out, real Celery messages to a Redis broker")
    print(f"{'fleet threads':>13}  {'items/s':>8}  {'leader CPU/1k items':>19}  {'leader busy':>11}  "
          f"{'Redis CPU/item':>14}  {'x 150 M/day':>11}")
    for x in results:
        print(f"{x['fleet']:>13,}  {x['rate']:>8,.0f}  {x['leader_cpu_ms']:>16.1f} ms  {x['leader_busy']:>10.0%}  "
              f"{x['redis_cpu_us']:>11.1f} us  {x['rate'] / average:>10.1f}x")
    print(f"150 M items a day is {average:,.0f} items/s on average")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
