"""The completion callback: the final job document POSTed to the job's callbackUrl, signed.

Only hosts the tenant lists may be called (checked at intake and again here), redirects are not
followed (an allowed host must not bounce us to an internal address), and the body is signed
``X-Upsert-Signature: sha256=<hex HMAC-SHA256 of the body with the tenant's webhook secret>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import urlsplit

import requests

from worker.downstream.client import PermanentError, RetryableError
from worker.settings import Tenant

SIGNATURE_HEADER = "X-Upsert-Signature"
TIMEOUT_SECONDS = 10


def callback_problem(url: str, tenant: Tenant) -> str | None:
    """Why ``url`` may not be called for ``tenant``; None when it may."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "callbackUrl is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "callbackUrl must be an http or https URL"
    if parts.username or parts.password:
        return "callbackUrl must not carry credentials"
    if not tenant.callback_hosts:
        return "callbacks are not enabled for this token (no allowed callback hosts)"
    if parts.hostname.lower() not in tenant.callback_hosts:
        return f"callbackUrl host {parts.hostname!r} is not one of this token's allowed callback hosts"
    return None


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver(session: requests.Session, url: str, job: dict, tenant: Tenant) -> None:
    problem = callback_problem(url, tenant)
    if problem:
        raise PermanentError(problem, endpoint="callback")
    body = json.dumps(job, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, tenant.webhook_secret),
               # the same on every attempt: a receiver that has seen it may answer 2xx and skip it
               "Idempotency-Key": str(job["jobId"])}
    try:
        response = session.post(url, data=body, headers=headers, timeout=TIMEOUT_SECONDS, allow_redirects=False)
    except requests.RequestException as exc:
        raise RetryableError(f"callback: {type(exc).__name__}", endpoint="callback") from exc
    if response.status_code >= 500 or response.status_code in (408, 429):
        raise RetryableError(f"callback: HTTP {response.status_code}", endpoint="callback",
                             status=response.status_code)
    if not 200 <= response.status_code < 300:
        raise PermanentError(f"callback: HTTP {response.status_code}", endpoint="callback",
                             status=response.status_code)
