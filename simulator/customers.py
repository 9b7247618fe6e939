"""Capillary's customer rules: valid sources and identifier types, validation codes, and the lookup shape.

Everything here is pure (no Flask, no SQLite) so the rules read like the reference they come from,
``docs/capillary-v2.md``; the section numbers below point into it.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

from .store import Customer

# §1.6
SOURCES = (
    "INSTORE",
    "FACEBOOK",
    "WEB_ENGAGE",
    "WECHAT",
    "MARTJACK",
    "TMALL",
    "TAOBAO",
    "JD",
    "ECOMMERCE",
    "WEBSITE",
    "LINE",
    "MOBILE_APP",
)
LOOKUP_SOURCES = (*SOURCES, "ALL", "MAPP_SDK")
# §1.7 and §5
REGISTER_TYPES = (
    "mobile",
    "email",
    "externalId",
    "wechat",
    "martjackId",
    "fbId",
    "tmall_uname",
    "cuid",
    "unionId",
    "ali_uname",
    "jd_uname",
    "vip_uname",
    "mobilePush",
    "line",
    "cardnumber",
)
CHANGE_TYPES = (*REGISTER_TYPES, "cardExternalId")
# §1.7: the lookup takes only these; the other types are valid on add and changeIdentifier, never on lookup.
LOOKUP_TYPES = ("mobile", "email", "externalId", "cardnumber", "wechat", "cardExternalId")
_CANONICAL_TYPES = {name.lower(): name for name in CHANGE_TYPES}
# §3, §6: card status labels this org knows; a card with another label is refused with 3017.
CARD_STATUS_LABELS = ("ACTIVE", "NOT_ISSUED", "SUSPENDED", "EXPIRED")
CARD_LABEL_INVALID = (3017, "status label invalid")
# §3: the customer status labels (card labels on identifiers are checked by refuse_unknown_card_labels).
STATUS_LABELS = (
    "Active",
    "Suspended",
    "Deleted",
    "Fraud suspected",
    "Fraud confirmed",
    "Internal",
    "Pending deletion",
)
LOYALTY_TYPES = ("loyalty", "non_loyalty")
NAME_LIMIT = 100
# Top-level keys that the lookup shape owns; a body cannot smuggle its own values for them.
_RESERVED_TOP_LEVEL = {
    "id",
    "profiles",
    "segments",
    "cardDetails",
    "warnings",
    "errors",
    "createdId",
    "sideEffects",
}
_MOBILE = re.compile(r"\d{8,15}")
_EMAIL = re.compile(r"[A-Za-z0-9_+.\-]+@[A-Za-z0-9_+\-]+(\.[A-Za-z0-9_+\-]+)+")
_ALREADY_ATTACHED = {
    "mobile": (8071, "Mobile already attached with this user"),
    "email": (8072, "Email already attached with this user"),
    "externalId": (8073, "External id already attached with this user"),
}

NOT_FOUND_MESSAGE = "Customer not found for the given identifiers"
NOT_IN_SOURCE_MESSAGE = "No customer found in the given source with the given identifier"


class ApiError(Exception):
    """A documented Capillary error; ``status=None`` means "the configured not-found status"."""

    def __init__(self, code: int, message: str, status: int | None = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def item(code: int, message: str) -> dict[str, Any]:
    return {"status": False, "code": code, "message": message}


def canonical_type(name: Any) -> str | None:
    """Identifier types match case-insensitively: the docs show both ``cardnumber`` and ``cardNumber``."""
    return _CANONICAL_TYPES.get(name.strip().lower()) if isinstance(name, str) else None


def valid_mobile(value: str) -> bool:
    return bool(_MOBILE.fullmatch(value))


def valid_email(value: str) -> bool:
    return len(value) <= 255 and bool(_EMAIL.fullmatch(value))


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float, str)):
        text = str(value).strip()
        return text or None
    return None


def _scope(source: Any, account_id: Any, *, allowed: tuple[str, ...], no_source: ApiError, invalid: ApiError,
           no_account: ApiError) -> tuple[str, str]:
    """The source (upper-cased) and account of a request, or the endpoint's own error for each fault.

    INSTORE is single-account, so its account id is ``""`` whatever the caller sent; every other
    source needs one (the current docs say "mandatory for all the sources except Instore").
    """
    name = _text(source)
    if name is None:
        raise no_source
    name = name.upper()
    if name not in allowed:
        raise invalid
    if name in ("INSTORE", "ALL"):
        return name, ""
    account = _text(account_id)
    if account is None:
        raise no_account
    return name, account


def write_scope(source: Any, account_id: Any) -> tuple[str, str]:
    """Validate the source and account of add, update and changeIdentifier (§3, §4, §5, §1.6)."""
    return _scope(source, account_id, allowed=SOURCES, no_source=ApiError(8004, "No source passed"),
                  invalid=ApiError(3217, "Source is invalid."), no_account=ApiError(8045, "Account id not passed"))


def lookup_scope(source: Any, account_id: Any) -> tuple[str | None, str]:
    """Validate lookup's source and account (§2). Returns ``(None, "")`` for ``ALL``; a missing account is
    "not found" (8015), as the docs say."""
    name, account = _scope(source, account_id, allowed=LOOKUP_SOURCES,
                           no_source=ApiError(8001, "Lookup failed, No source passed"),
                           invalid=ApiError(8003, "Invalid source"),
                           no_account=ApiError(8015, NOT_FOUND_MESSAGE, status=None))
    return (None, "") if name == "ALL" else (name, account)


def get_scope(source: Any, account_id: Any) -> tuple[str, str]:
    """Validate the source and account of ``GET v2/customers/{id}`` (§2, codes of DOC-CODES)."""
    return _scope(source, account_id, allowed=SOURCES, no_source=ApiError(8016, "GET failed, No source passed"),
                  invalid=ApiError(8012, "Get, Invalid source passed"),
                  no_account=ApiError(8091, "GET failed, No account id passed"))


def lookup_keys(names: Any, values: Any) -> list[tuple[str, str]]:
    """Parse ``identifierName``/``identifierValue``, including the comma lists of dual eligibility (§1.7).

    Only the six lookup types are taken (8013 otherwise), however valid the type is on add.
    """
    if not _text(names) or not _text(values):
        raise ApiError(8002, "Lookup failed, No identifiers passed")
    name_list = [n.strip() for n in names.split(",")]
    value_list = [v.strip() for v in values.split(",")]
    if len(name_list) != len(value_list) or not all(value_list):
        raise ApiError(8002, "Lookup failed, No identifiers passed")
    keys = []
    for name, value in zip(name_list, value_list, strict=True):
        id_type = canonical_type(name)
        if id_type not in LOOKUP_TYPES:
            raise ApiError(8013, "Lookup,Invalid identifier passed")
        keys.append((id_type, value))
    return keys


def eligible_keys(keys: list[tuple[str, str]], primary: str | None) -> list[tuple[str, str]]:
    """The keys that may find a customer: all of them, or under dual eligibility only the primary (§1.7)."""
    return keys if primary is None else [key for key in keys if key[0] == primary]


def registration_identifiers(raw: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Clean the identifiers of an add body; return ``(identifiers, warnings)``.

    The first valid identifier is the primary one: an invalid primary is an error (8014), while an invalid
    secondary mobile or email is dropped with warning 8056 / 8055 and the customer is still created.
    """
    identifiers: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for entry in raw if isinstance(raw, list) else []:
        identifier = _identifier(entry, REGISTER_TYPES)
        if identifier is None or (identifier["type"], identifier["value"]) in seen:
            continue
        problem = _format_problem(identifier)
        if problem and not identifiers:
            raise ApiError(
                8014, f"Error in customer registration: Invalid Primary Id - {identifier['value']}"
            )
        if problem:
            warnings.append(item(*problem))
            continue
        seen.add((identifier["type"], identifier["value"]))
        identifiers.append(identifier)
    if not identifiers:
        raise ApiError(8005, "No valid identifiers passed")
    return identifiers, warnings


def change_identifiers(raw: Any) -> list[dict[str, Any]]:
    """Clean one list of a changeIdentifier body; a malformed email or mobile fails the call (§5)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ApiError(8070, "No valid change identifiers detected")
    identifiers = []
    for entry in raw:
        identifier = _identifier(entry, CHANGE_TYPES)
        if identifier is None:
            raise ApiError(8070, "No valid change identifiers detected")
        problem = _format_problem(identifier)
        if problem:
            raise ApiError(*problem)
        identifiers.append(identifier)
    return identifiers


def refuse_unknown_card_labels(
    identifiers: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split off the cards whose status label the org does not know: ``(kept, errors)``.

    The seed's 3017 example (§6): the customer is written, the card is not, and the answer says so in
    ``errors`` next to the id. A card without a label is kept.
    """
    kept, errors = [], []
    for identifier in identifiers:
        label = identifier.get("statusLabel")
        if identifier["type"] == "cardnumber" and label is not None and _card_label(label) not in CARD_STATUS_LABELS:
            errors.append(item(*CARD_LABEL_INVALID))
        else:
            kept.append(identifier)
    return kept, errors


def _card_label(label: Any) -> str:
    return str(label).strip().upper()


def already_attached_warning(identifier: dict[str, Any]) -> dict[str, Any]:
    code, message = _ALREADY_ATTACHED.get(identifier["type"], (8070, "No valid change identifiers detected"))
    return item(code, message)


def _identifier(entry: Any, allowed: tuple[str, ...]) -> dict[str, Any] | None:
    if not isinstance(entry, dict):
        return None
    id_type = canonical_type(entry.get("type"))
    value = _text(entry.get("value"))
    if id_type not in allowed or value is None:
        return None
    extra = {k: v for k, v in entry.items() if k not in ("type", "value")}
    return {"type": id_type, "value": value, **extra}


def _format_problem(identifier: dict[str, Any]) -> tuple[int, str] | None:
    if identifier["type"] == "mobile" and not valid_mobile(identifier["value"]):
        return 8056, f"Invalid mobile {identifier['value']}"
    if identifier["type"] == "email" and not valid_email(identifier["value"]):
        return 8055, f"Invalid email {identifier['value']}"
    return None


def check_status_label(body: dict[str, Any]) -> None:
    label = body.get("statusLabel")
    if label is None:
        return
    if not isinstance(label, str) or label.strip().lower() not in {s.lower() for s in STATUS_LABELS}:
        raise ApiError(8086, "Status label passed is not valid")


def loyalty_type(body: dict[str, Any]) -> str | None:
    info = body.get("loyaltyInfo")
    value = info.get("loyaltyType") if isinstance(info, dict) else None
    if value is None:
        return None
    if value not in LOYALTY_TYPES:
        raise ApiError(8018, f"Invalid loyalty type {value!r}; expected loyalty or non_loyalty")
    return value


def first_profile(body: dict[str, Any]) -> dict[str, Any]:
    profiles = body.get("profiles")
    if isinstance(profiles, list) and profiles and isinstance(profiles[0], dict):
        return profiles[0]
    return {}


def new_document(body: dict[str, Any]) -> dict[str, Any]:
    """What the store keeps for a new customer: the profile's own fields plus every other top-level field."""
    profile = first_profile(body)
    top = {k: v for k, v in body.items() if k not in _RESERVED_TOP_LEVEL}
    top["loyaltyInfo"] = {**_dict(top.get("loyaltyInfo")), "loyaltyType": loyalty_type(body) or "loyalty"}
    top["extendedFields"] = _dict(top.get("extendedFields"))
    return {
        "profile": {
            "firstName": _name(profile.get("firstName")),
            "lastName": _name(profile.get("lastName")),
            "fields": _dict(profile.get("fields")),
            "commChannels": merge_channels([], profile.get("commChannels")),
        },
        "top": top,
    }


def updated_document(customer: Customer, body: dict[str, Any]) -> dict[str, Any]:
    """Apply an update body (§4): names, fields, channels, extended fields merge; identifiers never change."""
    doc = {"profile": dict(customer.doc["profile"]), "top": dict(customer.doc["top"])}
    current = doc["top"]["loyaltyInfo"].get("loyaltyType", "loyalty")
    wanted = loyalty_type(body)
    if current == "loyalty" and wanted == "non_loyalty":
        raise ApiError(8018, "Update failed, loyalty customer cannot be changed to non_loyalty")
    profile = first_profile(body)
    for name in ("firstName", "lastName"):
        if name in profile:
            doc["profile"][name] = _name(profile[name])
    doc["profile"]["fields"] = {**doc["profile"]["fields"], **_dict(profile.get("fields"))}
    doc["profile"]["commChannels"] = merge_channels(
        doc["profile"]["commChannels"], profile.get("commChannels")
    )
    for key, value in body.items():
        if key in _RESERVED_TOP_LEVEL:
            continue
        if key in ("extendedFields", "loyaltyInfo"):
            doc["top"][key] = {**_dict(doc["top"].get(key)), **_dict(value)}
        else:
            doc["top"][key] = value
    return doc


def ignored_identifier_warnings(customer: Customer, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Warning 91005 for each identifier in an update body that the customer does not already have."""
    held = {(i["type"], i["value"]) for i in customer.identifiers}
    warnings = []
    for entry in first_profile(body).get("identifiers") or []:
        identifier = _identifier(entry, CHANGE_TYPES)
        if identifier and (identifier["type"], identifier["value"]) not in held:
            warnings.append(item(91005, f"{identifier['type']} is primary identifier and cannot be updated"))
    return warnings


def merge_channels(current: list[dict[str, Any]], raw: Any) -> list[dict[str, Any]]:
    """Channels are keyed by type: a new channel of a type replaces the old one, others are kept."""
    channels = {channel["type"]: channel for channel in current}
    for entry in raw if isinstance(raw, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            continue
        channel = {
            **entry,
            "primary": _bool(entry.get("primary")),
            "verified": _bool(entry.get("verified")),
            "meta": {"residence": False, "office": False, **_bool_values(_dict(entry.get("meta")))},
            "attributes": _dict(entry.get("attributes")),
        }
        if "subscribed" in entry:
            channel["subscribed"] = _bool(entry["subscribed"])
        channels[entry["type"]] = channel
    return list(channels.values())


def lookup_shape(customer: Customer) -> dict[str, Any]:
    """The customer as ``GET v2/customers/lookup/customerDetails`` returns it (the seed's ``result``)."""
    profile = customer.doc["profile"]
    top = customer.doc["top"]
    created_by, modified_by = _till(customer.created_by), _till(customer.modified_by)
    identifiers = [dict(i) for i in customer.identifiers]
    loyalty = dict(top.get("loyaltyInfo") or {})
    loyalty_info = {
        "loyaltyType": loyalty.pop("loyaltyType", "loyalty"),
        "attributionV2": {
            "createDate": customer.created_at,
            "createdBy": {k: v for k, v in created_by.items() if k != "description"},
            "modifiedBy": {k: v for k, v in modified_by.items() if k != "description"},
            "modifiedDate": customer.modified_at,
            "createdFromSource": customer.source,
        },
        "lifetimePurchases": 0.0,
        **loyalty,
    }
    shape: dict[str, Any] = {
        "id": customer.id,
        "profiles": [
            {
                "firstName": profile["firstName"],
                "lastName": profile["lastName"],
                "attribution": {
                    "createDate": customer.created_at,
                    "createdBy": created_by,
                    "modifiedBy": modified_by,
                    "modifiedDate": customer.modified_at,
                },
                "fields": dict(profile["fields"]),
                "allFields": dict(profile["fields"]),
                "identifiers": identifiers,
                "commChannels": [dict(c) for c in profile["commChannels"]],
                "source": customer.source,
                "userId": customer.id,
                "accountId": customer.account_id,
                "conflictingProfileList": [],
                "autoUpdateTime": customer.modified_at,
                "identifiersAll": [dict(i) for i in identifiers],
            }
        ],
        "loyaltyInfo": loyalty_info,
        "segments": {},
        "associatedWith": top.get("associatedWith") or customer.created_by,
        "extendedFields": dict(top.get("extendedFields") or {}),
        "cardDetails": [_card_details(customer.id, i) for i in identifiers if i["type"] == "cardnumber"],
    }
    for key, value in top.items():
        shape.setdefault(key, value)
    shape["warnings"] = []
    return shape


def _card_details(customer_id: int, card: dict[str, Any]) -> dict[str, Any]:
    """A short ``cardDetails`` entry (§2, the seed's result); a card sent without a label is active."""
    status = _card_label(card.get("statusLabel") or "ACTIVE")
    details = {"cardNumber": card["value"], "customerId": customer_id}
    details.update({k: card[k] for k in ("seriesId", "seriesCode", "cardExternalId") if k in card})
    details["statusInfo"] = {"label": card.get("statusLabel") or status, "status": status,
                             "isActive": status == "ACTIVE"}
    return details


def _till(code: str) -> dict[str, Any]:
    return {
        "id": zlib.crc32(code.encode()) % 100_000_000,
        "code": code,
        "description": "",
        "name": code,
        "type": "TILL",
    }


def _name(value: Any) -> str:
    return value[:NAME_LIMIT] if isinstance(value, str) else ""


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def _bool_values(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _bool(v) if isinstance(v, (bool, str)) and k in ("residence", "office") else v
        for k, v in meta.items()
    }
