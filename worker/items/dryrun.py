"""A dry run's item: validated and looked up as the real run would, nothing written; what it would do.

The lookups that decide create-or-update are reads, so a dry run can predict each item:
``WOULD_CREATE`` (nobody found), ``WOULD_UPDATE`` (the customer found, the fields the update would
change as old and new values, the identifiers change-identifier would add and remove, masked) or
``FAILED`` (invalid, conflicting identifiers, a lookup refused), with the same rate limits and
retries as a real item.

Items of one job that share an identifier run one after another (worker/dispatch/planning.py), so a later
one must be predicted against what the earlier ones would have done, not against the downstream as
it is: the second profile with a new mobile is an update of the customer the first one would
create. An item with a successor in its chain therefore leaves its predicted customer in the job's
prediction state (``cu:{job:<j>}:dry``): each of its identifiers leads to that customer (or nowhere,
once removed), and the customer is kept as the item would leave it. A later item reads the state
before it asks the downstream. Entries carry the index that wrote them, and an item ignores entries
of its own or later items, so a delivery run again after a crash predicts as the first one did.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Protocol

from worker.downstream.client import CapillaryClient
from worker.items.upsert import (
    CODE_CONFLICTING_PROFILE,
    FAILED,
    NOT_FOUND_CODES,
    ItemOutcome,
    _profile_for,
    _user_id,
    error,
    identifier_changes,
    order_identifiers,
)
from worker.items.validation import LOOKUP_TYPES
from worker.logs import mask_value
from worker.store.jobstore import WOULD_CREATE, WOULD_UPDATE
from worker.store.keys import identifier_lock_digest

#: Top-level fields the v2 APIs merge key by key on update, so a change is shown per key.
MERGED_FIELDS = ("extendedFields", "loyaltyInfo")


class PredictionState(Protocol):
    """A dry run's prediction state: JSON values by field name (see the module's text)."""

    def read(self, names: list[str]) -> list[Any]: ...

    def write(self, fields: dict[str, Any]) -> None: ...


class MemoryState:
    """The prediction state in a dict, for tools and tests that predict in one process."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}

    def read(self, names: list[str]) -> list[Any]:
        return [copy.deepcopy(self.fields.get(name)) for name in names]

    def write(self, fields: dict[str, Any]) -> None:
        self.fields.update(copy.deepcopy(fields))


def predict_customer(
    client: CapillaryClient,
    element: dict,
    *,
    index: int,
    tenant: str,
    skip_change_identifier: bool,
    priority: Sequence[str],
    state: PredictionState,
    has_successor: bool,
) -> ItemOutcome:
    """What the real run would do with an element :func:`~worker.items.validation.validate_customer` passed.

    ``has_successor``: a later item of the job shares an identifier with this one and runs after it,
    so this item's predicted customer is written to ``state`` for it.
    """
    profile = element["profiles"][0]
    source, account = profile["source"], profile.get("accountId") or None
    identifiers = order_identifiers(profile["identifiers"], priority)

    def identifier_field(ident: dict) -> str:
        return "i:" + identifier_lock_digest(tenant, str(source), str(account or ""), str(ident["type"]),
                                             str(ident["value"]))

    owners, failure = _find_predicted(client, state, index, source, account, identifiers, identifier_field)
    if failure is not None:
        return failure

    if not owners:
        key, found = f"new:{index}", None
        add: list[dict] = []
        remove: list[dict] = []
        outcome = ItemOutcome(WOULD_CREATE, details={
            "changes": field_changes(None, element, source, account),
            "identifierChanges": {"add": [], "remove": []}})
    else:
        ((key, found),) = owners.items()
        if not skip_change_identifier:
            add, remove = identifier_changes(_profile_for(found, source, account), identifiers)
        else:
            add, remove = [], []
        entity_id = int(key[3:]) if key.startswith("id:") else None
        details: dict[str, Any] = {
            "changes": field_changes(found, element, source, account),
            "identifierChanges": {"add": masked(add), "remove": masked(remove)},
        }
        if entity_id is None:  # a customer an earlier item of this job would create
            details["customerOfItem"] = int(key[4:])
        outcome = ItemOutcome(WOULD_UPDATE, entity_id=entity_id, result=found if entity_id is not None else None,
                              details=details)

    if has_successor:
        after = applied(found, element, source, account, add, remove)
        fields: dict[str, Any] = {f"c:{key}": {"by": index, "customer": after}}
        for ident in (_profile_for(after, source, account) or {}).get("identifiers") or []:
            fields[identifier_field(ident)] = {"by": index, "customer": key}
        for ident in remove:
            fields[identifier_field(ident)] = {"by": index, "gone": True}
        state.write(fields)
    return outcome


def _find_predicted(client: CapillaryClient, state: PredictionState, index: int, source: str, account: str | None,
                    identifiers: list[dict], identifier_field) -> tuple[dict[str, dict], ItemOutcome | None]:
    """The customers the item's identifiers lead to, by key (``id:<userId>`` or ``new:<index>``), as earlier
    items of the job would leave them; or the item's failure. As :func:`worker.items.upsert.find_customer`:
    every identifier is looked up, and two customers are a conflict."""
    lookups = [ident for ident in identifiers if ident["type"] in LOOKUP_TYPES]
    earlier = state.read([identifier_field(ident) for ident in lookups])
    owners: dict[str, dict | None] = {}
    for ident, entry in zip(lookups, earlier, strict=True):
        if entry is not None and entry["by"] < index:
            if not entry.get("gone"):
                owners.setdefault(entry["customer"], None)
            continue
        answer = client.lookup(source=source, account_id=account, identifier_name=ident["type"],
                               identifier_value=ident["value"])
        if answer.error_codes & NOT_FOUND_CODES:
            continue
        if answer.errors:
            return {}, ItemOutcome(FAILED, errors=answer.errors, warnings=answer.warnings)
        user_id = _user_id(answer.body)
        if user_id is None:
            return {}, ItemOutcome(FAILED, errors=[error(10003, f"lookup by {ident['type']} returned no customer id")])
        owners.setdefault(f"id:{user_id}", {k: v for k, v in answer.body.items() if k != "warnings"})
    if len(owners) > 1:
        named = ", ".join(f"customer {key[3:]}" if key.startswith("id:") else f"the customer item {key[4:]} would "
                          "create" for key in owners)
        return {}, ItemOutcome(FAILED, errors=[error(
            CODE_CONFLICTING_PROFILE,
            f"conflicting profile: the identifiers resolve to different customers ({named}); nothing would be "
            "written")])
    known: dict[str, dict] = {}
    if owners:
        snapshots = state.read([f"c:{key}" for key in owners])
        for (key, found), snapshot in zip(owners.items(), snapshots, strict=True):
            if snapshot is not None and (snapshot["by"] < index or found is None):
                found = snapshot["customer"]
            known[key] = found or {"id": None, "profiles": []}
    return known, None


def masked(identifiers: list[dict]) -> list[dict]:
    return [{"type": ident["type"], "value": mask_value(str(ident["value"]))} for ident in identifiers]


def field_changes(customer: dict | None, element: dict, source: str, account: str | None) -> dict[str, dict]:
    """What an add would set or an update would change, by path: ``{"firstName": {"old": .., "new": ..}}``.
    Only what the element names and differs; identifiers are ``identifierChanges``."""
    wanted = element["profiles"][0]
    held = (_profile_for(customer, source, account) or {}) if customer else {}
    top = customer or {}
    changes: dict[str, dict] = {}

    def note(path: str, old: Any, new: Any) -> None:
        if old != new:
            changes[path] = {"old": old, "new": new}

    for name in ("firstName", "lastName"):
        if name in wanted:
            note(name, held.get(name) or None, wanted[name])
    for name, value in _dict(wanted.get("fields")).items():
        note(f"fields.{name}", _dict(held.get("fields")).get(name), value)
    channels = {c.get("type"): c.get("value") for c in held.get("commChannels") or [] if isinstance(c, dict)}
    for channel in wanted.get("commChannels") or []:
        if isinstance(channel, dict) and channel.get("type"):
            note(f"commChannels.{channel['type']}", channels.get(channel["type"]), channel.get("value"))
    for key, value in element.items():
        if key == "profiles":
            continue
        if key in MERGED_FIELDS and isinstance(value, dict):
            for name, inner in value.items():
                note(f"{key}.{name}", _dict(top.get(key)).get(name), inner)
        else:
            note(key, top.get(key), value)
    return changes


def applied(customer: dict | None, element: dict, source: str, account: str | None, add: list[dict],
            remove: list[dict]) -> dict:
    """The customer as the item would leave it (the lookup shape's parts that predictions read)."""
    wanted = element["profiles"][0]
    after = copy.deepcopy(customer) if customer else {"id": None, "profiles": []}
    profile = _profile_for(after, source, account)
    if profile is None or customer is None:
        profile = {"source": source, "accountId": account, "identifiers": []}
        after["profiles"] = [profile, *after.get("profiles", [])]
    for name in ("firstName", "lastName"):
        if name in wanted:
            profile[name] = wanted[name]
    profile["fields"] = {**_dict(profile.get("fields")), **_dict(wanted.get("fields"))}
    channels = {c.get("type"): c for c in profile.get("commChannels") or [] if isinstance(c, dict)}
    channels.update({c["type"]: c for c in wanted.get("commChannels") or [] if isinstance(c, dict) and c.get("type")})
    profile["commChannels"] = list(channels.values())
    held = [{"type": i["type"], "value": i["value"]} for i in profile.get("identifiers") or []]
    if customer is None:  # the add registers the element's identifiers
        held = [{"type": i["type"], "value": i["value"]} for i in wanted["identifiers"]]
    gone = {(i["type"], i["value"]) for i in remove}
    held = [i for i in held if (i["type"], i["value"]) not in gone]
    held += [{"type": i["type"], "value": i["value"]} for i in add if {"type": i["type"], "value": i["value"]}
             not in held]
    profile["identifiers"] = held
    for key, value in element.items():
        if key == "profiles":
            continue
        after[key] = {**_dict(after.get(key)), **value} if key in MERGED_FIELDS and isinstance(value, dict) else value
    return after


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}
