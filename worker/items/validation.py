"""Validation of one customer element, before any downstream call.

Schemas mirror the request table of the vendor's Customer Upsert API. Fields the table does not
name are passed through untouched (``unknown = INCLUDE``): v2 update and change-identifier accept
many more, and the downstream is their judge. Each error carries Capillary's code where one fits,
and the path of the field inside the element (``profiles[0].identifiers[1].value``).
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, validates_schema
from marshmallow import validate as v

SOURCES = frozenset(
    {"INSTORE", "FACEBOOK", "WEB_ENGAGE", "WECHAT", "MARTJACK", "TMALL", "TAOBAO", "JD", "ECOMMERCE",
     "WEBSITE", "LINE", "MOBILE_APP"}
)
IDENTIFIER_TYPES = frozenset(
    {"mobile", "email", "externalId", "wechat", "martjackId", "fbId", "tmall_uname", "cuid", "unionId",
     "ali_uname", "jd_uname", "vip_uname", "mobilePush", "line", "cardnumber", "cardExternalId"}
)
#: The types the lookup takes (docs/capillary-v2.md §1.7); the others go to add and changeIdentifier only.
LOOKUP_TYPES = ("mobile", "email", "externalId", "cardnumber", "wechat", "cardExternalId")
COMM_CHANNEL_TYPES = frozenset({"mobile", "email", "wechat", "ios", "android", "line", "mobilePush"})

MOBILE_RE = re.compile(r"^[0-9]{8,15}$")
# The vendor allows a-zA-Z0-9-_+.@ in emails; we also require one @ with a dotted domain.
EMAIL_RE = re.compile(r"^[a-zA-Z0-9_+.\-]+@[a-zA-Z0-9\-]+(\.[a-zA-Z0-9\-]+)+$")

# Capillary's codes (docs/capillary-v2.md): the closest documented meaning for each failure.
CODE_DETAILS_MISSING = 8084  # "Customer details not sent"
CODE_NO_SOURCE = 8004
CODE_INVALID_SOURCE = 8003
CODE_NO_IDENTIFIERS = 8005
CODE_INVALID_IDENTIFIER = 8013
CODE_ACCOUNT_MISSING = 8045
CODE_INVALID_EMAIL = 8055
CODE_INVALID_MOBILE = 8056
CODE_INVALID_CHANNEL = 8010

_CODE_BY_FIELD = {
    "source": CODE_NO_SOURCE,
    "accountId": CODE_ACCOUNT_MISSING,
    "identifiers": CODE_NO_IDENTIFIERS,
    "type": CODE_INVALID_IDENTIFIER,
    "value": CODE_INVALID_IDENTIFIER,
    "commChannels": CODE_INVALID_CHANNEL,
}


class Coded(str):
    """An error message that knows its Capillary code; marshmallow keeps message objects as given."""

    code: int

    def __new__(cls, message: str, code: int) -> Coded:
        obj = super().__new__(cls, message)
        obj.code = code
        return obj


class _PassThrough(Schema):
    class Meta:
        unknown = INCLUDE


class BooleanLike(fields.Boolean):
    """The vendor's own examples send booleans as ``"true"``; accept both, keep what was sent."""

    def _deserialize(self, value, attr, data, **kwargs):
        super()._deserialize(value, attr, data, **kwargs)
        return value


class IdentifierSchema(_PassThrough):
    type = fields.String(required=True, validate=v.OneOf(sorted(IDENTIFIER_TYPES)))
    value = fields.String(required=True, validate=v.Length(min=1, max=255))

    @validates_schema(skip_on_field_errors=True)
    def _shape_of_value(self, data: dict, **kwargs: Any) -> None:
        check_contact_value(data["type"], data["value"])


class CommChannelSchema(_PassThrough):
    type = fields.String(required=True, validate=v.OneOf(sorted(COMM_CHANNEL_TYPES)))
    value = fields.String(required=True, validate=v.Length(min=1, max=255))
    primary = BooleanLike()
    verified = BooleanLike()
    subscribed = BooleanLike()
    meta = fields.Dict()

    @validates_schema(skip_on_field_errors=True)
    def _shape_of_value(self, data: dict, **kwargs: Any) -> None:
        check_contact_value(data["type"], data["value"])


class ProfileSchema(_PassThrough):
    firstName = fields.String(validate=v.Length(max=100), allow_none=True)
    lastName = fields.String(validate=v.Length(max=100), allow_none=True)
    identifiers = fields.List(
        fields.Nested(IdentifierSchema), required=True, validate=v.Length(min=1, error="must not be empty")
    )
    commChannels = fields.List(fields.Nested(CommChannelSchema))
    source = fields.String(required=True)
    accountId = fields.String(allow_none=True)
    fields_ = fields.Dict(data_key="fields")

    @validates_schema(skip_on_field_errors=False)
    def _source_and_account(self, data: dict, **kwargs: Any) -> None:
        source = data.get("source")
        if source is None:
            return  # reported as missing already
        if source not in SOURCES:
            raise ValidationError(
                Coded(f"invalid source {source!r}: expected one of {', '.join(sorted(SOURCES))}",
                      CODE_INVALID_SOURCE),
                field_name="source",
            )
        if source != "INSTORE" and not (data.get("accountId") or "").strip():
            raise ValidationError(
                Coded(f"accountId is required for source {source}", CODE_ACCOUNT_MISSING),
                field_name="accountId",
            )


class CustomerSchema(_PassThrough):
    profiles = fields.List(
        fields.Nested(ProfileSchema), required=True, validate=v.Length(min=1, error="must not be empty")
    )
    extendedFields = fields.Dict()
    loyaltyInfo = fields.Dict()
    statusLabel = fields.String()
    subscriptionInfo = fields.Dict()


def check_contact_value(kind: str, value: str) -> None:
    if kind == "mobile" and not MOBILE_RE.match(value):
        raise ValidationError(
            Coded("invalid mobile: digits only, with the country code, 8 to 15 digits", CODE_INVALID_MOBILE),
            field_name="value",
        )
    if kind == "email" and not EMAIL_RE.match(value):
        raise ValidationError(Coded("invalid email address", CODE_INVALID_EMAIL), field_name="value")


_SCHEMA = CustomerSchema()


def validate_customer(element: Any) -> list[dict]:
    """Return the element's errors (empty when it may go downstream), in item-error shape."""
    if not isinstance(element, dict):
        return [_error(CODE_DETAILS_MISSING, f"expected a customer object, got {json_kind(element)}", "")]
    errors = _SCHEMA.validate(element)
    return [_error(code, message, path) for path, message, code in _flatten(errors, "")] + _not_lookupable(element)


def _not_lookupable(element: dict) -> list[dict]:
    """The first profile must hold an identifier of a type the lookup takes, or nothing could find the
    customer and every run would add it again.

    Code 8013, the lookup's own "Lookup,Invalid identifier passed": what the downstream answers a lookup by
    any other type. A missing or empty list is the schema's to report.
    """
    profiles = element.get("profiles")
    first = profiles[0] if isinstance(profiles, list) and profiles else None
    identifiers = first.get("identifiers") if isinstance(first, dict) else None
    if not isinstance(identifiers, list) or not identifiers:
        return []
    if any(isinstance(i, dict) and i.get("type") in LOOKUP_TYPES for i in identifiers):
        return []
    path = "profiles[0].identifiers"
    message = (f"{path}: needs at least one identifier the lookup takes ({', '.join(LOOKUP_TYPES)}); "
               "other types are added and changed, but never looked up")
    return [_error(CODE_INVALID_IDENTIFIER, message, path)]


def _flatten(messages: Any, path: str):
    if isinstance(messages, dict):
        for key, inner in messages.items():
            if key == "_schema":
                yield from _flatten(inner, path)
                continue
            child = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
            yield from _flatten(inner, child)
    elif isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict | list):
                yield from _flatten(message, path)
            else:
                leaf = re.sub(r"\[\d+\]$", "", path).rsplit(".", 1)[-1]
                code = getattr(message, "code", None) or _CODE_BY_FIELD.get(leaf, CODE_DETAILS_MISSING)
                yield path, _humanise(path, str(message)), code


def _humanise(path: str, message: str) -> str:
    name = path or "customer"
    if message == "Missing data for required field.":
        return f"{name} is required"
    if message == "Unknown field.":  # pragma: no cover - unknown fields are included, not rejected
        return f"{name} is not a known field"
    return f"{name}: {message[0].lower() + message[1:] if message else message}"


def _error(code: int, message: str, path: str) -> dict:
    return {"status": False, "code": code, "message": message, "field": path}


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, for error messages: "an object", "a string", "null"."""
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number"}
    return kinds.get(type(value), "null" if value is None else "a value")
