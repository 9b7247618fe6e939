"""Typed settings: the only place that reads environment variables.

Every process (web, worker, the command line) builds one :class:`Settings` with
:meth:`Settings.from_env` at start-up and hands it down; nothing else looks at ``os.environ``.
Tests build ``Settings(...)`` directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from worker.redis_connection import is_sentinel_url, parse_sentinel_url

DEFAULT_TENANT_ID = "default"

#: The downstream endpoints we call, by the names used in ``CAPILLARY_RATE_LIMITS`` and metrics.
ENDPOINTS = ("lookup", "add", "update", "changeIdentifier")


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Tenant:
    """One client of the service: who may submit, and where and how their profiles go.

    Credentials live here and in the process environment only; queue messages carry the
    tenant id, never these values.
    """

    id: str
    token: str = field(repr=False)
    base_url: str = "http://127.0.0.1:8100"
    till: str = ""
    password: str = field(default="", repr=False)
    oauth_key: str = ""
    oauth_secret: str = field(default="", repr=False)
    max_rps: float = 0.0
    rate_limits: Mapping[str, float] = field(default_factory=dict)  # requests per minute
    webhook_secret: str = field(default="", repr=False)
    #: Hosts a job's callbackUrl may point at; none: callbacks are refused.
    callback_hosts: tuple[str, ...] = ()
    #: Tasks of this tenant queued or running at once, all its jobs together (each runs one item at a
    #: time, so this bounds its downstream calls at once); 0: no cap beyond its fair share (see
    #: worker/dispatch/scheduler.py).
    max_concurrency: int = 0
    #: Quotas (api/quotas.py): items accepted and not yet ended, jobs not yet ended, items accepted
    #: in the last 24 hours; 0: no limit.
    max_pending_items: int = 0
    max_concurrent_jobs: int = 0
    max_items_per_day: int = 0


@dataclass(frozen=True)
class Settings:
    #: A server (``redis://``), or the Sentinels of a primary (``sentinel://h:26379;sentinel://h2:26379``,
    #: Celery's form) named by ``redis_sentinel_master`` (worker/redis_connection.py).
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_sentinel_master: str = ""
    broker_url: str = ""  # empty: the broker is REDIS_URL
    #: A dispatched item's lease (worker/dispatch/scheduler.py): its worker renews it every quarter of this;
    #: once it lapses the item is handed out again, so a dead worker's items run again this soon.
    item_lease_seconds: float = 20.0
    #: Tasks of one job queued or running at once; 0: as many as the fleet can take.
    job_window: int = 0
    #: Tasks of one tenant queued or running at once, for tenants that set no max_concurrency;
    #: 0: no cap beyond the fair share.
    tenant_max_concurrency: int = 0
    #: Quotas for tenants that set none (0: no limit).
    tenant_max_pending_items: int = 1_000_000
    tenant_max_concurrent_jobs: int = 50
    tenant_max_items_per_day: int = 20_000_000
    capillary_base_url: str = "http://127.0.0.1:8100"
    capillary_till: str = ""
    capillary_password: str = field(default="", repr=False)
    capillary_oauth_key: str = ""
    capillary_oauth_secret: str = field(default="", repr=False)
    capillary_max_rps: float = 0.0
    capillary_rate_limits: Mapping[str, float] = field(default_factory=dict)
    #: Each endpoint's rate is learned from the downstream's 429s (worker/downstream/ratelimit.py); off: the
    #: configured limits are held as they are and other endpoints are not limited.
    #: Learn each endpoint's rate from the downstream's 429s (worker/downstream/ratelimit.py); off by
    #: default for now: with nothing configured it spends a Redis round trip on every call and finds an
    #: add limit at about 0.7 of it.
    capillary_rate_learning: bool = False
    #: Where endpoints without a configured limit start, in requests per minute (worker/downstream/ratelimit.py's
    #: DEFAULT_START for those not named).
    capillary_rate_start: Mapping[str, float] = field(default_factory=dict)
    #: How long a learned rate lasts unused.
    capillary_rate_memory_seconds: float = 3600.0
    capillary_timeout_seconds: float = 10.0
    upsert_api_token: str = field(default="", repr=False)
    #: The default tenant's callback signing secret and the hosts its callbackUrl may name.
    upsert_webhook_secret: str = field(default="", repr=False)
    upsert_callback_hosts: tuple[str, ...] = ()
    #: Where the command line's client commands find the API.
    upsert_url: str = "http://127.0.0.1:8000"
    tenants_file: str = ""
    port: int = 8000
    #: The worker's Celery node name before the @; empty: ``worker-<pid>``, unique on every host.
    worker_name: str = ""
    worker_concurrency: int = 32
    #: Celery's pool for the worker process: threads, or gevent (see the README's Performance).
    worker_pool: str = "threads"
    item_max_attempts: int = 8
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    job_ttl_seconds: int = 604800
    max_items_per_job: int = 100_000
    max_body_bytes: int = 268_435_456
    #: Share of Redis's maxmemory (or of store_max_bytes) past which new submissions get 503
    #: store_full: the rest is kept for the jobs already accepted (api/admission.py).
    store_admit_watermark: float = 0.8
    #: The store's byte budget when Redis has no maxmemory; 0: no admission limit then.
    store_max_bytes: int = 0
    #: When the store's primary has replicas, a new job is answered 202 only once one of them has it
    #: (``WAIT``), waiting at most this long, else 503; 0: no waiting.
    store_replica_wait_seconds: float = 2.0
    #: Lookup order of identifier types; types not listed follow in the order the profile gives them.
    identifier_priority: tuple[str, ...] = ("externalId", "mobile", "email", "cardnumber")
    #: The environment variables that were set (non-empty) when these settings were read, so that
    #: a caller such as ``customer-upsert dev`` can tell a value chosen from a default.
    env_names: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        defaults = cls()

        def text(name: str, default: str) -> str:
            return env.get(name, "").strip() or default

        def number(name: str, default: float, kind: type = float, minimum: float = 0) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a {kind.__name__}")
            if value < minimum:
                raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
            return value

        def switch(name: str, default: bool) -> bool:
            raw = env.get(name, "").strip().lower()
            if not raw:
                return default
            if raw in ("on", "true", "1", "yes"):
                return True
            if raw in ("off", "false", "0", "no"):
                return False
            raise SettingsError(f"{name}={raw!r} should be on or off")

        priority = text("IDENTIFIER_PRIORITY", "")
        redis_url = text("REDIS_URL", defaults.redis_url)
        broker_url = text("BROKER_URL", "")
        sentinel_master = text("REDIS_SENTINEL_MASTER", "")
        for name, url in (("REDIS_URL", redis_url), ("BROKER_URL", broker_url)):
            if not is_sentinel_url(url):
                continue
            try:
                parse_sentinel_url(url)
            except ValueError as exc:
                raise SettingsError(f"{name}: {exc}") from None
            if not sentinel_master:
                raise SettingsError(f"{name} names Sentinels (sentinel://): set REDIS_SENTINEL_MASTER to the name "
                                    "of the primary they watch")
        return cls(
            redis_url=redis_url,
            redis_sentinel_master=sentinel_master,
            broker_url=broker_url,
            item_lease_seconds=number("ITEM_LEASE_SECONDS", 20.0, minimum=2),
            job_window=int(number("JOB_WINDOW", 0, int)),
            tenant_max_concurrency=int(number("TENANT_MAX_CONCURRENCY", 0, int)),
            tenant_max_pending_items=int(number("TENANT_MAX_PENDING_ITEMS", 1_000_000, int)),
            tenant_max_concurrent_jobs=int(number("TENANT_MAX_CONCURRENT_JOBS", 50, int)),
            tenant_max_items_per_day=int(number("TENANT_MAX_ITEMS_PER_DAY", 20_000_000, int)),
            capillary_base_url=text("CAPILLARY_BASE_URL", defaults.capillary_base_url).rstrip("/"),
            capillary_till=text("CAPILLARY_TILL", ""),
            capillary_password=env.get("CAPILLARY_PASSWORD", ""),
            capillary_oauth_key=text("CAPILLARY_OAUTH_KEY", ""),
            capillary_oauth_secret=env.get("CAPILLARY_OAUTH_SECRET", ""),
            capillary_max_rps=number("CAPILLARY_MAX_RPS", 0.0),
            capillary_rate_limits=parse_rate_limits(env.get("CAPILLARY_RATE_LIMITS", "")),
            capillary_rate_learning=switch("CAPILLARY_RATE_LEARNING", False),
            capillary_rate_start=parse_rate_start(env.get("CAPILLARY_RATE_START", "")),
            capillary_rate_memory_seconds=number("CAPILLARY_RATE_MEMORY_SECONDS", 3600.0, minimum=1),
            capillary_timeout_seconds=number("CAPILLARY_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            upsert_api_token=env.get("UPSERT_API_TOKEN", "").strip(),
            upsert_url=text("UPSERT_URL", defaults.upsert_url).rstrip("/"),
            upsert_webhook_secret=env.get("UPSERT_WEBHOOK_SECRET", ""),
            upsert_callback_hosts=tuple(h.strip().lower() for h in env.get("UPSERT_CALLBACK_HOSTS", "").split(",")
                                        if h.strip()),
            tenants_file=text("UPSERT_TENANTS_FILE", ""),
            port=int(number("PORT", 8000, int, 1)),
            worker_name=text("WORKER_NAME", ""),
            worker_concurrency=int(number("WORKER_CONCURRENCY", 32, int, 1)),
            worker_pool=text("WORKER_POOL", defaults.worker_pool),
            item_max_attempts=int(number("ITEM_MAX_ATTEMPTS", 8, int, 1)),
            retry_base_seconds=number("RETRY_BASE_SECONDS", 1.0),
            retry_max_seconds=number("RETRY_MAX_SECONDS", 60.0),
            job_ttl_seconds=int(number("JOB_TTL_SECONDS", 604800, int, 1)),
            max_items_per_job=int(number("MAX_ITEMS_PER_JOB", 100_000, int, 1)),
            max_body_bytes=int(number("MAX_BODY_BYTES", 268_435_456, int, 1)),
            store_admit_watermark=number("STORE_ADMIT_WATERMARK", 0.8, minimum=0.05),
            store_max_bytes=int(number("STORE_MAX_BYTES", 0, int)),
            store_replica_wait_seconds=number("STORE_REPLICA_WAIT_SECONDS", 2.0),
            identifier_priority=tuple(p.strip() for p in priority.split(",") if p.strip())
            or defaults.identifier_priority,
            env_names=frozenset(name for name, value in env.items() if value.strip()),
        )

    def with_overrides(self, **changes) -> Settings:
        return replace(self, **changes)

    def default_tenant(self) -> Tenant:
        return Tenant(
            id=DEFAULT_TENANT_ID,
            token=self.upsert_api_token,
            base_url=self.capillary_base_url,
            till=self.capillary_till,
            password=self.capillary_password,
            oauth_key=self.capillary_oauth_key,
            oauth_secret=self.capillary_oauth_secret,
            max_rps=self.capillary_max_rps,
            rate_limits=dict(self.capillary_rate_limits),
            webhook_secret=self.upsert_webhook_secret,
            callback_hosts=self.upsert_callback_hosts,
            max_concurrency=self.tenant_max_concurrency,
            max_pending_items=self.tenant_max_pending_items,
            max_concurrent_jobs=self.tenant_max_concurrent_jobs,
            max_items_per_day=self.tenant_max_items_per_day,
        )

    def tenants(self) -> dict[str, Tenant]:
        """Tenants by id: those of ``UPSERT_TENANTS_FILE``, plus the default tenant from the
        environment when ``UPSERT_API_TOKEN`` is set (or when there is no file)."""
        tenants: dict[str, Tenant] = {}
        if self.tenants_file:
            tenants.update(load_tenants_file(self.tenants_file, self))
        if self.upsert_api_token or not tenants:
            tenants.setdefault(DEFAULT_TENANT_ID, self.default_tenant())
        tokens = [t.token for t in tenants.values() if t.token]
        if len(tokens) != len(set(tokens)):
            raise SettingsError("two tenants share one API token")
        return tenants


_TENANT_FIELDS = {
    "token": str, "capillary_base_url": str, "till": str, "password": str, "oauth_key": str, "oauth_secret": str,
    "max_rps": float, "rate_limits": object, "webhook_secret": str, "callback_hosts": list, "max_concurrency": int,
    "max_pending_items": int, "max_concurrent_jobs": int, "max_items_per_day": int,
}


def load_tenants_file(path: str, defaults: Settings) -> dict[str, Tenant]:
    """Read ``UPSERT_TENANTS_FILE`` (TOML, or JSON when the name ends in .json); see the README."""
    import json
    import tomllib

    try:
        raw = Path(path).read_bytes()
        data = json.loads(raw) if path.endswith(".json") else tomllib.loads(raw.decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise SettingsError(f"UPSERT_TENANTS_FILE {path}: {exc}")
    entries = data.get("tenants")
    if not isinstance(entries, dict) or not entries:
        raise SettingsError(f"UPSERT_TENANTS_FILE {path}: expected a [tenants.NAME] table per tenant")
    tenants = {}
    for tenant_id, entry in entries.items():
        where = f"UPSERT_TENANTS_FILE {path}: tenant {tenant_id!r}"
        if not isinstance(entry, dict):
            raise SettingsError(f"{where}: expected a table")
        unknown = set(entry) - set(_TENANT_FIELDS)
        if unknown:
            raise SettingsError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        if not str(entry.get("token") or "").strip():
            raise SettingsError(f"{where}: token is required")
        limits = entry.get("rate_limits") or {}
        if isinstance(limits, str):
            limits = parse_rate_limits(limits)
        elif isinstance(limits, dict):
            limits = parse_rate_limits(",".join(f"{k}={v}" for k, v in limits.items()))
        else:
            raise SettingsError(f"{where}: rate_limits must be a table or 'add=100,...'")
        tenants[tenant_id] = Tenant(
            id=tenant_id,
            token=str(entry["token"]).strip(),
            base_url=str(entry.get("capillary_base_url") or defaults.capillary_base_url).rstrip("/"),
            till=str(entry.get("till") or ""),
            password=str(entry.get("password") or ""),
            oauth_key=str(entry.get("oauth_key") or ""),
            oauth_secret=str(entry.get("oauth_secret") or ""),
            max_rps=float(entry.get("max_rps") or 0),
            rate_limits=limits,
            webhook_secret=str(entry.get("webhook_secret") or ""),
            callback_hosts=tuple(str(h).lower() for h in entry.get("callback_hosts") or ()),
            max_concurrency=_whole(entry.get("max_concurrency") or 0, f"{where}: max_concurrency"),
            **{quota: _whole(entry.get(quota) or 0, f"{where}: {quota}") or getattr(defaults, f"tenant_{quota}")
               for quota in QUOTAS},
        )
    return tenants


#: The tenant quotas, by their names in the tenants file (and, with ``tenant_``, in Settings).
QUOTAS = ("max_pending_items", "max_concurrent_jobs", "max_items_per_day")


def _whole(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SettingsError(f"{what} must be a whole number, 0 or more")
    return value


def parse_rate_start(raw: str) -> dict[str, float]:
    """``CAPILLARY_RATE_START``: one number of requests per minute for every endpoint, or
    ``lookup=3000,add=300`` as CAPILLARY_RATE_LIMITS has them."""
    raw = raw.strip()
    if not raw or "=" in raw:
        try:
            return parse_rate_limits(raw)
        except SettingsError as exc:
            raise SettingsError(str(exc).replace("CAPILLARY_RATE_LIMITS", "CAPILLARY_RATE_START")) from None
    try:
        rpm = float(raw)
    except ValueError:
        raise SettingsError(f"CAPILLARY_RATE_START={raw!r} is not a number nor ENDPOINT=REQUESTS_PER_MINUTE,...")
    if rpm <= 0:
        raise SettingsError("CAPILLARY_RATE_START must be positive")
    return dict.fromkeys(ENDPOINTS, rpm)


def parse_rate_limits(raw: str) -> dict[str, float]:
    """Parse ``lookup=6000,add=100`` (requests per minute per endpoint)."""
    limits: dict[str, float] = {}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in ENDPOINTS:
            raise SettingsError(
                f"CAPILLARY_RATE_LIMITS: {part!r} should be ENDPOINT=REQUESTS_PER_MINUTE, "
                f"ENDPOINT one of {', '.join(ENDPOINTS)}"
            )
        try:
            rpm = float(value)
        except ValueError:
            raise SettingsError(f"CAPILLARY_RATE_LIMITS: {value!r} for {name} is not a number")
        if rpm <= 0:
            raise SettingsError(f"CAPILLARY_RATE_LIMITS: the limit for {name} must be positive")
        limits[name] = rpm
    return limits
