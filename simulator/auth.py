"""Authentication as Capillary does it: Basic with an MD5 of the password, or a short-lived OAuth token.

Basic credentials are ``base64(till + ":" + md5hex(password))`` with a lower-case hex digest; the simulator is
strict about that so a client that sends the raw password or an upper-case digest fails here, not in
production.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time

from .config import SimulatorConfig

OPEN_ACTOR = "simulator.till"


def basic_header(till: str, password: str) -> str:
    """The ``Authorization`` value a client must send; used by tests and handy in a REPL."""
    digest = hashlib.md5(password.encode()).hexdigest()
    return "Basic " + base64.b64encode(f"{till}:{digest}".encode()).decode()


class TokenRegistry:
    """Issued OAuth tokens and their expiry times (epoch seconds)."""

    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}

    def issue(self, ttl_seconds: float) -> str:
        token = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + ttl_seconds
        return token

    def is_valid(self, token: str) -> bool:
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and expiry > self._clock()

    def expire_all(self) -> int:
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, 0.0)
            return len(self._tokens)

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


def check_credentials(config: SimulatorConfig, key: object, secret: object) -> bool:
    if not config.oauth_key or not isinstance(key, str) or not isinstance(secret, str):
        return False
    return _same(key, config.oauth_key) and _same(secret, config.oauth_secret or "")


def authenticate(config: SimulatorConfig, tokens: TokenRegistry, headers) -> tuple[str | None, str]:
    """Return ``(actor, "")`` for an accepted request or ``(None, reason)`` for a refused one.

    The actor is the till code recorded as ``createdBy``/``modifiedBy`` on the customer.
    """
    if not config.auth_required:
        return OPEN_ACTOR, ""
    token = headers.get("X-CAP-API-OAUTH-TOKEN")
    if token:
        if config.oauth_key and tokens.is_valid(token):
            return config.till or config.oauth_key, ""
        return None, "Invalid or expired OAuth token"
    authorization = headers.get("Authorization", "")
    if not authorization:
        return None, "Authentication required"
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or not config.till:
        return None, "Unsupported authorization scheme"
    try:
        till, sep, digest = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, "Malformed Basic credentials"
    expected = hashlib.md5((config.password or "").encode()).hexdigest()
    if sep and _same(till, config.till) and _same(digest, expected):
        return till, ""
    return None, "Invalid till or password"


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
