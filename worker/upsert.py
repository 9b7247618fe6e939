"""What a worker does with one customer element (SPEC §4), as plain functions.

Every step is safe to repeat: a retried or redelivered item looks the customer up again and
works from what the downstream holds now, so an add that already happened turns into an update,
and a change of identifiers that already happened changes nothing. Transient downstream failures
propagate as :class:`~worker.client.RetryableError` for the task to retry; everything else ends
in an :class:`ItemOutcome`.

Which profile drives the calls: the element's first profile gives the source, account and
identifiers used for lookup and change-identifier; the whole element is the add/update body,
so further profiles and any field the v2 APIs accept are passed through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from worker.client import ApiResult, CapillaryClient
from worker.validation import validate_customer

CREATED, UPDATED, FAILED, CANCELLED = "CREATED", "UPDATED", "FAILED", "CANCELLED"

CODE_NOT_FOUND = 8015
CODE_ALREADY_EXISTS = 8006
#: Our code for identifiers that resolve to different customers. Capillary reports the same
#: situation as warning 8052 "Conflicting Customers found" on add.
CODE_CONFLICTING_PROFILE = 8052
#: Types a customer holds one of per source: a new value replaces the old one.
SINGLE_VALUED_TYPES = frozenset({"mobile", "email", "externalId"})


@dataclass
class ItemOutcome:
    action: str
    entity_id: int | None = None
    result: dict | None = None
    errors: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.errors) or self.action in (FAILED, CANCELLED)

    def as_item(self, index: int) -> dict:
        """The item as the results API shows it; error fields are paths in the whole submission."""
        errors = [e | {"field": f"[{index}].{e['field']}" if e["field"] else f"[{index}]"} if "field" in e else e
                  for e in self.errors]
        return {
            "index": index,
            "action": self.action,
            "entityId": self.entity_id,
            "result": self.result,
            "errors": errors,
            "warnings": self.warnings,
        }


class Journal(Protocol):
    """Remembers, across attempts of one item, that this item created its customer.

    Without it a retry after a successful add would find the customer and report UPDATED.
    """

    def created_id(self) -> int | None: ...

    def record_created(self, user_id: int) -> None: ...


class MemoryJournal:
    """A journal for one attempt only: enough when nothing retries the item (tools, tests)."""

    def __init__(self) -> None:
        self._created: int | None = None

    def created_id(self) -> int | None:
        return self._created

    def record_created(self, user_id: int) -> None:
        self._created = user_id


def error(code: int, message: str) -> dict:
    return {"status": False, "code": code, "message": message}


def upsert_customer(
    client: CapillaryClient,
    element: Any,
    *,
    skip_change_identifier: bool,
    priority: Sequence[str],
    journal: Journal | None = None,
) -> ItemOutcome:
    """Run steps 1 to 5 for one element; raise RetryableError for the caller to retry."""
    journal = journal or MemoryJournal()
    problems = validate_customer(element)
    if problems:
        return ItemOutcome(FAILED, errors=problems)

    profile = element["profiles"][0]
    source, account = profile["source"], profile.get("accountId") or None
    identifiers = order_identifiers(profile["identifiers"], priority)

    found, matched_by, failure = find_customer(client, source, account, identifiers)
    if failure is not None:
        return failure

    warnings: list[dict] = []
    # Whether ``found`` was read after our last write: then it is the result, with no further lookup.
    read_after_write = False
    if found is None:
        created_id, outcome = _add(client, element, journal, warnings)
        if outcome is not None:
            return outcome
        if created_id is not None:
            found = _read_back(client, source, account, matched_by)
            read_after_write = True
        else:
            # 8006: a racing writer (or an earlier attempt of ours whose answer was lost) holds the customer
            # now. Look everything up again, conflicts included, and write our profile over it.
            found, matched_by, failure = find_customer(client, source, account, identifiers)
            if failure is not None:
                return failure
        if found is None:
            return ItemOutcome(FAILED, errors=[error(CODE_NOT_FOUND, "customer not found right after adding it")],
                               warnings=warnings)
    if not read_after_write:
        answer = client.update(_user_id(found), source=source, account_id=account, body=element)
        warnings += answer.warnings
        if answer.errors:
            return ItemOutcome(FAILED, entity_id=_user_id(found), errors=answer.errors, warnings=warnings)

    user_id = _user_id(found)
    action = CREATED if journal.created_id() == user_id else UPDATED
    errors: list[dict] = []
    if not skip_change_identifier:
        add, remove = identifier_changes(_profile_for(found, source, account), identifiers)
        if add or remove:
            answer = client.change_identifier(user_id, source=source, account_id=account, add=add, remove=remove)
            warnings += answer.warnings
            errors += answer.errors
            read_after_write = False

    result = found
    if not read_after_write:
        final = _read_back(client, source, account, matched_by)
        result = final if final is not None else found
    return ItemOutcome(action, entity_id=user_id, result=_without_warnings(result), errors=errors,
                       warnings=warnings)


def _add(
    client: CapillaryClient, element: dict, journal: Journal, warnings: list[dict]
) -> tuple[int | None, ItemOutcome | None]:
    """Add the customer: its new id, or (None, None) when it exists already, or (None, the failure)."""
    answer = client.add(element)
    warnings += answer.warnings
    created = answer.body.get("createdId")
    if created and not answer.errors:
        journal.record_created(int(created))
        return int(created), None
    if CODE_ALREADY_EXISTS in answer.error_codes:
        return None, None  # another writer won, or an earlier attempt of ours: look up and update
    return None, ItemOutcome(FAILED, errors=answer.errors or [error(10001, "Failed to add customer")],
                             warnings=warnings)


def _lookup(client: CapillaryClient, source: str, account: str | None, identifier: dict) -> ApiResult:
    return client.lookup(
        source=source, account_id=account, identifier_name=identifier["type"], identifier_value=identifier["value"]
    )


def _read_back(client: CapillaryClient, source: str, account: str | None, identifier: dict) -> dict | None:
    """The customer as the downstream holds it now, in lookup shape; None when the lookup finds nothing."""
    answer = _lookup(client, source, account, identifier)
    return None if answer.errors else answer.body


def find_customer(
    client: CapillaryClient, source: str, account: str | None, identifiers: list[dict]
) -> tuple[dict | None, dict, ItemOutcome | None]:
    """Look up every identifier; return the customer, the identifier that found it, or a failure.

    All identifiers are looked up, not just the first that hits, because two of them naming
    different customers is a conflict that must stop the item before anything is written.
    """
    found: dict | None = None
    matched_by = identifiers[0]
    owners: dict[int, dict] = {}
    for identifier in identifiers:
        answer = _lookup(client, source, account, identifier)
        if answer.errors:
            if answer.error_codes == {CODE_NOT_FOUND}:
                continue
            return None, matched_by, ItemOutcome(FAILED, errors=answer.errors, warnings=answer.warnings)
        user_id = _user_id(answer.body)
        if user_id is None:
            return None, matched_by, ItemOutcome(
                FAILED, errors=[error(10003, f"lookup by {identifier['type']} returned no customer id")]
            )
        if user_id not in owners:
            owners[user_id] = identifier
            if found is None:
                found, matched_by = answer.body, identifier
    if len(owners) > 1:
        named = ", ".join(f"{ident['type']} belongs to customer {uid}" for uid, ident in owners.items())
        return None, matched_by, ItemOutcome(
            FAILED,
            errors=[error(CODE_CONFLICTING_PROFILE,
                          f"conflicting profile: the identifiers resolve to different customers ({named}); "
                          "nothing was written")],
        )
    return found, matched_by, None


def order_identifiers(identifiers: list[dict], priority: Sequence[str]) -> list[dict]:
    rank = {kind: i for i, kind in enumerate(priority)}
    return sorted(identifiers, key=lambda ident: rank.get(ident["type"], len(rank)))


def identifier_changes(current: dict | None, wanted: list[dict]) -> tuple[list[dict], list[dict]]:
    """What to add and remove so the customer holds the wanted identifiers.

    A wanted mobile, email or externalId replaces the customer's value of that type; other
    types (cards, social ids) are only added, never removed, because a customer may hold several.
    """
    held = [{"type": i["type"], "value": i["value"]} for i in (current or {}).get("identifiers") or []]
    held_keys = {(i["type"], i["value"]) for i in held}
    wanted_keys = {(i["type"], i["value"]) for i in wanted}
    add = [{"type": t, "value": v} for t, v in dict.fromkeys((i["type"], i["value"]) for i in wanted)
           if (t, v) not in held_keys]
    replaced_types = {t for t, _ in wanted_keys if t in SINGLE_VALUED_TYPES}
    remove = [i for i in held if i["type"] in replaced_types and (i["type"], i["value"]) not in wanted_keys]
    return add, remove


def _profile_for(customer: dict, source: str, account: str | None) -> dict | None:
    profiles = customer.get("profiles") or []
    for profile in profiles:
        if profile.get("source") == source and (profile.get("accountId") or None) == account:
            return profile
    return profiles[0] if profiles else None


def _user_id(customer: dict | ApiResult | None) -> int | None:
    body = customer.body if isinstance(customer, ApiResult) else customer
    if not body:
        return None
    value = body.get("id") or (body.get("profiles") or [{}])[0].get("userId")
    return int(value) if value is not None else None


def _without_warnings(result: dict | None) -> dict | None:
    if result is None:
        return None
    return {k: v for k, v in result.items() if k != "warnings"}
