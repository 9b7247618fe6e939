"""Structured logs: one JSON object per line, with the job id and item index, and no personal data.

Masking is done by the formatter on the final text of every record, message, arguments and
traceback alike, so no code path can forget it: mobile numbers (10 to 15 digits standing alone)
keep their first two and last two digits, emails their first character and domain, and
credentials after ``Bearer``/``Basic``/``X-CAP-API-OAUTH-TOKEN``/``password=``/``secret=``/``token=``
are replaced whole.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from worker.clock import iso

#: The job and item a log line is about, set by the worker around each item.
CURRENT: contextvars.ContextVar[tuple[str, int | None] | None] = contextvars.ContextVar("log_item", default=None)

_MOBILE = re.compile(r"(?<![\w.])(\+?\d{2})(\d{6,11})(\d{2})(?![\w.])")
#: Ten digits in a row, the least a mobile number above can be: a line without them is not searched for one.
_TEN_DIGITS = re.compile(r"\d{10}")
_EMAIL = re.compile(r"(?<![\w.+-])([A-Za-z0-9])[A-Za-z0-9_.+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
_SECRET = re.compile(
    r"(?i)(bearer\s+|basic\s+|x-cap-api-oauth-token[\"']?\s*[:=]\s*[\"']?|"
    r"(?:password|secret|token|api_token|accesstoken)[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&}]+)"
)
#: Words one of which every credential _SECRET masks follows, case-folded: a line without any is not searched.
_SECRET_WORDS = ("bearer", "basic", "password", "secret", "token")


def mask(text: str) -> str:
    # Each pattern runs only where a cheap test says it may match: a log line goes through here on
    # every item, and most lines hold nothing to mask.
    folded = text.casefold()  # as (?i) folds: the long s and the Kelvin sign too
    if any(word in folded for word in _SECRET_WORDS):
        text = _SECRET.sub(lambda m: m.group(1) + "***", text)
    if "@" in text:
        text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    if _TEN_DIGITS.search(text):
        text = _MOBILE.sub(lambda m: m.group(1) + "*" * len(m.group(2)) + m.group(3), text)
    return text


def mask_value(value: str) -> str:
    """An identifier for a log line: enough to recognise, not enough to use."""
    if len(value) <= 4:
        return "***"
    return value[:2] + "*" * (len(value) - 4) + value[-2:]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": iso(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = CURRENT.get()
        if current is not None:
            entry["jobId"], index = current
            if index is not None:
                entry["index"] = index
        for key in ("jobId", "index", "task"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return mask(json.dumps(entry, default=str))


def configure_logging(level: str | int = "INFO") -> None:
    """JSON lines on stderr for the root logger; werkzeug's per-request lines stay quiet."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else str(level).upper())
    # The JSON lines name no source line, thread or process: logging then need not look them up for
    # every record (the standard library's own switches for this).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # Celery logs two lines per task ("received", "succeeded in"); the worker logs one outcome line
    # per item of its own (worker/items/run.py), and Flower shows every task.
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
