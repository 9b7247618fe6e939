"""The service's Redis scripts: each in its own file under ``worker/store/lua/``, whose header names its
``KEYS``, ``ARGV`` and reply.

A file is read once per process and registered with a client as a redis-py ``Script``, which
calls it by its SHA (``EVALSHA``) and loads it again after a Redis restart (``NOSCRIPT``). No
script is assembled from text at run time: what two scripts share is written out in both files
(tests/unit/worker/test_lua.py holds the copies equal).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import redis
from redis.commands.core import Script

LUA_DIR = Path(__file__).parent / "lua"


@cache
def source(name: str) -> str:
    """The text of ``worker/store/lua/<name>.lua``, read once per process."""
    return (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")


def register(client: redis.Redis, name: str) -> Script:
    """``worker/store/lua/<name>.lua`` as a ``Script`` of ``client``."""
    return client.register_script(source(name))
