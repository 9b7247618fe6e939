"""The Procfile, docker-compose.yml and `customer-upsert dev` describe and run the same processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from cli import procfile
from tests.conftest import TOKEN, free_port, settings_env, wait_for
from worker.queues import Queues

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
    unauthorised = requests.get(f"{web}/v2/integrations/customer/upsert/jobs", timeout=5)
    listed = requests.get(f"{web}/v2/integrations/customer/upsert/jobs", timeout=5,
                          headers={"Authorization": f"Bearer {TOKEN}"})

    assert unauthorised.status_code == 401
    assert listed.status_code == 200 and "jobs" in listed.json()


def test_the_client_commands_submit_follow_fetch_and_cancel(web, worker, sim, tmp_path):
    env = procfile.process_env({"UPSERT_URL": web, "UPSERT_API_TOKEN": TOKEN})

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True,
                              timeout=120, cwd=ROOT)

    submitted = cli("submit", str(ROOT / "examples" / "seed-batch.json"), "--wait")
    job_id = re.search(r"job ([0-9a-f]{32}) COMPLETED: total 2, created 1, updated 0, failed 1", submitted.stdout)
    assert submitted.returncode == 1 and job_id, submitted.stdout + submitted.stderr  # 1: an item failed
    status = json.loads(cli("status", job_id.group(1)).stdout)
    failed = cli("results", job_id.group(1), "--failed", "-o", str(tmp_path / "failed.ndjson"))
    resubmitted = json.loads(cli("submit", str(tmp_path / "failed.ndjson")).stdout)
    cancelled = json.loads(cli("cancel", resubmitted["jobId"]).stdout)
    missing = cli("status", "0" * 32)

    assert (status["state"], status["failureCount"]) == ("COMPLETED", 1)
    assert failed.returncode == 0 and len((tmp_path / "failed.ndjson").read_text().splitlines()) == 1
    assert resubmitted["totalCount"] == 1  # the failed export is a batch of its inputs
    assert cancelled["jobId"] == resubmitted["jobId"]
    assert missing.returncode == 2 and "HTTP 404" in missing.stderr


def test_dev_runs_the_whole_stack_and_the_example_job(redis_server, tmp_path):
    """What `make run` does, but exiting once the example job is printed."""
    env = procfile.process_env({
        "REDIS_URL": redis_server.url,
        "PORT": str(free_port()),
        "WORKER_CONCURRENCY": "4",
    })
    env.pop("UPSERT_API_TOKEN", None)
    env.pop("CAPILLARY_BASE_URL", None)
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "dev", "--submit", str(ROOT / "examples" / "seed-batch.json"),
         "--exit-after-submit"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "UPSERT_API_TOKEN=" in run.stdout
    assert re.search(r"job [0-9a-f]{32} COMPLETED: total 2, created \d, updated \d, failed 1", run.stdout), run.stdout
    assert '"action": "FAILED"' in run.stdout
    assert (tmp_path / ".dev" / "logs" / "worker.log").exists()
