"""The Procfile, docker-compose.yml and `customer-upsert dev` describe and run the same processes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import requests
import yaml

from api import procfile
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


def test_the_procfile_web_line_serves_the_api(settings, tmp_path):
    port = free_port()
    env = settings_env(settings) | {"PORT": str(port)}
    with (tmp_path / "web.log").open("wb") as log:
        web = procfile.start("web", env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).ok, timeout=60,
                     what="gunicorn from the Procfile")
            unauthorised = requests.get(f"http://127.0.0.1:{port}/v2/integrations/customer/upsert/jobs", timeout=5)
            listed = requests.get(f"http://127.0.0.1:{port}/v2/integrations/customer/upsert/jobs", timeout=5,
                                  headers={"Authorization": f"Bearer {TOKEN}"})
        finally:
            procfile.stop(web)
    assert unauthorised.status_code == 401
    assert listed.status_code == 200 and "jobs" in listed.json()


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
        [sys.executable, "-m", "api.cli", "dev", "--submit", str(ROOT / "examples" / "seed-batch.json"),
         "--exit-after-submit"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "UPSERT_API_TOKEN=" in run.stdout
    assert re.search(r"job [0-9a-f]{32} COMPLETED: total 2, created \d, updated \d, failed 1", run.stdout), run.stdout
    assert '"action": "FAILED"' in run.stdout
    assert (tmp_path / ".dev" / "logs" / "worker.log").exists()
