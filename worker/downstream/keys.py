"""The names of the rate limiter's Redis keys.

Here, not in worker/store/keys.py, so the downstream part imports nothing of the store; the prefix
is the store's (tests/unit/test_imports.py holds the two equal).
"""

from __future__ import annotations

PREFIX = "cu"


def rate_limit_prefix(tenant: str) -> str:
    return f"{PREFIX}:ratelimit:{tenant}"
