"""The Procfile, docker-compose.yml and `customer-upsert dev` describe and run the same processes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import requests
import yaml

from cli import procfile
from tests.helpers import JOBS, TOKEN, RedisServer, free_port, settings_env, wait_for
from worker.queues import Queues
from worker.store import keys as store_keys

ROOT = Path(__file__).resolve().parents[1]
#: Procfile process -> compose service. Compose calls the web process by its role.
COMPOSE_NAME = {"web": "api", "worker": "worker", "flower": "flower", "simulator": "simulator"}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_and_procfile_name_the_same_processes_and_commands():
    commands = procfile.procfile_commands()
    services = compose()["services"]

    assert set(commands) == set(COMPOSE_NAME)
    assert set(services) == set(COMPOSE_NAME.values()) | {"redis"}
    for process, command in commands.items():
        assert services[COMPOSE_NAME[process]]["command"] == command, process


def test_compose_keeps_redis_on_disk_and_builds_one_image_for_api_and_worker():
    services = compose()["services"]

    assert "--appendonly yes" in services["redis"]["command"]
    assert services["api"]["image"] == services["worker"]["image"] == services["flower"]["image"]
    assert services["api"]["build"] == services["worker"]["build"] == "."


def test_the_worker_consumes_every_queue_the_code_sends_to():
    worker_line = procfile.procfile_commands()["worker"]

    queues = re.search(r"--queues (\S+)", worker_line).group(1).split(",")
    assert sorted(queues) == sorted(Queues.all())


@pytest.fixture
def web(settings, tmp_path):
    """The API as the Procfile's `web` line starts it (gunicorn), on the session's Redis."""
    port = free_port()
    env = settings_env(settings) | {"PORT": str(port)}
    with (tmp_path / "web.log").open("wb") as log:
        process = procfile.start("web", env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: requests.get(url + "/readyz", timeout=1).ok, timeout=60, what="gunicorn from the Procfile")
            yield url
        finally:
            procfile.stop(process)


def test_the_procfile_web_line_serves_the_api(web):
    unauthorised = requests.get(f"{web}{JOBS}/jobs", timeout=5)
    listed = requests.get(f"{web}{JOBS}/jobs", timeout=5,
                          headers={"Authorization": f"Bearer {TOKEN}"})

    assert unauthorised.status_code == 401
    assert listed.status_code == 200 and "jobs" in listed.json()


@pytest.fixture
def redis_of_its_own(tmp_path):
    """A Redis no other test's worker listens to: only dev's own worker can do dev's job."""
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_dev_runs_the_whole_stack_and_the_example_job(redis_of_its_own, tmp_path):
    """What `make run` does, but exiting once the example job is printed; on an existing Redis whose
    URL names no database, dev keeps to database 15 and keeps jobs an hour."""
    redis_server = redis_of_its_own
    env = procfile.process_env({
        "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}",
        "PORT": str(free_port()),
        "WORKER_CONCURRENCY": "4",
    })
    for name in ("UPSERT_API_TOKEN", "CAPILLARY_BASE_URL", "JOB_TTL_SECONDS"):
        env.pop(name, None)
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "dev", "--submit", str(ROOT / "examples" / "seed-batch.json"),
         "--exit-after-submit"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    lines = run.stdout.splitlines()
    job_id = re.search(r"job ([0-9a-f]{32}) COMPLETED: total 2, created 1, updated 0, failed 1, cancelled 0",
                       run.stdout)
    dev_db = redis.Redis(port=redis_server.port, db=15)
    keys = list(dev_db.scan_iter(store_keys.job(job_id.group(1)) + "*")) if job_id else []

    assert run.returncode == 0, run.stdout + run.stderr
    assert job_id, run.stdout
    assert re.fullmatch(r"export UPSERT_URL=http://127.0.0.1:\d+ UPSERT_API_TOKEN=\S+", lines[-1])  # the token last
    assert len(lines) < 25, run.stdout  # a summary, not the job's JSON
    assert re.search(r"^  #0 +CREATED +customer \d+$", run.stdout, re.M), run.stdout
    failed = lines.index(next(line for line in lines if line.startswith("  #1 ")))
    assert "FAILED" in lines[failed] and "[1].profiles[0].source" in lines[failed]
    assert "the seed's second example has no source" in lines[failed + 1]
    assert f"redis://127.0.0.1:{redis_server.port}/15" in run.stdout
    assert keys and all(0 < dev_db.ttl(key) <= 3600 for key in keys)
    assert not redis.Redis(port=redis_server.port, db=0).exists(store_keys.job(job_id.group(1)))
    assert (tmp_path / ".dev" / "logs" / "worker.log").exists()


_COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def interpolate_compose(text: str, env: dict[str, str]) -> str:
    """Compose's own ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` substitution, for machines
    without the compose plugin: a required variable that is unset or empty stops it with compose's message."""
    def substitute(match: re.Match) -> str:
        name, kind, word = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name, "")
        if kind == "?" and not value:
            raise ValueError(f"required variable {name} is missing a value: {word}")
        return value or (word if kind == "-" else "")
    return _COMPOSE_VARIABLE.sub(substitute, text)


def _compose_config(env: dict[str, str]) -> tuple[bool, str]:
    """``docker compose config`` when the compose plugin is installed, else the same substitution here."""
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode == 0:
        done = subprocess.run(["docker", "compose", "config"], cwd=ROOT, env=env, capture_output=True, text=True)
        return done.returncode == 0, done.stdout + done.stderr
    try:
        return True, interpolate_compose((ROOT / "docker-compose.yml").read_text(), env)
    except ValueError as exc:
        return False, str(exc)


def test_compose_refuses_to_start_flower_without_basic_auth():
    base = {"PATH": "/usr/bin:/bin", "UPSERT_API_TOKEN": "a-token"}

    refused, message = _compose_config(base)
    accepted, config = _compose_config(base | {"FLOWER_BASIC_AUTH": "ops:secret"})

    assert not refused and "FLOWER_BASIC_AUTH" in message
    assert accepted, config
    assert "ops:secret" in config
