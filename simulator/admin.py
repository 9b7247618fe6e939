"""Admin routes under ``/__admin``: no auth and no faults, so tests can always inspect and steer it."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from .config import to_json
from .customers import lookup_shape
from .state import state

admin = Blueprint("admin", __name__, url_prefix="/__admin")


@admin.get("/health")
def health():
    return jsonify({"ok": True})


@admin.post("/reset")
def reset():
    """Forget customers, calls and tokens; keep the config so a test's fault settings survive."""
    state().reset()
    return jsonify({"ok": True})


@admin.get("/customers")
def customers():
    shapes = [lookup_shape(customer) for customer in state().store.all()]
    return jsonify({"customers": shapes, "count": len(shapes)})


@admin.get("/calls")
def calls():
    return jsonify(state().calls.summary())


@admin.get("/calls/log")
def calls_log():
    since = request.args.get("since", type=float)
    return jsonify({"calls": state().calls.entries(since)})


@admin.get("/config")
def get_config():
    return jsonify(to_json(state().config))


@admin.patch("/config")
def patch_config():
    patch = request.get_json(force=True, silent=True)
    try:
        config = state().reconfigure(patch)
    except (ValueError, TypeError) as error:
        return jsonify({"errors": [{"status": False, "code": 400, "message": str(error)}]}), 400
    return jsonify(to_json(config))


@admin.post("/expire-tokens")
def expire_tokens():
    return jsonify({"expired": state().tokens.expire_all()})
