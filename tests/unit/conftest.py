"""The unit layer: plain functions, and the Lua scripts against a real Redis of its own (one
``redis-server`` for the session, emptied before each test)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import redis

from tests.helpers import RedisServer
from worker.store.jobstore import JobStore
from worker.store.lua_scripts import source


@pytest.fixture(scope="session")
def unit_redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("unit-redis")).start()
    yield server
    server.stop()


@pytest.fixture
def r(unit_redis_server: RedisServer) -> redis.Redis:
    client = redis.Redis.from_url(unit_redis_server.url, decode_responses=True)
    client.flushdb()
    return client


@pytest.fixture
def store(r: redis.Redis) -> JobStore:
    return JobStore(r, ttl_seconds=3600)


@pytest.fixture(autouse=True)
def runs_its_scripts(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test marked ``@pytest.mark.lua("name", ...)`` must run each of those scripts on the unit
    Redis: its script cache is emptied before the test, and each script must be in it after (redis-py
    loads a script on its first call), so a marker that names a script the test never runs fails."""
    marker = request.node.get_closest_marker("lua")
    if marker is None:
        yield
        return
    client: redis.Redis = request.getfixturevalue("r")
    client.script_flush()
    yield
    shas = [hashlib.sha1(source(name).encode()).hexdigest() for name in marker.args]
    loaded = client.script_exists(*shas)
    assert all(loaded), f"never ran: {[n for n, ok in zip(marker.args, loaded, strict=True) if not ok]}"
