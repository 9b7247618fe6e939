"""Reading a bulk submission and handing it to the workers."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from celery import Celery

from api.errors import ApiError
from worker.jobs import plan_chains
from worker.jobstore import JobStore
from worker.queues import Queues, TaskNames

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines")
#: Deeper than any customer the v2 APIs accept; deeper input is an attack or a bug.
MAX_DEPTH = 32
#: Longer than any field the v2 APIs accept (values 255, names 100, free text a few KB).
MAX_STRING = 65_536


def read_request_batch(request, max_items: int) -> list[Any]:
    """The submission as a list of elements, from a JSON array or NDJSON (one customer per line)."""
    mimetype = request.mimetype
    if mimetype in NDJSON_TYPES:
        elements = parse_ndjson(request.stream, max_items)
    elif mimetype in JSON_TYPES or mimetype.endswith("+json"):
        elements = parse_batch(request.get_data(cache=False), max_items)
    else:
        raise ApiError(415, "unsupported_media_type",
                       f"send Content-Type: application/json (a JSON array) or application/x-ndjson "
                       f"(one customer per line), not {mimetype or 'nothing'!r}", field="Content-Type")
    check_shape(elements)
    return elements


def parse_ndjson(stream, max_items: int) -> list[Any]:
    """Read line by line from the request stream, so the body is never held whole beside its parse."""
    elements: list[Any] = []
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            elements.append(json.loads(line))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise ApiError(400, "invalid_json", f"line {number} is not a JSON value: {reason}",
                           field=f"line {number}")
        except RecursionError:
            raise ApiError(400, "invalid_json", f"line {number} nests JSON too deeply", field=f"line {number}")
        if len(elements) > max_items:
            raise ApiError(413, "too_many_items",
                           f"more than {max_items} customers in one job (MAX_ITEMS_PER_JOB)", field="body")
    if not elements:
        raise ApiError(400, "invalid_body", "the body is empty: send one customer per line", field="body")
    return elements


def check_shape(elements: list[Any]) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings longer than MAX_STRING, naming where."""
    stack: list[tuple[Any, str, int]] = [(e, f"[{i}]", 1) for i, e in enumerate(elements)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(400, "too_deep", f"{path} nests deeper than {MAX_DEPTH} levels", field=path)
        if isinstance(value, dict):
            stack.extend((v, f"{path}.{k}", depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))
        elif isinstance(value, str) and len(value) > MAX_STRING:
            raise ApiError(400, "value_too_long", f"{path} is longer than {MAX_STRING} characters",
                           field=path[:200])


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
                       f"the body must be a JSON array of customers, not a JSON {_kind(body)}", field="body")
    if not body:
        raise ApiError(400, "invalid_body", "the array is empty: nothing to upsert", field="body")
    if len(body) > max_items:
        raise ApiError(413, "too_many_items",
                       f"{len(body)} customers in one job; at most {max_items} are accepted (MAX_ITEMS_PER_JOB)",
                       field="body")
    return body


def submit(store: JobStore, celery: Celery, *, tenant: str, elements: list[Any], skip_change_identifier: bool,
           callback_url: str | None = None) -> str:
    job_id = store.create_job(
        tenant=tenant, elements=elements, skip_change_identifier=skip_change_identifier,
        next_index=plan_chains(elements), extra={"callbackUrl": callback_url} if callback_url else None,
    )
    try:
        celery.send_task(TaskNames.FAN_OUT, args=[job_id], queue=Queues.JOBS)
    except Exception:
        store.redis.delete(store.job_key(job_id))
        raise ApiError(503, "queue_unavailable", "the job queue is unavailable; nothing was queued, try again")
    return job_id


def _kind(value: Any) -> str:
    return {dict: "object", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), "null" if value is None else "value"
    )


def submit_once(store: JobStore, celery: Celery, key: str, *, tenant: str, elements: list[Any],
                skip_change_identifier: bool, callback_url: str | None) -> str:
    """The job this Idempotency-Key already made for the same submission, or a new one.

    The same key with a different submission (body, skipChangeIdentifier or callbackUrl; JSON
    compared by content, so NDJSON and a JSON array of the same customers are the same) is a 409.
    """
    canonical = json.dumps([elements, skip_change_identifier, callback_url], sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    earlier = store.claim_idempotency_key(tenant, key, digest)
    if earlier is not None:
        if earlier["digest"] != digest:
            raise ApiError(409, "idempotency_key_reused",
                           "this Idempotency-Key was used with a different body, skipChangeIdentifier or "
                           "callbackUrl; use a new key for a new batch", field="Idempotency-Key")
        if earlier["jobId"] is None:
            raise ApiError(409, "idempotency_key_in_flight",
                           "a request with this Idempotency-Key is still being accepted; retry shortly",
                           field="Idempotency-Key")
        return earlier["jobId"]
    try:
        job_id = submit(store, celery, tenant=tenant, elements=elements,
                        skip_change_identifier=skip_change_identifier, callback_url=callback_url)
    except Exception:
        store.release_idempotency_key(tenant, key)
        raise
    store.bind_idempotency_key(tenant, key, digest, job_id)
    return job_id
