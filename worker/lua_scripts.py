"""The service's Redis scripts: each in its own file under the ``lua/`` folder of the part that runs it
(``worker/store/lua/``: the job store, dispatch and identifier locks; ``worker/downstream/lua/``: the
rate limiter), whose header names its ``KEYS``, ``ARGV`` and reply. A script's name is its file's
name, unique across the folders.

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

LUA_DIRS = (Path(__file__).parent / "store" / "lua", Path(__file__).parent / "downstream" / "lua")


def path(name: str) -> Path:
    """The file of the script ``name``."""
    for folder in LUA_DIRS:
        candidate = folder / f"{name}.lua"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no Redis script {name}.lua in {', '.join(str(d) for d in LUA_DIRS)}")


@cache
def source(name: str) -> str:
    """The text of the script ``name``, read once per process."""
    return path(name).read_text(encoding="utf-8")


def register(client: redis.Redis, name: str) -> Script:
    """The script ``name`` as a ``Script`` of ``client``."""
    return client.register_script(source(name))
