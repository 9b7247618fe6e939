"""Reading a file of customers to submit: a JSON array, NDJSON or CSV, checked before it is sent."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.errors import CliError

NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".ldjson")
CSV_SUFFIXES = (".csv",)
BOM = b"\xef\xbb\xbf"
#: NDJSON is sent in chunks of about this many bytes, read from the file as they go.
CHUNK_BYTES = 1 << 16


@dataclass
class Batch:
    """A file of customers, checked; ``body()`` reads it again to send it (NDJSON a chunk at a time)."""

    path: Path
    kind: str  # "json" (an array), "ndjson" or "csv"
    count: int
    body: Callable[[], Iterator[bytes]]

    @property
    def content_type(self) -> str:
        return {"ndjson": "application/x-ndjson", "csv": "text/csv"}.get(self.kind, "application/json")


def open_batch(path: Path) -> Batch:
    """Check a file of customers: a JSON array, NDJSON (one customer per line) or CSV (a header row naming
    columns by their JSON path, then one customer per row; by its extension, or by a header that names
    an ``identifiers.`` column). The API checks a CSV's columns and rows; it is sent as it is.

    Lines of a results export (``customer-upsert results JOB --failed``) count as their ``input``,
    so a failed export is a batch to resubmit. Every problem is a CliError naming the file.
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except FileNotFoundError:
        raise CliError(f"{path}: no such file")
    except IsADirectoryError:
        raise CliError(f"{path} is a directory, not a file of customers")
    except PermissionError:
        raise CliError(f"{path}: cannot read it (permission denied)")
    except OSError as exc:
        raise CliError(f"{path}: cannot read it ({exc.strerror or exc})")
    if b"\0" in head:
        raise CliError(f"{path} is a binary file, not JSON or NDJSON")
    start = head.removeprefix(BOM).lstrip()
    if not start:
        raise CliError(f"{path} is empty: no customers in it")
    if path.name.lower().endswith(CSV_SUFFIXES) or (
            not start.startswith((b"[", b"{")) and b"identifiers." in start.split(b"\n", 1)[0]):
        return _csv(path)
    if start.startswith(b"["):
        return _json_array(path)
    if start.startswith(b"{"):
        return _ndjson(path)
    raise CliError(f"{path}: expected a JSON array of customers, NDJSON (one customer per line), or CSV (a header "
                   f"row naming columns such as identifiers.mobile, then one customer per row)")


def read_batch(path: Path) -> list:
    """The file's customers as a list (for tests and small files; submitting streams NDJSON instead)."""
    batch = open_batch(path)
    if batch.kind == "json":
        return json.loads(b"".join(batch.body()))
    return [json.loads(line) for chunk in batch.body() for line in chunk.splitlines() if line.strip()]


def _is_export_line(value: Any) -> bool:
    return isinstance(value, dict) and "input" in value and "action" in value and "index" in value


def _as_input(element: Any) -> Any:
    return element["input"] if _is_export_line(element) else element


def _not_json(path: Path, exc: ValueError, line: int | None = None) -> CliError:
    if isinstance(exc, UnicodeDecodeError):
        return CliError(f"{path} is not UTF-8 text (a binary file?)")
    if isinstance(exc, json.JSONDecodeError):
        if line is not None:
            return CliError(f"{path}: line {line} is not JSON ({exc.msg})")
        return CliError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})")
    return CliError(f"{path}: not JSON ({exc})")


def _single_object(path: Path) -> CliError:
    return CliError(f"{path} holds one JSON object; the API takes a JSON array of customers ([{{...}}, ...]) "
                    f"or NDJSON (one customer per line, in a file named .ndjson)")


def _json_array(path: Path) -> Batch:
    try:
        data = json.loads(path.read_bytes().removeprefix(BOM).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _not_json(path, exc)
    except RecursionError:
        raise CliError(f"{path}: nests JSON too deeply")
    if not isinstance(data, list):
        raise CliError(f"{path}: expected a JSON array of customers")
    if not data:
        raise CliError(f"{path} holds an empty array: no customers in it")
    body = json.dumps([_as_input(element) for element in data]).encode()
    return Batch(path, "json", len(data), lambda: iter([body]))


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The file's non-blank lines with their numbers, a leading byte order mark dropped."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if number == 1:
                line = line.removeprefix(BOM)
            if line.strip():
                yield number, line


def _ndjson(path: Path) -> Batch:
    """One pass to check every line (nothing is held but the line), then ``body`` streams the file."""
    count, exported, first = 0, False, None
    for number, line in _lines(path):
        try:
            value = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if count == 0:
                _whole_file_is_one_object(path)
            raise _not_json(path, exc, number)
        except RecursionError:
            raise CliError(f"{path}: line {number} nests JSON too deeply")
        count += 1
        first = value if count == 1 else None
        exported = exported or _is_export_line(value)
    if count == 1 and isinstance(first, dict) and not path.name.lower().endswith(NDJSON_SUFFIXES):
        raise _single_object(path)

    def body() -> Iterator[bytes]:
        buffer: list[bytes] = []
        size = 0
        for _number, line in _lines(path):
            if exported:
                value = json.loads(line)
                if _is_export_line(value):
                    line = json.dumps(value["input"], separators=(",", ":")).encode()
            if not line.endswith(b"\n"):
                line += b"\n"
            buffer.append(line)
            size += len(line)
            if size >= CHUNK_BYTES:
                yield b"".join(buffer)
                buffer, size = [], 0
        if buffer:
            yield b"".join(buffer)

    return Batch(path, "ndjson", count, body)


def _csv(path: Path) -> Batch:
    """A CSV file, sent as it is, a chunk at a time; ``count`` is its lines after the header (a quoted
    cell may hold line breaks: the API counts the rows)."""
    with path.open("rb") as handle:
        count = max(sum(1 for line in handle if line.strip()) - 1, 0)
    if not count:
        raise CliError(f"{path} has a header but no rows: no customers in it")

    def body() -> Iterator[bytes]:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                yield chunk

    return Batch(path, "csv", count, body)


def _whole_file_is_one_object(path: Path) -> None:
    """A file whose first line is not JSON may be one pretty-printed object: say so if it is."""
    try:
        value = json.loads(path.read_bytes().removeprefix(BOM).decode("utf-8"))
    except (ValueError, RecursionError):
        return
    if isinstance(value, dict):
        raise _single_object(path)
