"""One error shape for every failure: ``{"errors":[{"code","message","field"}]}``."""

from __future__ import annotations

import logging

import redis
from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from worker.store.jobstore import NotReplicated

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A failure the client can act on; ``field`` names the query parameter or body path at fault."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, headers=None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}
        #: more about the error, for programs: a quota's name, use and limit
        self.extra = extra or {}


def error_body(code: str, message: str, field: str | None = None, extra: dict | None = None) -> dict:
    entry = {"code": code, "message": message}
    if field is not None:
        entry["field"] = field
    entry.update(extra or {})
    return {"errors": [entry]}


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "quota_exceeded",
}


#: Retry-After (seconds) for the store's refusals: a restart or failover takes seconds; memory is
#: freed as accepted jobs end, which takes longer.
STORE_UNAVAILABLE_RETRY_SECONDS = 5
STORE_FULL_RETRY_SECONDS = 30


def store_refusal(exc: redis.RedisError) -> ApiError | None:
    """The 503 for a store that cannot take the request now; None for a Redis error that is a bug."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return ApiError(503, "store_full", "the job store is out of memory; accepted jobs go on, try again later",
                        headers={"Retry-After": str(STORE_FULL_RETRY_SECONDS)})
    if isinstance(exc, NotReplicated):
        return ApiError(503, "store_unavailable",
                        "no replica of the job store confirmed the job in time (STORE_REPLICA_WAIT_SECONDS), so it "
                        "was not accepted; try again shortly",
                        headers={"Retry-After": str(STORE_UNAVAILABLE_RETRY_SECONDS)})
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                        redis.exceptions.ReadOnlyError, redis.exceptions.MasterDownError,
                        redis.exceptions.TryAgainError)):
        return ApiError(503, "store_unavailable",
                        f"the job store is unreachable or read-only ({type(exc).__name__}); try again shortly",
                        headers={"Retry-After": str(STORE_UNAVAILABLE_RETRY_SECONDS)})
    return None


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return jsonify(error_body(exc.code, exc.message, exc.field, exc.extra)), exc.status, exc.headers

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = "the request body is larger than this service accepts (MAX_BODY_BYTES)"
        return jsonify(error_body(_HTTP_CODES.get(status, exc.name.lower().replace(" ", "_")), message)), status

    @app.errorhandler(redis.RedisError)
    def _store_error(exc: redis.RedisError):
        refusal = store_refusal(exc)
        if refusal is None:
            log.exception("unhandled job store error")
            return jsonify(error_body("internal_error", "an internal error occurred; it has been logged")), 500
        log.warning("job store refused a request: %s (%s)", refusal.code, type(exc).__name__)
        return _api_error(refusal)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return jsonify(error_body("internal_error", "an internal error occurred; it has been logged")), 500
