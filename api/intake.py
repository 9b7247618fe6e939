"""Reading a bulk submission and handing it to the workers."""

from __future__ import annotations

import json
from typing import Any

from celery import Celery

from api.errors import ApiError
from worker.jobs import plan_chains
from worker.jobstore import JobStore
from worker.queues import Queues, TaskNames


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


def submit(store: JobStore, celery: Celery, *, tenant: str, elements: list[Any], skip_change_identifier: bool) -> str:
    job_id = store.create_job(
        tenant=tenant, elements=elements, skip_change_identifier=skip_change_identifier,
        next_index=plan_chains(elements),
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
