"""Query parameters, parsed strictly: a bad value is a 400 that names the parameter."""

from __future__ import annotations

from flask import current_app, request

from api.errors import ApiError


def boolean(name: str, default: bool = False) -> bool:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ApiError(400, "invalid_parameter", f"{name} must be true or false, not {raw[:40]!r}", field=name)


def integer(name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name} must be a whole number, not {raw[:40]!r}", field=name)
    if not minimum <= value <= maximum:
        raise ApiError(400, "invalid_parameter", f"{name} must be between {minimum} and {maximum}", field=name)
    return value


def number(name: str, default: float, *, minimum: float, maximum: float) -> float:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name} must be a number of seconds, not {raw[:40]!r}",
                       field=name)
    if not minimum <= value <= maximum:  # also rejects nan
        raise ApiError(400, "invalid_parameter", f"{name} must be between {minimum:g} and {maximum:g}", field=name)
    return value


def text(name: str, *, max_length: int) -> str | None:
    """A free text of at most ``max_length`` printable characters; None when absent or empty."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_length or not raw.isprintable():
        raise ApiError(400, "invalid_parameter", f"{name} must be at most {max_length} printable characters",
                       field=name)
    return raw


def choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if raw not in allowed:
        raise ApiError(400, "invalid_parameter", f"{name} must be one of {', '.join(allowed)}", field=name)
    return raw


def accepts(*names: str):
    """Declare the query parameters a view takes; any other is refused by :func:`refuse_unknown`."""
    def mark(view):
        view.query_parameters = frozenset(names)
        return view
    return mark


def refuse_unknown() -> None:
    """Refuse a query parameter the route does not take, before anything else runs: a misspelt option
    (``dryrun``, ``skipchangeidentifier``) silently ignored would change what a job does."""
    if not request.args or request.endpoint is None:
        return
    view = current_app.view_functions.get(request.endpoint)
    allowed: frozenset[str] = getattr(view, "query_parameters", frozenset())
    for name in request.args:
        if name not in allowed:
            raise ApiError(400, "unknown_parameter", _unknown_message(name, allowed), field=name[:100])


def _unknown_message(name: str, allowed: frozenset[str]) -> str:
    shown = repr(name[:100])
    if not allowed:
        return f"unknown query parameter {shown}: this route takes none"
    same_but_case = [known for known in allowed if known.lower() == name.lower()]
    hint = f" (did you mean {same_but_case[0]!r}? names are case-sensitive)" if same_but_case else ""
    return f"unknown query parameter {shown}{hint}: this route takes {', '.join(sorted(allowed))}"
