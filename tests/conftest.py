"""Fixtures that start the real things (see tests/helpers.py): a private Redis, the simulator,
Celery workers, the API, and stacks of them for tests that kill or freeze workers."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from api.app import create_app
from tests.helpers import (
    RABBITMQ,
    ApiClient,
    RedisServer,
    Simulator,
    Stack,
    Worker,
    make_settings,
)
from worker.downstream.keys import rate_limit_prefix
from worker.settings import Settings

UNIT = Path(__file__).parent / "unit"


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--busy-loops", type=int, default=0, metavar="N",
        help="run N busy loops (one CPU each) beside the suite for its whole run, to find tests that only "
             "pass on an idle machine (`make test-loaded` runs two)",
    )


@pytest.fixture(scope="session", autouse=True)
def busy_loops(request) -> Iterator[None]:
    """Load the machine as a shared CI machine is loaded; stopped when the session ends."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(request.config.getoption("--busy-loops"))]
    yield
    for loop in loops:
        loop.kill()
        loop.wait()


def pytest_collection_modifyitems(items) -> None:
    """Every test outside tests/unit starts processes (Redis, the simulator, workers, gunicorn, a
    browser): mark it slow, so ``pytest -m "not slow"`` runs the fast unit layer alone."""
    for item in items:
        if UNIT not in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def simulator(tmp_path_factory) -> Iterator[Simulator]:
    sim = Simulator(tmp_path_factory.mktemp("sim"))
    yield sim
    sim.stop()


@pytest.fixture
def sim(simulator: Simulator) -> Simulator:
    """The shared simulator, emptied and with every fault off."""
    simulator.reset()
    return simulator


@pytest.fixture(scope="session")
def settings(redis_server: RedisServer, simulator: Simulator) -> Settings:
    return make_settings(redis_server.url, simulator.url)


@pytest.fixture(scope="session")
def worker(settings: Settings, tmp_path_factory) -> Iterator[Worker]:
    w = Worker(settings, tmp_path_factory.mktemp("worker") / "worker.log")
    yield w
    w.stop()


@pytest.fixture(scope="session")
def app(settings: Settings):
    return create_app(settings)


@pytest.fixture
def api(app, redis_server: RedisServer) -> ApiClient:
    """The shared stack's API. The rates the shared worker learned in earlier tests are forgotten first:
    each test meets the simulator (reset by ``sim``) as a downstream never seen."""
    client = redis.Redis.from_url(redis_server.url)
    stale = list(client.scan_iter(match=rate_limit_prefix("*") + ":*", count=1000))
    if stale:
        client.delete(*stale)
    return ApiClient(app)


@pytest.fixture
def make_stack(tmp_path, simulator):
    """Private stacks (Redis, API, workers on demand), closed after the test."""
    stacks: list[Stack] = []

    def make(**kwargs) -> Stack:
        path = tmp_path / f"stack{len(stacks)}"
        path.mkdir()
        stack = Stack(path, simulator, **kwargs)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


@pytest.fixture
def rabbitmq_vhost():
    """A vhost of our own on the machine's RabbitMQ, so no other consumer shares our queues."""
    vhost = "cu-test-" + uuid.uuid4().hex[:8]
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True)
    yield RABBITMQ + vhost
    subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)
