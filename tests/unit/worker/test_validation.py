"""The quick check of the common shape never lets through an element the schemas refuse."""

from __future__ import annotations

import copy
import itertools

from worker.items.validation import _SCHEMA, _error, _flatten, _not_lookupable, _plainly_valid, validate_customer

GOOD = {"profiles": [{"firstName": "Ann", "lastName": None, "source": "WEB_ENGAGE", "accountId": "acc1",
                      "identifiers": [{"type": "externalId", "value": "E-1"},
                                      {"type": "mobile", "value": "919800000001"},
                                      {"type": "email", "value": "ann@example.com", "extra": 1}]}]}

#: One change each: (path to the dict, key, new value), REMOVE to take the key away.
REMOVE = object()
CHANGES = [
    (("profiles", 0), "firstName", "x" * 101), (("profiles", 0), "firstName", 7),
    (("profiles", 0), "lastName", "y" * 100),
    (("profiles", 0), "source", "NOPE"), (("profiles", 0), "source", None), (("profiles", 0), "source", REMOVE),
    (("profiles", 0), "source", "INSTORE"), (("profiles", 0), "accountId", "  "), (("profiles", 0), "accountId", 5),
    (("profiles", 0), "accountId", REMOVE), (("profiles", 0), "identifiers", []),
    (("profiles", 0), "identifiers", None),
    (("profiles", 0), "identifiers", ["E-1"]), (("profiles", 0), "commChannels", [{"type": "fax", "value": "1"}]),
    (("profiles", 0), "fields", "not a dict"), (("profiles", 0), "fields", {"a": 1}),
    (("profiles", 0, "identifiers", 0), "type", "nope"), (("profiles", 0, "identifiers", 0), "value", ""),
    (("profiles", 0, "identifiers", 0), "value", "v" * 256), (("profiles", 0, "identifiers", 0), "value", 12),
    (("profiles", 0, "identifiers", 1), "value", "12"), (("profiles", 0, "identifiers", 1), "value", "9198000000\n"),
    (("profiles", 0, "identifiers", 2), "value", "ann@"), (("profiles", 0, "identifiers", 2), "type", REMOVE),
    ((), "profiles", []), ((), "profiles", {"a": 1}), ((), "profiles", ["not a profile"]), ((), "loyaltyInfo", "x"),
    ((), "statusLabel", 3), ((), "unknownField", {"kept": True}),
]


def changed(element: dict, changes) -> dict | None:
    """``element`` with ``changes`` made, or None where one change took away what the next changes."""
    element = copy.deepcopy(element)
    for path, key, value in changes:
        target = element
        try:
            for step in path:
                target = target[step]
        except (IndexError, KeyError, TypeError):
            return None
        if not isinstance(target, dict):
            return None
        if value is REMOVE:
            target.pop(key, None)
        else:
            target[key] = value
    return element


def test_an_element_the_schemas_refuse_is_refused_with_their_errors_and_one_they_pass_quickly_passes():
    elements = [GOOD, {"profiles": [GOOD["profiles"][0], {**GOOD["profiles"][0], "source": "INSTORE"}]}]
    elements += [changed(GOOD, [change]) for change in CHANGES]
    elements += [changed(GOOD, pair) for pair in itertools.combinations(CHANGES, 2)]
    quick = 0
    for element in filter(None, elements):
        schema_errors = _SCHEMA.validate(copy.deepcopy(element))
        quick += _plainly_valid(element)
        assert not (_plainly_valid(element) and schema_errors), element
        the_schemas_say = [_error(code, message, path) for path, message, code in _flatten(schema_errors, "")]
        assert validate_customer(element) == the_schemas_say + _not_lookupable(element)
    assert quick > 2 and validate_customer(GOOD) == []
