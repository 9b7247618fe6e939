"""The v2 customer endpoints (lookup, get by id, add, update, changeIdentifier) and OAuth token generation.

Every v2 request goes through :func:`v2_call`, which applies faults, then authentication, then the handler,
and records the outcome in the call log. Handlers return ``(status, body)`` or raise :class:`ApiError`; a body
of ``None`` is sent blank.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, jsonify, request

from . import customers as rules
from .auth import authenticate, check_credentials
from .config import SimulatorConfig
from .customers import NOT_FOUND_MESSAGE, NOT_IN_SOURCE_MESSAGE, ApiError
from .faults import error_body
from .state import state
from .store import IdentifierTaken

v2 = Blueprint("v2", __name__)

Handler = Callable[..., tuple[int, dict[str, Any] | None]]


def v2_call(endpoint: str) -> Callable[[Handler], Callable[..., Any]]:
    def decorate(handler: Handler) -> Callable[..., Any]:
        @wraps(handler)
        def view(**kwargs: Any):
            arrived = time.time()
            sim = state()
            config = sim.config
            status, body, headers, lost = _answer(sim, config, endpoint, handler, kwargs)
            sim.calls.record(arrived, endpoint, status)
            if lost:
                # Handled and written, but the answer is held until the client has given up on it.
                time.sleep(config.hang_seconds)
            return ("" if body is None else jsonify(body)), status, headers

        return view

    return decorate


def _answer(sim, config: SimulatorConfig, endpoint: str, handler: Handler, kwargs: dict[str, Any]):
    """``(status, body, headers, whether the answer is lost)`` for one v2 request."""
    retry_after = sim.take_throttle()
    if retry_after is not None:
        return 429, error_body(429, "Rate limit exceeded"), {"Retry-After": str(math.ceil(retry_after))}, False
    fault = sim.faults.before_request(config, endpoint)
    if fault is not None:
        return fault.status, fault.body, fault.headers, False
    actor, reason = authenticate(config, sim.tokens, request.headers)
    if actor is None:
        return 401, {"errors": [rules.item(401, reason)]}, {}, False
    lost = sim.take_lost_answer(endpoint)
    try:
        status, body = handler(sim, config, actor, **kwargs)
    except ApiError as error:
        status = config.not_found_status if error.status is None else error.status
        body = error_body(error.code, error.message)
    return status, body, {}, lost


def _json_object() -> dict[str, Any]:
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return body


def _customer_id(raw: str, code: int, message: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ApiError(code, message, status=None) from None


@v2.get("/v2/customers/lookup/customerDetails")
@v2_call("lookup")
def lookup(sim, config, actor):
    args = request.args
    source, account_id = rules.lookup_scope(args.get("source"), args.get("accountId"))
    keys = rules.lookup_keys(args.get("identifierName"), args.get("identifierValue"))
    # Under dual eligibility a non-primary identifier finds nobody, even a customer that holds it (§1.7).
    keys = rules.eligible_keys(keys, config.primary_identifier)
    for id_type, value in keys:
        customer = sim.store.find(source, account_id, id_type, value)
        if customer is not None:
            return 200, rules.lookup_shape(customer)
    if source is not None and any(sim.store.held_elsewhere(source, account_id, *key) for key in keys):
        raise ApiError(8065, NOT_IN_SOURCE_MESSAGE, status=None)
    raise ApiError(8015, NOT_FOUND_MESSAGE, status=None)


@v2.get("/v2/customers/<user_id>")
@v2_call("get")
def get_customer(sim, config, actor, user_id):
    if not user_id.isdigit():
        return 400, None  # the docs: "400 Bad Request with Blank response" (docs/capillary-v2.md §1.4)
    source, account_id = rules.get_scope(request.args.get("source"), request.args.get("accountId"))
    customer = sim.store.get(int(user_id))
    if customer is None or (customer.source, customer.account_id) != (source, account_id):
        raise ApiError(8015, NOT_FOUND_MESSAGE, status=None)
    return 200, rules.lookup_shape(customer)


@v2.post("/v2/customers")
@v2_call("add")
def add(sim, config, actor):
    body = _json_object()
    profile = rules.first_profile(body)
    source, account_id = rules.write_scope(
        profile.get("source", request.args.get("source")),
        profile.get("accountId", request.args.get("accountId")),
    )
    rules.check_status_label(body)
    identifiers, warnings = rules.registration_identifiers(profile.get("identifiers"))
    identifiers, errors = rules.refuse_unknown_card_labels(identifiers)
    if not identifiers:
        raise ApiError(*rules.CARD_LABEL_INVALID)
    if any(sim.store.held_elsewhere(source, account_id, i["type"], i["value"]) for i in identifiers):
        warnings.append(rules.item(8050, "Same Customer found in other sources,Combining"))
    document = rules.new_document(body)
    try:
        created = sim.store.add(source, account_id, identifiers, document, actor, config.primary_identifier)
    except IdentifierTaken as taken:
        raise ApiError(
            8006, f"Add failed, Customer already exists with id {taken.owner_id} for same source"
        ) from None
    if errors:
        return 200, {"createdId": created, "errors": errors, "warnings": warnings}
    return 200, {"createdId": created, "warnings": warnings, "sideEffects": []}


@v2.put("/v2/customers/<user_id>")
@v2_call("update")
def update(sim, config, actor, user_id):
    customer_id = _customer_id(user_id, 8015, NOT_FOUND_MESSAGE)
    body = _json_object()
    profile = rules.first_profile(body)
    source, account_id = rules.write_scope(
        request.args.get("source", profile.get("source")),
        request.args.get("accountId", profile.get("accountId")),
    )
    rules.check_status_label(body)
    rules.loyalty_type(body)
    warnings: list[dict[str, Any]] = []

    def change(customer):
        if (customer.source, customer.account_id) != (source, account_id):
            raise ApiError(8015, NOT_FOUND_MESSAGE, status=None)
        warnings.extend(rules.ignored_identifier_warnings(customer, body))
        return rules.updated_document(customer, body)

    if sim.store.update(customer_id, change, actor) is None:
        raise ApiError(8015, NOT_FOUND_MESSAGE, status=None)
    return 200, {"createdId": customer_id, "warnings": warnings, "sideEffects": []}


@v2.post("/v2/customers/<user_id>/changeIdentifier")
@v2_call("changeIdentifier")
def change_identifier(sim, config, actor, user_id):
    not_found = "Unable to identify the customer. Customer id is invalid."
    customer_id = _customer_id(user_id, 8009, not_found)
    source, account_id = rules.write_scope(request.args.get("source"), request.args.get("accountId"))
    body = _json_object()
    to_add = rules.change_identifiers(body.get("add"))
    to_remove = rules.change_identifiers(body.get("remove"))
    if not to_add and not to_remove:
        raise ApiError(8070, "No valid change identifiers detected")
    to_add, errors = rules.refuse_unknown_card_labels(to_add)
    if not to_add and not to_remove:
        raise ApiError(*rules.CARD_LABEL_INVALID)
    customer = sim.store.get(customer_id)
    if customer is None or (customer.source, customer.account_id) != (source, account_id):
        raise ApiError(8009, not_found, status=None)
    try:
        outcome = sim.store.change_identifiers(customer, to_add, to_remove, actor, config.primary_identifier)
    except IdentifierTaken:
        raise ApiError(8008, "The new identifier already exists in the same source.") from None
    warnings = [rules.already_attached_warning(i) for i in outcome.already_attached]
    if errors:
        return 200, {"createdId": customer_id, "errors": errors, "warnings": warnings}
    return 200, {"createdId": customer_id, "warnings": warnings}


@v2.post("/v3/oauth/token/generate")
def generate_token():
    """Token generation needs no auth and is never faulted, but it is counted as endpoint ``token``."""
    arrived = time.time()
    sim = state()
    config = sim.config
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        status, payload = (
            400,
            {"data": None, "errors": [rules.item(400, "Request body must be a JSON object")]},
        )
    elif check_credentials(config, body.get("key"), body.get("secret")):
        token = sim.tokens.issue(config.token_ttl_seconds)
        status = 200
        payload = {
            "data": {"accessToken": token, "ttlSeconds": int(config.token_ttl_seconds)},
            "errors": None,
        }
    else:
        status, payload = 401, {"data": None, "errors": [rules.item(1, "Invalid key or secret")]}
    sim.calls.record(arrived, "token", status)
    return jsonify(payload), status
