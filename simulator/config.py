"""Settings of the simulator, shared by the CLI, the app and the admin routes.

The config is an immutable value: the admin route builds a new one with :func:`apply_patch` and swaps it in,
so a request that is half-way through always sees one consistent set of settings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .customers import LOOKUP_TYPES

ENDPOINTS = ("lookup", "get", "add", "update", "changeIdentifier")
NOT_FOUND_STATUSES = (400, 404, 200)


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything that shapes the simulator's behaviour.

    Authentication is optional on purpose: with no ``till`` and no ``oauth_key`` the simulator accepts every
    v2 request unauthenticated, which keeps quick local runs simple. Once either is set, every v2 call must
    authenticate with Basic or with an OAuth token.

    ``latency_jitter_ms`` of ``None`` means half of ``latency_ms``, so a single ``--latency-ms`` gives a
    realistic spread without a second flag.

    ``primary_identifier`` switches on dual eligibility (docs/capillary-v2.md §1.7): only that type is unique per source
    and account and finds a customer; ``None`` is the classic mode, every identifier unique and findable.
    Switch it on an empty store (``/__admin/reset``): identifiers already stored keep the rule they were written
    under.

    ``lost_answers`` counts, per endpoint, the next calls that are handled in full (the write happens) and whose
    answer is then held back for ``hang_seconds``, as when a connection drops after the server acted. Each such
    call takes one off its count, so ``{"add": 1}`` loses exactly the next add's answer.

    ``throttle_next`` answers the next that many v2 calls 429 with ``Retry-After:
    throttle_retry_after`` (whole seconds, as HTTP has them), whatever the rate limits say: a
    downstream that tells the client to back off, once, at a moment a test chooses.
    """

    host: str = "127.0.0.1"
    port: int = 8100
    db: str = ":memory:"
    latency_ms: float = 0.0
    latency_jitter_ms: float | None = None
    error_rate: float = 0.0
    error_521_rate: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    outage: bool = False
    rate_limit_rps: float = 0.0
    rate_limits: dict[str, float] = field(default_factory=dict)
    not_found_status: int = 400
    primary_identifier: str | None = None
    lost_answers: dict[str, int] = field(default_factory=dict)
    throttle_next: int = 0
    throttle_retry_after: float = 1.0
    till: str | None = None
    password: str | None = None
    oauth_key: str | None = None
    oauth_secret: str | None = None
    token_ttl_seconds: float = 300.0
    seed: int | None = None

    @property
    def effective_jitter_ms(self) -> float:
        return self.latency_ms / 2 if self.latency_jitter_ms is None else self.latency_jitter_ms

    @property
    def auth_required(self) -> bool:
        return bool(self.till) or bool(self.oauth_key)

    def validate(self) -> SimulatorConfig:
        """Raise ``ValueError`` naming the first bad field; return self so calls can be chained."""
        if isinstance(self.throttle_next, bool) or not isinstance(self.throttle_next, int) or self.throttle_next < 0:
            raise ValueError("throttle_next must be a non-negative integer")
        for name in ("latency_ms", "hang_seconds", "rate_limit_rps", "token_ttl_seconds", "throttle_retry_after"):
            _non_negative(name, getattr(self, name))
        if self.latency_jitter_ms is not None:
            _non_negative("latency_jitter_ms", self.latency_jitter_ms)
        for name in ("error_rate", "error_521_rate", "hang_rate"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number between 0 and 1")
        if self.error_rate + self.error_521_rate > 1:
            raise ValueError("error_rate + error_521_rate must not exceed 1")
        if not isinstance(self.not_found_status, int) or self.not_found_status not in NOT_FOUND_STATUSES:
            raise ValueError(f"not_found_status must be one of {NOT_FOUND_STATUSES}")
        if not isinstance(self.outage, bool):
            raise ValueError("outage must be true or false")
        if not isinstance(self.rate_limits, dict):
            raise ValueError("rate_limits must map endpoint names to requests per minute")
        for endpoint, rpm in self.rate_limits.items():
            if endpoint not in ENDPOINTS:
                raise ValueError(f"rate_limits: unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
            _non_negative(f"rate_limits.{endpoint}", rpm)
        if self.primary_identifier is not None and self.primary_identifier not in LOOKUP_TYPES:
            raise ValueError(f"primary_identifier must be null or one of {LOOKUP_TYPES}")
        if not isinstance(self.lost_answers, dict):
            raise ValueError("lost_answers must map endpoint names to a number of calls")
        for endpoint, count in self.lost_answers.items():
            if endpoint not in ENDPOINTS:
                raise ValueError(f"lost_answers: unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"lost_answers.{endpoint} must be a non-negative integer")
        for name in ("till", "password", "oauth_key", "oauth_secret"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string or null")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError("seed must be an integer or null")
        return self


def parse_rate_limits(text: str) -> dict[str, float]:
    """Parse ``"add=600,update=3000"`` (requests per minute per endpoint)."""
    limits: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"expected endpoint=rpm, got {part!r}")
        try:
            limits[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"rate limit for {name.strip()!r} is not a number: {value!r}") from None
    return limits


# camelCase admin name -> dataclass field, for the fields that PATCH /__admin/config may change.
PATCHABLE = {
    "latencyMs": "latency_ms",
    "latencyJitterMs": "latency_jitter_ms",
    "errorRate": "error_rate",
    "error521Rate": "error_521_rate",
    "hangRate": "hang_rate",
    "hangSeconds": "hang_seconds",
    "outage": "outage",
    "rateLimitRps": "rate_limit_rps",
    "rateLimits": "rate_limits",
    "notFoundStatus": "not_found_status",
    "primaryIdentifier": "primary_identifier",
    "lostAnswers": "lost_answers",
    "throttleNext": "throttle_next",
    "throttleRetryAfter": "throttle_retry_after",
    "tokenTtlSeconds": "token_ttl_seconds",
    "till": "till",
    "password": "password",
    "oauthKey": "oauth_key",
    "oauthSecret": "oauth_secret",
    "seed": "seed",
}


def apply_patch(config: SimulatorConfig, patch: Any) -> SimulatorConfig:
    """Return a validated copy of ``config`` with the camelCase fields of ``patch`` applied.

    ``rateLimits`` and ``lostAnswers`` replace the whole map, so an endpoint is removed by leaving it out.
    """
    if not isinstance(patch, dict):
        raise ValueError("body must be a JSON object")
    unknown = sorted(set(patch) - set(PATCHABLE))
    if unknown:
        raise ValueError(f"unknown config fields: {', '.join(unknown)}")
    changes = {PATCHABLE[key]: value for key, value in patch.items()}
    for name in ("rate_limits", "lost_answers"):
        if isinstance(changes.get(name), dict):
            changes[name] = dict(changes[name])
    return dataclasses.replace(config, **changes).validate()


def to_json(config: SimulatorConfig) -> dict[str, Any]:
    """The config as the admin route shows it: camelCase, secrets replaced by whether they are set."""
    return {
        "host": config.host,
        "port": config.port,
        "db": config.db,
        "latencyMs": config.latency_ms,
        "latencyJitterMs": config.latency_jitter_ms,
        "effectiveLatencyJitterMs": config.effective_jitter_ms,
        "errorRate": config.error_rate,
        "error521Rate": config.error_521_rate,
        "hangRate": config.hang_rate,
        "hangSeconds": config.hang_seconds,
        "outage": config.outage,
        "rateLimitRps": config.rate_limit_rps,
        "rateLimits": dict(config.rate_limits),
        "notFoundStatus": config.not_found_status,
        "primaryIdentifier": config.primary_identifier,
        "lostAnswers": dict(config.lost_answers),
        "throttleNext": config.throttle_next,
        "throttleRetryAfter": config.throttle_retry_after,
        "tokenTtlSeconds": config.token_ttl_seconds,
        "till": config.till,
        "passwordSet": config.password is not None,
        "oauthKey": config.oauth_key,
        "oauthSecretSet": config.oauth_secret is not None,
        "authRequired": config.auth_required,
        "seed": config.seed,
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _non_negative(name: str, value: Any) -> None:
    if not _is_number(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number")
