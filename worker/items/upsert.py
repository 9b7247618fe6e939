"""What a worker does with one customer element, as plain functions (the vendor's API: docs/capillary-v2.md).

Every step is safe to repeat: a retried or redelivered item looks the customer up again and
works from what the downstream holds now, so an add that already happened turns into an update,
and a change of identifiers that already happened changes nothing. Transient downstream failures
propagate as :class:`~worker.client.RetryableError` for the task to retry; everything else ends
in an :class:`ItemOutcome`.

Which profile drives the calls: the element's first profile gives the source, account and
identifiers used for lookup (only the types the lookup takes) and change-identifier; the whole
element is the add body and, without its identifiers, the update body, so further profiles and
any field the v2 APIs accept are passed through untouched. The result is read back by id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from worker.downstream.client import NOT_FOUND_CODES, CapillaryClient
from worker.items.validation import LOOKUP_TYPES, validate_customer

CREATED, UPDATED, FAILED, CANCELLED = "CREATED", "UPDATED", "FAILED", "CANCELLED"

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
    #: more about the item, shown after the rest: a dry run's ``changes`` and ``identifierChanges``
    details: dict = field(default_factory=dict)

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
            **self.details,
        }


class Journal(Protocol):
    """What earlier attempts of this one item did downstream, so a retry reports what really happened.

    ``created_id`` / ``record_created``: the customer this item added. Without it a retry after a
    successful add would find the customer and report UPDATED.

    ``add_in_doubt`` / ``mark_add_in_doubt``: an add was sent and its answer never arrived (a timeout, a
    dropped connection, a worker killed mid-call). The mark is set as each add goes out (after its
    rate-limit token, so an add only requeued for a token is not in doubt) and cleared by
    ``record_created`` when the answer names the new customer. A later attempt that finds a customer by
    lookup, or is told 8006, while the mark is set knows that add landed: the customer is the item's own.
    The mark also stays after an add answered without an id (a 429, an 8006 for a racing writer); if that
    run is retried and another writer created the customer meanwhile, the item reports CREATED for it:
    rare, and only the label is wrong.
    """

    def created_id(self) -> int | None: ...

    def record_created(self, user_id: int) -> None: ...

    def add_in_doubt(self) -> bool: ...

    def mark_add_in_doubt(self) -> None: ...


class MemoryJournal:
    """A journal kept in memory: enough when the retries of an item run in one process (tools, tests)."""

    def __init__(self) -> None:
        self._created: int | None = None
        self._in_doubt = False

    def created_id(self) -> int | None:
        return self._created

    def record_created(self, user_id: int) -> None:
        self._created, self._in_doubt = user_id, False

    def add_in_doubt(self) -> bool:
        return self._in_doubt

    def mark_add_in_doubt(self) -> None:
        self._created, self._in_doubt = None, True  # as in the job store: one field, id or mark


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
    problems = validate_customer(element)
    if problems:
        return ItemOutcome(FAILED, errors=problems)
    return upsert_valid_customer(client, element, skip_change_identifier=skip_change_identifier, priority=priority,
                                 journal=journal)


def upsert_valid_customer(
    client: CapillaryClient,
    element: dict,
    *,
    skip_change_identifier: bool,
    priority: Sequence[str],
    journal: Journal | None = None,
) -> ItemOutcome:
    """Steps 2 to 5, for an element :func:`validate_customer` passed (the worker validates first, before it
    takes any lock)."""
    journal = journal or MemoryJournal()
    profile = element["profiles"][0]
    source, account = profile["source"], profile.get("accountId") or None
    identifiers = order_identifiers(profile["identifiers"], priority)
    # Read before this run marks its own add: only an earlier run's unanswered add makes a found customer ours.
    earlier_add_in_doubt = journal.add_in_doubt()

    found, failure = find_customer(client, source, account, identifiers)
    if failure is not None:
        return failure

    warnings: list[dict] = []
    user_id: int | None = None  # set here when this run adds the customer
    holder = found  # the customer as last seen
    fresh = False  # whether ``holder`` was read after our last write, so it is the result as it stands
    if found is None:
        answer = client.add(element, before_send=journal.mark_add_in_doubt)
        warnings += answer.warnings
        created = answer.body.get("createdId")
        if created:
            # The customer exists now, whatever else the answer says. Errors beside the id are a partial
            # success (the seed's 3017: the profile written, a card refused): report what was written.
            user_id = int(created)
            journal.record_created(user_id)
            if answer.errors:
                return _outcome(client, CREATED, user_id, source, account, answer.errors, warnings)
            holder, fresh = _read_back(client, user_id, source, account, warnings), True
        elif CODE_ALREADY_EXISTS not in answer.error_codes:
            return ItemOutcome(FAILED, errors=answer.errors or [error(10001, "Failed to add customer")],
                               warnings=warnings)
        else:
            # 8006: a racing writer (or an earlier attempt of ours whose answer was lost) holds the customer
            # now. Look everything up again, conflicts included, and write our profile over it.
            holder, failure = find_customer(client, source, account, identifiers)
            if failure is not None:
                return failure
            if holder is None:
                # Taken by an identifier the lookup cannot see (a unionId, a line id, ...) of another customer.
                return ItemOutcome(FAILED, errors=answer.errors, warnings=warnings)

    written: str | None
    if user_id is not None:
        written = CREATED
    else:
        assert holder is not None  # found at first, or found again after the 8006
        found_id = _user_id(holder)
        assert found_id is not None  # find_customer answers only customers with an id
        user_id = found_id
        if earlier_add_in_doubt:
            journal.record_created(user_id)
        # What this item has written so far: the add of an earlier attempt, or nothing yet.
        written = CREATED if journal.created_id() == user_id else None
        answer = client.update(user_id, source=source, account_id=account, body=update_body(element))
        warnings += answer.warnings
        if answer.errors:
            if answer.body.get("createdId"):
                written = written or UPDATED  # answered with the id: the update was applied in part
            return _outcome(client, written, user_id, source, account, answer.errors, warnings)
        written = written or UPDATED

    errors: list[dict] = []
    # After a clean add the read-back rarely lacks anything: only an identifier the add dropped (a type it
    # does not register, such as cardExternalId) is moved here.
    if not skip_change_identifier and holder is not None:
        add, remove = identifier_changes(_profile_for(holder, source, account), identifiers)
        if add or remove:
            answer = client.change_identifier(user_id, source=source, account_id=account, add=add, remove=remove)
            warnings += answer.warnings
            errors += answer.errors
            fresh = False
    if fresh:
        return ItemOutcome(written, entity_id=user_id, result=holder, errors=errors, warnings=warnings)
    return _outcome(client, written, user_id, source, account, errors, warnings)


def _outcome(
    client: CapillaryClient, written: str | None, user_id: int, source: str, account: str | None,
    errors: list[dict], warnings: list[dict],
) -> ItemOutcome:
    """The item after its last write: FAILED when nothing was written, else what was written, read back.

    An item with errors after a write keeps ``entityId``, ``action`` and ``result`` and lists the errors,
    so it counts in ``failureCount`` while the caller sees the customer that now exists (the seed's 3017).
    """
    if written is None:
        return ItemOutcome(FAILED, entity_id=user_id, errors=errors, warnings=warnings)
    result = _read_back(client, user_id, source, account, warnings)
    return ItemOutcome(written, entity_id=user_id, result=result, errors=errors, warnings=warnings)


def _read_back(client: CapillaryClient, user_id: int, source: str, account: str | None,
               warnings: list[dict]) -> dict | None:
    """The customer as the downstream holds it now, read by id: a lookup by identifier could miss it under
    dual eligibility, where only the org's primary identifier finds a customer (docs/capillary-v2.md §1.7)."""
    answer = client.get_customer(user_id, source=source, account_id=account)
    if answer.errors:
        warnings += answer.errors  # the writes stand; only reading them back failed
        return None
    return {k: v for k, v in answer.body.items() if k != "warnings"}


def update_body(element: dict) -> dict:
    """The element without identifiers: update cannot change them (docs/capillary-v2.md §4), changeIdentifier does."""
    profiles = [{k: v for k, v in profile.items() if k != "identifiers"} for profile in element["profiles"]]
    return {**element, "profiles": profiles}


def find_customer(
    client: CapillaryClient, source: str, account: str | None, identifiers: list[dict]
) -> tuple[dict | None, ItemOutcome | None]:
    """Look up every identifier of a type the lookup takes; return the customer found, or a failure.

    All of them are looked up, not just the first that hits, because two of them naming different
    customers is a conflict that must stop the item before anything is written. "Not found" is any of
    the codes that mean it, whatever the HTTP status: 8015, and 8065 (known only in another source);
    under dual eligibility every identifier but the org's primary answers 8015.
    """
    found: dict | None = None
    owners: dict[int, dict] = {}
    for identifier in identifiers:
        if identifier["type"] not in LOOKUP_TYPES:
            continue
        answer = client.lookup(source=source, account_id=account, identifier_name=identifier["type"],
                               identifier_value=identifier["value"])
        if answer.error_codes & NOT_FOUND_CODES:
            continue
        if answer.errors:
            return None, ItemOutcome(FAILED, errors=answer.errors, warnings=answer.warnings)
        user_id = _user_id(answer.body)
        if user_id is None:
            return None, ItemOutcome(
                FAILED, errors=[error(10003, f"lookup by {identifier['type']} returned no customer id")]
            )
        if user_id not in owners:
            owners[user_id] = identifier
            found = found or answer.body
    if len(owners) > 1:
        named = ", ".join(f"{ident['type']} belongs to customer {uid}" for uid, ident in owners.items())
        return None, ItemOutcome(
            FAILED,
            errors=[error(CODE_CONFLICTING_PROFILE,
                          f"conflicting profile: the identifiers resolve to different customers ({named}); "
                          "nothing was written")],
        )
    return found, None


def order_identifiers(identifiers: list[dict], priority: Sequence[str]) -> list[dict]:
    rank = {kind: i for i, kind in enumerate(priority)}
    return sorted(identifiers, key=lambda ident: rank.get(ident["type"], len(rank)))


def identifier_changes(current: dict | None, wanted: list[dict]) -> tuple[list[dict], list[dict]]:
    """What to add and remove so the customer holds the wanted identifiers.

    A wanted mobile, email or externalId replaces the customer's value of that type; other
    types (cards, social ids) are only added, never removed, because a customer may hold several.
    Added identifiers go as the input gave them: a card keeps its seriesId, seriesCode, statusLabel.
    """
    held = [{"type": i["type"], "value": i["value"]} for i in (current or {}).get("identifiers") or []]
    held_keys = {(i["type"], i["value"]) for i in held}
    firsts: dict[tuple[str, str], dict] = {}
    for ident in wanted:
        firsts.setdefault((ident["type"], ident["value"]), ident)
    add = [dict(ident) for key, ident in firsts.items() if key not in held_keys]
    replaced_types = {t for t, _ in firsts if t in SINGLE_VALUED_TYPES}
    remove = [i for i in held if i["type"] in replaced_types and (i["type"], i["value"]) not in firsts]
    return add, remove


def _profile_for(customer: dict, source: str, account: str | None) -> dict | None:
    profiles = customer.get("profiles") or []
    for profile in profiles:
        if profile.get("source") == source and (profile.get("accountId") or None) == account:
            return profile
    return profiles[0] if profiles else None


def _user_id(customer: dict) -> int | None:
    value = customer.get("id") or (customer.get("profiles") or [{}])[0].get("userId")
    return int(value) if value is not None else None
