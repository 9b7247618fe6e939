"""CSV rows as customer elements, and an element's errors told by the row and column they came from.

A column is named by its path in the JSON shape: ``firstName``, ``lastName``, ``source``, ``accountId``,
``identifiers.<type>`` (one column per identifier type), ``commChannels.<type>`` (a primary, verified
channel of that type), ``extendedFields.<name>`` and ``customFields.<name>`` (the profile's ``fields``).
An empty cell is left out. The intake builds the elements (api/intake.py); the worker, which
validates them, tells each error by row and column (worker/items/run.py): both sides read this module,
so the two cannot disagree.

Row numbers are the file's records: the header is row 1, the first customer row 2. A row that cannot
be a customer at all (a cell count unlike the header's, an empty row between others) is stored as a
problem (:data:`PROBLEM`) and fails alone, as a bad element does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker.items.validation import COMM_CHANNEL_TYPES, IDENTIFIER_TYPES

#: The one key of an element that stands for a row that is not a customer: the row's problem.
PROBLEM = "$csvRowProblem"
FIRST_ROW = 2
PROFILE_FIELDS = ("firstName", "lastName", "source", "accountId")
#: Column prefix -> the names it takes (None: any name).
GROUPS: dict[str, frozenset[str] | None] = {
    "identifiers": IDENTIFIER_TYPES, "commChannels": COMM_CHANNEL_TYPES, "extendedFields": None, "customFields": None,
}
COLUMNS_TEXT = ("firstName, lastName, source, accountId, identifiers.<type>, commChannels.<type>, "
                "extendedFields.<name>, customFields.<name>")


class ColumnError(ValueError):
    """A header that cannot be read: ``column`` names the column at fault."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column, self.message = column, message


Setter = Callable[[dict, dict, str], None]


def header_plan(header: list[str]) -> list[Setter]:
    """For each column, how its cell goes into an element; a ColumnError for a column we do not know."""
    seen: set[str] = set()
    plan: list[Setter] = []
    for position, raw in enumerate(header, 1):
        name = raw.strip()
        if not name:
            raise ColumnError(f"column {position}", f"column {position} of the header has no name")
        if name in seen:
            raise ColumnError(name, f"column {name!r} appears twice in the header")
        seen.add(name)
        plan.append(_setter(name))
    if not any(name.startswith("identifiers.") for name in seen):
        raise ColumnError("identifiers", "the header has no identifiers.<type> column: nothing could find or "
                                         "register a customer")
    return plan


def _setter(name: str) -> Setter:
    if name in PROFILE_FIELDS:
        return lambda top, profile, value: profile.__setitem__(name, value)
    group, dot, key = name.partition(".")
    if not dot or group not in GROUPS or not key:
        raise ColumnError(name, f"unknown column {name!r}: columns are {COLUMNS_TEXT}")
    allowed = GROUPS[group]
    if allowed is not None and key not in allowed:
        raise ColumnError(name, f"unknown column {name!r}: {group} types are {', '.join(sorted(allowed))}")
    if group == "identifiers":
        return lambda top, profile, value: profile.setdefault("identifiers", []).append({"type": key, "value": value})
    if group == "commChannels":
        return lambda top, profile, value: profile.setdefault("commChannels", []).append(
            {"type": key, "value": value, "primary": True, "verified": True})
    if group == "customFields":
        return lambda top, profile, value: profile.setdefault("fields", {}).__setitem__(key, value)
    return lambda top, profile, value: top.setdefault("extendedFields", {}).__setitem__(key, value)


def row_element(plan: list[Setter], cells: list[str], row: int) -> dict:
    """The customer of one row; a problem element for a row whose cells do not match the header."""
    if len(cells) != len(plan):
        return {PROBLEM: f"row {row} has {len(cells)} cells where the header has {len(plan)} columns"}
    profile: dict[str, Any] = {}
    top: dict[str, Any] = {"profiles": [profile]}
    for setter, cell in zip(plan, cells, strict=True):
        if cell != "":
            setter(top, profile, cell)
    return top


def empty_row(row: int) -> dict:
    return {PROBLEM: f"row {row} is empty"}


def row_problem(element: Any) -> str | None:
    """The problem a CSV row was stored as, if it was."""
    if isinstance(element, dict) and isinstance(element.get(PROBLEM), str):
        return element[PROBLEM]
    return None


def locate(errors: list[dict], element: Any, index: int) -> list[dict]:
    """The errors of the item at ``index``, each telling its ``row`` and, where one is at fault, its
    ``column``; ``field`` (the path in the element) stays as it was."""
    row = index + FIRST_ROW
    located = []
    for entry in errors:
        column = column_of(str(entry.get("field") or ""), element)
        where = f"row {row}, column {column}" if column else f"row {row}"
        message = str(entry.get("message", ""))
        if column == "identifiers.<type>" and message.endswith(" is required"):
            message = f"every identifiers.<type> cell is empty: a customer needs one ({message})"
        located.append({**entry, "row": row, **({"column": column} if column else {}),
                        "message": message if message.startswith(f"row {row}") else f"{where}: {message}"})
    return located


def column_of(path: str, element: Any) -> str | None:
    """The column a field path of a row's element came from: ``profiles[0].identifiers[1].value`` is the
    column of that identifier's type."""
    path = path.partition("].")[2] if path.startswith("[") else path  # "[3].profiles..." -> "profiles..."
    if path.startswith("extendedFields."):
        return path
    if not path.startswith("profiles[0]."):
        return None
    rest = path.removeprefix("profiles[0].")
    name = rest.split(".", 1)[0].split("[", 1)[0]
    if name in PROFILE_FIELDS:
        return name
    if name == "fields":
        return "customFields." + rest.removeprefix("fields.").split(".", 1)[0] if "." in rest else "customFields"
    if name in ("identifiers", "commChannels"):
        if "[" not in rest:
            return f"{name}.<type>"
        position = rest.split("[", 1)[1].split("]", 1)[0]
        try:
            entry = element["profiles"][0][name][int(position)]
            return f"{name}.{entry['type']}"
        except (KeyError, IndexError, TypeError, ValueError):
            return f"{name}.<type>"
    return None
