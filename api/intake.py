"""Reading a bulk submission and handing it to the workers."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from api.errors import ApiError
from worker.dispatch.planning import ChainPlanner
from worker.items import csvrows
from worker.items.validation import json_kind
from worker.store.jobstore import JobStore, NewJob
from worker.store.keys import CHUNK

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines")
CSV_TYPES = ("text/csv", "application/csv")
#: Deeper than any customer the v2 APIs accept; deeper input is an attack or a bug.
MAX_DEPTH = 32
#: Longer than any field the v2 APIs accept (values 255, names 100, free text a few KB).
MAX_STRING = 65_536


def request_elements(request, max_items: int) -> Iterable[Any]:
    """The submission's elements: a JSON array is parsed whole, NDJSON is read line by line as it is consumed."""
    mimetype = request.mimetype
    if mimetype in NDJSON_TYPES or mimetype in CSV_TYPES:
        stream = request.stream
        if isinstance(stream, io.RawIOBase):  # Werkzeug's LimitedStream: line by line, it reads a byte per call
            stream = io.BufferedReader(stream, buffer_size=1 << 16)
        return csv_elements(stream, max_items) if mimetype in CSV_TYPES else ndjson_elements(stream, max_items)
    if mimetype in JSON_TYPES or mimetype.endswith("+json"):
        return parse_batch(request.get_data(cache=False), max_items)
    raise ApiError(415, "unsupported_media_type",
                   f"send Content-Type: application/json (a JSON array), application/x-ndjson "
                   f"(one customer per line) or text/csv (a header, then one customer per row), "
                   f"not {mimetype or 'nothing'!r}", field="Content-Type")


def is_csv(request) -> bool:
    return request.mimetype in CSV_TYPES


def csv_elements(stream, max_items: int) -> Iterator[Any]:
    """One element per row of a CSV body (worker/items/csvrows.py), read from the stream as it is consumed.

    UTF-8 with or without a byte order mark, CRLF or LF, RFC 4180 quoting (a quoted cell may hold
    commas, doubled quotes and line breaks). The header is checked first: a column we do not know is a
    400 naming it. A row that is no customer becomes a failed item naming its row; empty rows at the
    end of the file are ignored.
    """
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise ApiError(400, "invalid_body", "the body is empty: send a header row, then one customer per row",
                           field="body")
        try:
            plan = csvrows.header_plan(header)
        except csvrows.ColumnError as exc:
            raise ApiError(400, "unknown_column", exc.message, field=exc.column[:200])
        count = 0
        empty_rows: list[int] = []  # kept back until a customer row follows: empty rows at the end are no items
        for row, cells in enumerate(reader, csvrows.FIRST_ROW):
            if not cells or cells == [""]:
                empty_rows.append(row)
                continue
            if max(map(len, cells)) > MAX_STRING:  # all a row can break of check_shape's limits
                column = next(i for i, cell in enumerate(cells) if len(cell) > MAX_STRING)
                name = header[column].strip() if column < len(header) else f"column {column + 1}"
                raise ApiError(400, "value_too_long", f"row {row}, column {name[:100]} is longer than "
                                                      f"{MAX_STRING} characters", field=f"row {row}")
            elements = [csvrows.empty_row(r) for r in empty_rows] + [csvrows.row_element(plan, cells, row)]
            empty_rows = []
            for element in elements:
                count += 1
                if count > max_items:
                    raise ApiError(413, "too_many_items",
                                   f"more than {max_items} customers in one job (MAX_ITEMS_PER_JOB)", field="body")
                yield element
    except csv.Error as exc:
        raise ApiError(400, "invalid_csv", f"line {reader.line_num} is not valid CSV: {exc}",
                       field=f"line {reader.line_num}")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_body", f"the body is not UTF-8 text (near line {reader.line_num + 1})",
                       field="body")
    finally:
        text.detach()  # the request's stream is the server's to close
    if not count:
        raise ApiError(400, "invalid_body", "the CSV has a header but no rows: nothing to upsert", field="body")


def ndjson_elements(stream, max_items: int) -> Iterator[Any]:
    """One element per line of the request stream, so the body is never held whole."""
    count = 0
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            element = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise ApiError(400, "invalid_json", f"line {number} is not a JSON value: {reason}",
                           field=f"line {number}")
        except RecursionError:
            raise ApiError(400, "invalid_json", f"line {number} nests JSON too deeply", field=f"line {number}")
        count += 1
        if count > max_items:
            raise ApiError(413, "too_many_items",
                           f"more than {max_items} customers in one job (MAX_ITEMS_PER_JOB)", field="body")
        yield element
    if not count:
        raise ApiError(400, "invalid_body", "the body is empty: send one customer per line", field="body")


def check_shape(element: Any, index: int) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings longer than MAX_STRING, naming where.

    The common case (nothing wrong) is checked without building a path for every value, which
    would cost more than the rest of the intake; only a refused element is walked again for its path.
    """
    if _within_limits(element, 1):
        return
    stack: list[tuple[Any, str, int]] = [(element, f"[{index}]", 1)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(400, "too_deep", f"{path} nests deeper than {MAX_DEPTH} levels", field=path)
        if isinstance(value, dict):
            for key in value:
                if len(key) > MAX_STRING:
                    raise ApiError(400, "value_too_long", f"{path} has a key longer than {MAX_STRING} characters",
                                   field=path[:200])
            stack.extend((v, f"{path}.{k}", depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))
        elif isinstance(value, str) and len(value) > MAX_STRING:
            raise ApiError(400, "value_too_long", f"{path} is longer than {MAX_STRING} characters",
                           field=path[:200])


def _within_limits(value: Any, depth: int) -> bool:
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, dict):
        if any(len(key) > MAX_STRING for key in value):
            return False
        value = value.values()
    elif not isinstance(value, list):
        return not isinstance(value, str) or len(value) <= MAX_STRING
    return all(_within_limits(item, depth + 1) for item in value)


def parse_batch(raw: bytes, max_items: int) -> list[Any]:
    """The body as a non-empty JSON array of at most ``max_items`` elements, or a 4xx naming the problem.

    Elements are not validated here: one bad element fails alone, in the worker, while the
    rest of the batch runs.
    """
    if not raw.strip():
        raise ApiError(400, "invalid_body", "the body is empty: send a JSON array of customers", field="body")
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_body", "the body is not UTF-8 text", field="body")
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json",
                       f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                       field="body")
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body nests JSON too deeply", field="body")
    if not isinstance(body, list):
        raise ApiError(400, "invalid_body",
                       f"the body must be a JSON array of customers, not {json_kind(body)}", field="body")
    if not body:
        raise ApiError(400, "invalid_body", "the array is empty: nothing to upsert", field="body")
    if len(body) > max_items:
        raise ApiError(413, "too_many_items",
                       f"{len(body)} customers in one job; at most {max_items} are accepted (MAX_ITEMS_PER_JOB)",
                       field="body")
    return body


def accept(store: JobStore, elements: Iterable[Any], *, tenant: str, skip_change_identifier: bool,
           callback_url: str | None = None, idempotency_key: str | None = None, label: str | None = None,
           admit: Callable[[int], None] | None = None,
           before_commit: Callable[[int], None] | None = None,
           dry_run: bool = False, csv: bool = False, fields: dict[str, str] | None = None) -> str:
    """Store the submission as it is read, then hand the job to the scheduler; answer the job id.

    Each element is checked, planned and written to Redis as it comes, so only one chunk of
    inputs is held at a time; a submission refused part way (a bad line, too many items) is
    removed again and nothing is queued. The intake publishes nothing itself: the workers'
    dispatcher takes the job's items a window at a time (worker/dispatch/scheduler.py).

    With an ``idempotency_key``: the job this key already made for the same submission, or a new
    one. The same key with a different submission (body, skipChangeIdentifier or callbackUrl;
    JSON compared by content, so NDJSON and a JSON array of the same customers are the same) is a
    409. The key is claimed once the whole body is read, because only then is its digest known.

    ``admit`` is called with the items stored so far every chunk of them (api/admission.py): it
    raises to refuse the rest, and then nothing of the submission is left; ``before_commit`` is
    called with the number of items once they are all stored (api/quotas.py), and may refuse too.

    ``dry_run``: the job predicts and writes nothing (worker/items/dryrun.py). ``fields``: more of the job
    document (a real run names the dry run it came from). ``csv``: the elements are rows of a CSV
    body, so item errors tell their row and column.
    """
    new = store.new_job(tenant, dry_run=dry_run, csv=csv)
    # A CSV row's cells were checked as they were read; its element is never deeper than four levels.
    check = None if csv else check_shape
    # A dry run and a real run of the same body are different submissions; the options of a real
    # one stay as they were, so keys given before dry runs existed still match.
    options: list[Any] = [skip_change_identifier, callback_url, *(["dryRun"] if dry_run else [])]
    try:
        next_index, digest = _store_inputs(new, elements, options, check=check,
                                           hashing=idempotency_key is not None, admit=admit)
        if idempotency_key is not None:
            earlier = _earlier_job(store, tenant, idempotency_key, digest)
            if earlier is not None:
                new.abort()
                return earlier
        try:
            if before_commit is not None:
                before_commit(new.count)
            extra = dict(fields or {})
            if callback_url:
                extra["callbackUrl"] = callback_url
            if label:
                extra["label"] = label
            if idempotency_key is not None:  # so the job's end expires the key, however soon it comes
                extra["idempotencyKey"] = store.idempotency_key_name(tenant, idempotency_key)
            job_id = new.commit(skip_change_identifier=skip_change_identifier, next_index=next_index, extra=extra)
        except Exception:
            if idempotency_key is not None:
                store.release_idempotency_key(tenant, idempotency_key)
            raise
    except Exception:
        new.abort()
        raise
    if idempotency_key is not None:
        store.bind_idempotency_key(tenant, idempotency_key, digest, job_id)
    return job_id


def run_dry_run_inputs(store: JobStore, dry_run_id: str, *, tenant: str, skip_change_identifier: bool,
                       admit: Callable[[int], None] | None = None,
                       before_commit: Callable[[int], None] | None = None) -> tuple[str, bool]:
    """The real job of a finished dry run, made from its stored inputs as a submission is: answers its id
    and True, or the job an earlier run of this dry run made and False, so a retried request never
    applies a batch twice. Its callbackUrl and form (CSV or not) are the dry run's."""
    earlier = store.claim_run(dry_run_id)
    if earlier == "pending":
        raise ApiError(409, "run_in_flight", "this dry run is being started by another request; retry shortly",
                       field="jobId")
    if earlier is not None:
        return earlier, False
    try:
        callback, csv_ = store.job_fields(dry_run_id, "callbackUrl", "csv")
        run_id = accept(store, store.iter_inputs(dry_run_id), tenant=tenant,
                        skip_change_identifier=skip_change_identifier, callback_url=callback, csv=csv_ == "1",
                        fields={"dryRunOf": dry_run_id}, admit=admit, before_commit=before_commit)
    except BaseException:
        store.settle_run(dry_run_id, None)  # refused: the dry run may be run again
        raise
    store.settle_run(dry_run_id, run_id)
    return run_id, True


def _store_inputs(new: NewJob, elements: Iterable[Any], options: list[Any], *,
                  hashing: bool, admit: Callable[[int], None] | None = None,
                  check: Callable[[Any, int], None] | None = check_shape) -> tuple[dict[int, int], str]:
    """Check, plan and store every element; answer the chains and the submission's digest ('' unless hashing)."""
    planner = ChainPlanner(new.seen_identifiers())
    digest = hashlib.sha256(_canonical(options)) if hashing else None
    for element in elements:
        if check is not None:
            check(element, new.count)
        planner.add(element)
        new.add(element)
        if new.count % CHUNK == 0:
            planner.flush()
            if admit is not None:
                admit(new.count)
        if digest is not None:
            digest.update(b"\n" + _canonical(element))
    return planner.chains(), digest.hexdigest() if digest is not None else ""


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _earlier_job(store: JobStore, tenant: str, key: str, digest: str) -> str | None:
    """Claim the key for this submission; answer the job it already made, or refuse a different submission."""
    earlier = store.claim_idempotency_key(tenant, key, digest)
    if earlier is None:
        return None
    if earlier["digest"] != digest:
        raise ApiError(409, "idempotency_key_reused",
                       "this Idempotency-Key was used with a different body, skipChangeIdentifier or "
                       "callbackUrl; use a new key for a new batch", field="Idempotency-Key")
    if earlier["jobId"] is None:
        raise ApiError(409, "idempotency_key_in_flight",
                       "a request with this Idempotency-Key is still being accepted; retry shortly",
                       field="Idempotency-Key")
    return earlier["jobId"]
