"""Flask app factory: the state (simulator/state.py) and the blueprints (v2.py, admin.py) put together."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from .admin import admin
from .config import SimulatorConfig
from .state import SimulatorState
from .v2 import v2

log = logging.getLogger(__name__)


class InputOrderJSON(DefaultJSONProvider):
    """Documents keep the order they were built in (jobId first), not sorted keys."""

    sort_keys = False


def create_app(config: SimulatorConfig) -> Flask:
    """Build the simulator app for ``config``; the store is opened here, never at import."""
    app = Flask(__name__)
    app.json = InputOrderJSON(app)
    app.extensions["simulator"] = SimulatorState(config)
    app.register_blueprint(v2)
    app.register_blueprint(admin)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        body = {
            "errors": [{"status": False, "code": error.code, "message": error.description}],
            "warnings": [],
        }
        return jsonify(body), error.code

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        log.exception("simulator bug")
        body = {"errors": [{"status": False, "code": 500, "message": "Requests have failed due to errors"}]}
        return jsonify(body), 500

    return app
