"""One way to open the job store's Redis, whether ``REDIS_URL`` names a server or Redis Sentinel.

``REDIS_URL`` takes the form Celery documents for its broker, so one value serves both:

* ``redis://[:password@]host:port/db``: one server;
* ``sentinel://[:password@]host:26379/db;sentinel://host2:26379``: the Sentinels watching a primary
  named by ``REDIS_SENTINEL_MASTER``. The password (if any) is the primary's; the database comes
  from the first address that names one.

A Sentinel-backed client asks the Sentinels for the primary's address whenever it opens a
connection, and redis-py drops every connection to an address that is no longer the primary's, so
after a failover the next command reaches the new primary: the store's callers ride the failover
out as they ride out a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel"


@dataclass(frozen=True)
class SentinelAddress:
    hosts: tuple[tuple[str, int], ...]
    password: str | None
    db: int


def is_sentinel_url(url: str) -> bool:
    return url.strip().lower().startswith(SENTINEL_SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelAddress:
    """The Sentinels, the primary's password and the database of a ``sentinel://`` URL (Celery's form:
    several addresses separated by ``;``). ValueError names what is wrong."""
    hosts: list[tuple[str, int]] = []
    password: str | None = None
    db: int | None = None
    for part in (p.strip() for p in url.split(";")):
        if not part:
            continue
        split = urlsplit(part)
        if split.scheme.lower() != SENTINEL_SCHEME or not split.hostname:
            raise ValueError(f"{part!r} is not a sentinel://host:port address")
        try:
            port = split.port or 26379
        except ValueError:
            raise ValueError(f"{part!r} has no valid port") from None
        hosts.append((split.hostname, port))
        if split.password and password is None:
            password = unquote(split.password)
        path = split.path.strip("/")
        if path and db is None:
            if not path.isdigit():
                raise ValueError(f"{part!r}: the database must be a number")
            db = int(path)
    if not hosts:
        raise ValueError("no Sentinel address")
    return SentinelAddress(tuple(hosts), password, db or 0)


def connect(url: str, *, sentinel_master: str = "", max_connections: int = 64, **options) -> redis.Redis:
    """A client of the primary at ``url`` (see the module's docstring), answers decoded as text.

    ``options`` are redis-py connection options (timeouts, keepalive, health checks). A plain URL
    gets a blocking pool: a thread waits for a free connection instead of failing. redis-py has no
    blocking Sentinel pool, so a Sentinel-backed client's pool is unbounded; the process's threads
    bound how many connections it opens.
    """
    if not is_sentinel_url(url):
        pool = redis.BlockingConnectionPool.from_url(url, decode_responses=True, max_connections=max_connections,
                                                     timeout=30, **options)
        return redis.Redis(connection_pool=pool)
    if not sentinel_master:
        raise ValueError("a sentinel:// REDIS_URL needs REDIS_SENTINEL_MASTER, the name of the primary")
    address = parse_sentinel_url(url)
    # The Sentinels themselves answer at once or not at all: short timeouts, so that a dead one is
    # passed over quickly for the next.
    sentinel_options = {"socket_timeout": 2, "socket_connect_timeout": 2}
    sentinel = Sentinel(list(address.hosts), sentinel_kwargs=sentinel_options)
    return sentinel.master_for(sentinel_master, password=address.password, db=address.db, decode_responses=True,
                               **options)
