"""The web process: a thin Flask intake in front of the job store and the workers."""

from __future__ import annotations

import logging

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from api.errors import register_error_handlers
from api.services import Services
from worker.settings import Settings

log = logging.getLogger(__name__)


class InputOrderJSON(DefaultJSONProvider):
    """Documents keep the order they were built in (jobId first), not sorted keys."""

    sort_keys = False


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app. ``settings`` defaults to the environment's; tests pass their own."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    # Werkzeug answers 413 before reading a body larger than this.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json = InputOrderJSON(app)
    app.extensions["upsert"] = Services.build(settings)
    if not any(t.token for t in app.extensions["upsert"].tenants.values()):
        log.warning("no API token is configured (UPSERT_API_TOKEN): every request will get 401")

    from api.pages import pages
    from api.params import refuse_unknown
    from api.views import health, jobs

    app.before_request(refuse_unknown)

    app.register_blueprint(jobs)
    app.register_blueprint(health)
    app.register_blueprint(pages)
    register_error_handlers(app)
    app.after_request(protective_headers)
    warn_about_the_store(app.extensions["upsert"].store.redis)
    return app


#: For answers that are data, not pages (JSON, NDJSON, metrics): nothing in them may load or run,
#: and no page may frame them. The pages (/ui/, /docs) set their own policy (api/pages.py).
DATA_CSP = "default-src 'none'; frame-ancestors 'none'"


def protective_headers(response):
    """Every answer: no content sniffing, and a policy that lets data answers load nothing."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Content-Security-Policy", DATA_CSP)
    return response


def warn_about_the_store(client) -> None:
    """Say loudly, once at start, what is unsafe about this Redis (worker/store/health.py)."""
    import redis

    from worker.store.health import store_findings

    try:
        for finding in store_findings(client):
            log.warning("job store: %s", finding.message)
    except redis.RedisError as exc:
        log.warning("job store unreachable at start (%s); requests that need it get 503 until it answers",
                    type(exc).__name__)
