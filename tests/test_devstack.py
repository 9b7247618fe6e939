"""`customer-upsert dev` as two developers run it on one machine: stacks that keep to themselves."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
import redis
import requests

from cli import procfile
from tests.helpers import JOBS, RedisServer, free_port, wait_for

#: What a developer's shell may have set that would tie a dev stack to something outside it.
UNSET = ("REDIS_URL", "BROKER_URL", "UPSERT_API_TOKEN", "CAPILLARY_BASE_URL", "CAPILLARY_TILL", "CAPILLARY_PASSWORD",
         "JOB_TTL_SECONDS", "PORT", "FLOWER_PORT", "SIMULATOR_PORT", "BIND_ADDRESS", "UPSERT_TENANTS_FILE")


class DevStack:
    """One `customer-upsert dev` process, started in ``folder`` (a checkout's working directory) on free ports."""

    def __init__(self, folder: Path, **env: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.out = folder / "dev.out"
        environ = procfile.process_env({"WORKER_CONCURRENCY": "4", **env})
        for name in UNSET:
            if name not in env:
                environ.pop(name, None)
        self.ports = {"api": free_port(), "flower": free_port(), "simulator": free_port()}
        with self.out.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "dev", "--port", str(self.ports["api"]),
                 "--flower-port", str(self.ports["flower"]), "--simulator-port", str(self.ports["simulator"])],
                cwd=folder, env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def ready(self) -> None:
        """Wait for the line a developer pastes; then ``url``, ``token`` and ``simulator`` are known."""
        def pasted():
            if self.process.poll() is not None:
                raise AssertionError(f"dev exited with {self.process.returncode}:\n{self.text()}")
            return re.search(r"^export UPSERT_URL=(\S+) UPSERT_API_TOKEN=(\S+)$", self.text(), re.M)

        found = wait_for(pasted, timeout=120, what=f"the dev stack in {self.folder} to be up", interval=0.25)
        self.url, self.token = found.group(1), found.group(2)
        self.simulator = re.search(r"^Simulator +(\S+)", self.text(), re.M).group(1)

    def submit(self, elements: list[dict]) -> str:
        response = requests.post(f"{self.url}{JOBS}/bulk", json=elements, timeout=30,
                                 headers={"Authorization": f"Bearer {self.token}"})
        assert response.status_code == 202, response.text
        return response.json()["jobId"]

    def job(self, job_id: str) -> dict:
        return requests.get(f"{self.url}{JOBS}/jobs/{job_id}", timeout=5,
                            headers={"Authorization": f"Bearer {self.token}"}).json()

    def simulator_mobiles(self) -> set[str]:
        customers = requests.get(f"{self.simulator}/__admin/customers", timeout=5).json()["customers"]
        return set(re.findall(r"9196\d+", str(customers)))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def mobiles(tag: str, n: int) -> list[str]:
    return [f"9196{tag}{i:03d}" for i in range(n)]


def customers(numbers: list[str]) -> list[dict]:
    return [{"profiles": [{"firstName": "Dev", "identifiers": [{"type": "mobile", "value": m}], "source": "INSTORE"}]}
            for m in numbers]


@pytest.fixture
def stacks():
    started: list[DevStack] = []
    yield started
    for stack in started:
        stack.stop()


def test_two_dev_stacks_from_two_checkouts_each_run_only_their_own_jobs(stacks, tmp_path):
    first, second = DevStack(tmp_path / "checkout-a"), DevStack(tmp_path / "checkout-b")
    stacks += [first, second]
    for stack in stacks:
        stack.ready()
    tag_a, tag_b = (str(uuid.uuid4().int)[:4] for _ in range(2))

    jobs = [(first, first.submit(customers(mobiles(tag_a, 6)))), (second, second.submit(customers(mobiles(tag_b, 6))))]
    done = [wait_for(lambda s=s, j=j: s.job(j)["finishedAt"] and s.job(j), timeout=60, what="the job to end")
            for s, j in jobs]

    assert [job["createdCount"] for job in done] == [6, 6]
    assert first.simulator_mobiles() == set(mobiles(tag_a, 6))
    assert second.simulator_mobiles() == set(mobiles(tag_b, 6))
    for stack in stacks:
        out = stack.text()
        assert "a private redis-server" in out or "a private server" in out, out
        assert re.search(r"^Redis +redis://127\.0\.0\.1:(\d+)/0", out, re.M), out
        assert (stack.folder / ".dev" / "logs" / "worker.log").exists()
    redis_ports = {re.search(r"^Redis +redis://127\.0\.0\.1:(\d+)", s.text(), re.M).group(1) for s in stacks}
    assert len(redis_ports) == 2
    # The API and Flower listen on this machine only.
    assert all(f"http://127.0.0.1:{s.ports['api']}" == s.url for s in stacks)
    ours = {port for s in stacks for port in (s.ports["api"], s.ports["flower"])}
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port in ours}
    assert {port for _, port in listening} == ours and {ip for ip, _ in listening} == {"127.0.0.1"}, listening


def test_a_second_stack_on_a_shared_redis_database_refuses_and_says_how_to_separate(stacks, tmp_path):
    (tmp_path / "redis").mkdir()
    shared = RedisServer(tmp_path / "redis").start()
    try:
        url = f"redis://127.0.0.1:{shared.port}/3"
        database = redis.Redis(port=shared.port, db=3)
        # What an earlier dev run left: a job in the tenant's list, the fleet's counts.
        database.zadd("cu:tenant:default:jobs", {"0" * 32: 1})
        database.hset("cu:metrics", '["upsert_jobs_finished_total","COMPLETED"]', 7)
        first = DevStack(tmp_path / "checkout-a", REDIS_URL=url)
        stacks.append(first)
        first.ready()
        jobs = requests.get(f"{first.url}{JOBS}/jobs", headers={"Authorization": f"Bearer {first.token}"},
                            timeout=5).json()["jobs"]
        metrics = requests.get(f"{first.url}/metrics", timeout=5).text
        second = DevStack(tmp_path / "checkout-b", REDIS_URL=url)
        stacks.append(second)
        second.process.wait(60)

        assert second.process.returncode == 2, second.text()
        message = second.text()
        assert f"another dev stack (pid {first.process.pid} on" in message and str(tmp_path / "checkout-a") in message
        assert "Unset REDIS_URL" in message and f"REDIS_URL=redis://127.0.0.1:{shared.port}/14" in message
        assert "Starting" not in message  # nothing of it was started
        assert first.process.poll() is None
        # The first started on a fresh job list and fresh metrics, and said so.
        assert jobs == [] and 'upsert_jobs_finished_total{state="COMPLETED"} 7' not in metrics
        assert "keys of earlier runs removed" in first.text()
    finally:
        for stack in stacks:
            stack.stop()
        shared.stop()
