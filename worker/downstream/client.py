"""The downstream v2 customer API client.

Keep-alive connections (worker/transport.py: libcurl, a handle per thread), a timeout on every call,
and every transport or HTTP failure turned into our own exception types, so tasks never look at the
HTTP library.

Business outcomes (8015 not found, 8006 already exists, ...) are not exceptions: they come back in
:class:`ApiResult` and the upsert logic decides on ``errors[].code``, never on the HTTP status alone
(the vendor does not document which status goes with which code). Every 5xx is retryable, with or
without ``errors[]``; a 4xx without a JSON object body (the vendor documents "400 Bad Request with
Blank response") is a permanent error that quotes what came back.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from worker.downstream import retry
from worker.downstream.transport import Answer, CurlTransport, TransportError, TransportTimeout
from worker.settings import Tenant

#: HTTP statuses worth another try besides every 5xx: throttling, and Capillary's
#: 521 "Multiple actions are running for the same customer".
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504, 521})
#: How much of a body that is not JSON an error message quotes.
BODY_EXCERPT_BYTES = 80
CODE_MULTIPLE_ACTIONS = 521
#: Read codes that mean "no such customer here": 8015, and 8065 "No customer found in the given
#: source" (known only in another source or account).
NOT_FOUND_CODES = frozenset({8015, 8065})
#: The endpoints that read a customer: their not-found answers are counted as ``not_found``.
READS = frozenset({"lookup", "get"})
OAUTH_HEADER = "X-CAP-API-OAUTH-TOKEN"


class DownstreamError(Exception):
    """A call that did not produce a usable answer."""

    def __init__(self, message: str, *, endpoint: str, status: int | None = None, code: int | None = None):
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        self.status = status
        self.code = code


class RetryableError(DownstreamError):
    """Transient: the same call may succeed later (timeouts, connection errors, 429, any 5xx, 521)."""

    def __init__(self, message: str, *, retry_after: float | None = None, timed_out: bool = False, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        self.timed_out = timed_out


class ThrottledError(RetryableError):
    """The downstream said 429: slow the whole fleet down (worker/ratelimit.py), and try again after
    its Retry-After. Not the item's fault: it does not count as an attempt."""


class PermanentError(DownstreamError):
    """Repeating the call cannot help (bad credentials, a body the downstream cannot parse)."""


@dataclass
class ApiResult:
    status: int
    body: dict[str, Any]

    @property
    def errors(self) -> list[dict]:
        return _items(self.body, "errors")

    @property
    def warnings(self) -> list[dict]:
        return _items(self.body, "warnings")

    @property
    def error_codes(self) -> set[int]:
        return {code for code in (_as_int(e.get("code")) for e in self.errors) if code is not None}


#: Called before each request with the endpoint name; the rate limiter hooks in here.
BeforeCall = Callable[[str], None]
#: Called with the endpoint and the downstream's Retry-After (seconds, or None) when it answers 429.
OnThrottle = Callable[[str, float | None], None]
#: Called after every HTTP request with the endpoint (``token`` for OAuth), the outcome (the HTTP
#: status as text, ``timeout`` or ``connection_error``) and the seconds it took; metrics hook in here.
CallObserver = Callable[[str, str, float], None]


@dataclass
class _Token:
    value: str = ""
    expires_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class CapillaryClient:
    """Calls the v2 customer endpoints for one tenant.

    Thread-safe: the worker runs items on a thread pool that shares one client (and so one OAuth
    token) per tenant; each thread keeps its own connection (worker/transport.py).
    """

    #: Renew an OAuth token this long before the downstream says it expires.
    TOKEN_RENEW_MARGIN_SECONDS = 30

    def __init__(
        self,
        tenant: Tenant,
        *,
        timeout: float = 10.0,
        before_call: BeforeCall | None = None,
        on_throttle: OnThrottle | None = None,
        observer: CallObserver | None = None,
        quick_retries: int = retry.QUICK_RETRIES,
    ) -> None:
        self.tenant = tenant
        self.base_url = tenant.base_url.rstrip("/")
        self.timeout = timeout
        self.before_call = before_call
        self.on_throttle = on_throttle
        self.observer = observer
        self.quick_retries = quick_retries
        #: Called with the request prepared, right before it is sent (see :meth:`with_gate`).
        self.fence: Callable[[], None] | None = None
        self._token = _Token()
        self._transport = CurlTransport(self.base_url, timeout=timeout)
        self._headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if tenant.till and not tenant.oauth_key:
            self._headers["Authorization"] = basic_auth_header(tenant.till, tenant.password)

    # -- the endpoints ------------------------------------------------------------------------

    def lookup(self, *, source: str, account_id: str | None, identifier_name: str, identifier_value: str):
        params = _params(source, account_id)
        params.update(identifierName=identifier_name, identifierValue=identifier_value)
        return self._call("lookup", "GET", "/v2/customers/lookup/customerDetails", params=params)

    def get_customer(self, user_id: int, *, source: str, account_id: str | None) -> ApiResult:
        """``GET v2/customers/{id}``: the customer in lookup shape, found by id whatever identifiers the org
        lets the lookup find customers by (dual eligibility)."""
        return self._call("get", "GET", f"/v2/customers/{int(user_id)}", params=_params(source, account_id))

    def add(self, body: dict, *, before_send: Callable[[], None] | None = None) -> ApiResult:
        """``before_send`` runs as each try goes out, after its rate-limit token: from then on the add may
        land even if its answer never comes back."""
        return self._call("add", "POST", "/v2/customers", json=body, before_send=before_send)

    def update(self, user_id: int, *, source: str, account_id: str | None, body: dict) -> ApiResult:
        return self._call(
            "update", "PUT", f"/v2/customers/{int(user_id)}", params=_params(source, account_id), json=body
        )

    def change_identifier(
        self, user_id: int, *, source: str, account_id: str | None, add: list[dict], remove: list[dict]
    ) -> ApiResult:
        return self._call(
            "changeIdentifier",
            "POST",
            f"/v2/customers/{int(user_id)}/changeIdentifier",
            params=_params(source, account_id),
            json={"add": add, "remove": remove},
        )

    # -- transport ----------------------------------------------------------------------------

    def _call(self, endpoint: str, method: str, path: str, *, before_send: Callable[[], None] | None = None,
              **kwargs: Any) -> ApiResult:
        quick_left = self.quick_retries
        while True:
            try:
                return self._call_once(endpoint, method, path, before_send, **kwargs)
            except ThrottledError as exc:
                if self.on_throttle is not None:
                    self.on_throttle(endpoint, exc.retry_after)
                raise
            except RetryableError as exc:
                # worker/retry.py: a quick retry in place, unless it timed out or must wait longer.
                if quick_left <= 0 or exc.timed_out or (exc.retry_after or 0) > retry.QUICK_RETRY_SECONDS[1]:
                    raise
                quick_left -= 1
                time.sleep(retry.quick_retry_pause())

    def _call_once(self, endpoint: str, method: str, path: str, before_send: Callable[[], None] | None,
                   params: Mapping[str, str] | None = None, json: Any = None) -> ApiResult:
        payload = None if json is None else _encode(json)  # once, whatever the retries
        renewed = False
        while True:
            if self.before_call is not None:
                self.before_call(endpoint)
            headers = self._auth_headers(endpoint)
            if before_send is not None:
                before_send()
            started = time.perf_counter()
            try:
                if self.fence is not None:
                    self.fence()
                response = self._send(method, path, params, payload, headers)
            except TransportTimeout as exc:
                self._observe(endpoint, "timeout", started)
                raise RetryableError(f"{endpoint}: no answer within {self.timeout:g}s", endpoint=endpoint,
                                     timed_out=True) from exc
            except TransportError as exc:
                self._observe(endpoint, "connection_error", started)
                raise RetryableError(f"{endpoint}: connection failed ({exc})", endpoint=endpoint) from exc
            body = _json_object(response)
            self._observe(endpoint, _outcome_label(endpoint, response.status, body), started)
            if response.status == 401 and self._uses_oauth and not renewed:
                # A token may expire between our check and the call, or be revoked: renew once.
                self._forget_token(headers[OAUTH_HEADER])
                renewed = True
                continue
            return self._interpret(endpoint, response, body)

    def _send(self, method: str, path: str, params: Mapping[str, str] | None, body: bytes | None,
              headers: Mapping[str, str]) -> Answer:
        url = self.base_url + path + ("?" + urlencode(params) if params else "")
        return self._transport.request(method, url, body, headers)

    def _observe(self, endpoint: str, outcome: str, started: float) -> None:
        if self.observer is not None:
            self.observer(endpoint, outcome, time.perf_counter() - started)

    def _interpret(self, endpoint: str, response: Answer, body: dict | None) -> ApiResult:
        status = response.status
        codes = {_as_int(e.get("code")) for e in _items(body, "errors")}
        if status == 429:
            raise ThrottledError(f"{endpoint}: downstream answered HTTP 429 (throttled)", endpoint=endpoint,
                                 status=status, retry_after=_retry_after(response))
        if status in RETRYABLE_STATUSES or status >= 500 or CODE_MULTIPLE_ACTIONS in codes:
            raise RetryableError(
                f"{endpoint}: downstream answered HTTP {status}" + _what_came_back(body, response),
                endpoint=endpoint,
                status=status,
                code=CODE_MULTIPLE_ACTIONS if CODE_MULTIPLE_ACTIONS in codes else None,
                retry_after=_retry_after(response),
            )
        if status == 401 or status == 403:
            raise PermanentError(
                f"{endpoint}: downstream refused our credentials (HTTP {status})", endpoint=endpoint, status=status
            )
        if body is None:
            raise PermanentError(
                f"{endpoint}: downstream answered HTTP {status}" + _what_came_back(body, response),
                endpoint=endpoint, status=status,
            )
        return ApiResult(status=status, body=body)

    # -- authentication -----------------------------------------------------------------------

    @property
    def _uses_oauth(self) -> bool:
        return bool(self.tenant.oauth_key)

    def _auth_headers(self, endpoint: str) -> Mapping[str, str]:
        """The headers of a call: built once (Basic auth's digest included), and a copy with the OAuth
        token of the moment when OAuth is on."""
        if self._uses_oauth:
            return {**self._headers, OAUTH_HEADER: self._oauth_token(endpoint)}
        return self._headers

    def _forget_token(self, refused: str) -> None:
        """Drop the token the downstream refused, unless another thread has renewed it already.

        Many threads see the same expiry at once; a 401 that arrives after the renewal, for a call
        sent with the old token, must not throw the new token away and renew a second time.
        """
        with self._token.lock:
            if self._token.value == refused:
                self._token.expires_at = 0.0

    def _oauth_token(self, endpoint: str) -> str:
        token = self._token
        with token.lock:  # one renewal for all threads, not one per thread
            if token.value and time.monotonic() < token.expires_at:
                return token.value
            started = time.perf_counter()
            try:
                response = self._send("POST", "/v3/oauth/token/generate", None,
                                      _encode({"key": self.tenant.oauth_key, "secret": self.tenant.oauth_secret}),
                                      self._headers)
            except TransportError as exc:
                self._observe("token", "timeout" if isinstance(exc, TransportTimeout) else "connection_error", started)
                raise RetryableError(f"{endpoint}: OAuth token request failed ({exc})", endpoint=endpoint) from exc
            self._observe("token", str(response.status), started)
            body = _json_object(response) or {}
            data = body.get("data") or {}
            if response.status in RETRYABLE_STATUSES or response.status >= 500:
                error = ThrottledError if response.status == 429 else RetryableError
                raise error(f"{endpoint}: OAuth token request answered HTTP {response.status}",
                            endpoint=endpoint, status=response.status, retry_after=_retry_after(response))
            if response.status != 200 or not data.get("accessToken"):
                raise PermanentError(
                    f"{endpoint}: OAuth token refused (HTTP {response.status})", endpoint=endpoint,
                    status=response.status,
                )
            ttl = float(data.get("ttlSeconds") or 300)
            token.value = data["accessToken"]
            token.expires_at = time.monotonic() + max(1.0, ttl - min(self.TOKEN_RENEW_MARGIN_SECONDS, ttl / 2))
            return token.value

    def with_gate(self, gate: BeforeCall, fence: Callable[[], None] | None = None) -> CapillaryClient:
        """This client for one item: the same connections and token, with ``gate`` called before
        each request (the item's lease check and its rate-limit tokens) and ``fence`` once more with
        the request built, right before it goes to the socket (the lease check again: a worker
        frozen between the two wakes up to find its lease presumed lost, and sends nothing)."""
        view = copy.copy(self)
        view.before_call = gate
        view.fence = fence
        return view


def basic_auth_header(till: str, password: str) -> str:
    """Capillary's Basic auth: ``base64(till + ":" + md5hex(password))``."""
    digest = hashlib.md5(password.encode("utf-8")).hexdigest()
    return "Basic " + base64.b64encode(f"{till}:{digest}".encode()).decode("ascii")


def _encode(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _params(source: str, account_id: str | None) -> dict[str, str]:
    params = {"source": source}
    if account_id:
        params["accountId"] = account_id
    return params


def _outcome_label(endpoint: str, status: int, body: dict | None) -> str:
    """The ``status`` label of a call's metric: the HTTP status, or ``not_found`` for a read that found no
    customer (whatever status the downstream gave it), which is an answer, not an error."""
    if (endpoint in READS and status < 500 and body is not None
            and {_as_int(e.get("code")) for e in _items(body, "errors")} & NOT_FOUND_CODES):
        return "not_found"
    return str(status)


def _json_object(response: Answer) -> dict | None:
    try:
        body = json.loads(response.content)
    except ValueError:  # UnicodeDecodeError too
        return None
    return body if isinstance(body, dict) else None


def _retry_after(response: Answer) -> float | None:
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def _what_came_back(body: dict | None, response: Answer) -> str:
    """The first error's message of a JSON answer, else the start of the raw body, for an error message."""
    if body is None:
        raw = response.content
        if not raw.strip():
            return " with an empty body"
        excerpt = raw[:BODY_EXCERPT_BYTES].decode("utf-8", "replace")
        return f" with a body that is not a JSON object: {excerpt!r}" + ("..." if len(raw) > BODY_EXCERPT_BYTES else "")
    errors = _items(body, "errors")
    return f": {errors[0]['message']}" if errors and errors[0].get("message") else ""


def _items(body: dict | None, key: str) -> list[dict]:
    """The ``errors`` or ``warnings`` of a body; entries that are not objects are dropped, not trusted."""
    value = (body or {}).get(key)
    return [entry for entry in value if isinstance(entry, dict)] if isinstance(value, list) else []


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
