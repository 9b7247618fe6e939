"""The unit layer: plain functions, and the Lua scripts against a real Redis of its own (one
``redis-server`` for the session, emptied before each test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.helpers import RedisServer
from worker.jobstore import JobStore


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
