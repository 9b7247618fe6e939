"""The public routes: validate, hand over, answer."""

from __future__ import annotations

import json
import re
import time

import redis
from flask import Blueprint, Response, g, jsonify, request, stream_with_context, url_for
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import params
from api.auth import authenticate
from api.errors import ApiError
from api.intake import accept, is_csv, request_elements, run_dry_run_inputs
from api.openapi import build_spec
from api.quotas import check_quotas, tenant_view
from api.services import services
from worker.dispatch.estimate import with_estimate
from worker.downstream.ratelimit import EndpointRate, learned_rates, learning_of
from worker.items.callbacks import callback_problem
from worker.jobs import cancel_job as cancel
from worker.paths import JOBS_PREFIX
from worker.store.health import store_summary
from worker.store.jobstore import COMPLETED

jobs = Blueprint("jobs", __name__, url_prefix=JOBS_PREFIX)

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_WAIT_SECONDS = 60
MAX_PAGE = 1000
#: A job's label (``label=`` at submit): a name for people, such as the file it came from.
MAX_LABEL = 200
#: How far back a listing pages (``offset``): jobs live JOB_TTL_SECONDS, so a tenant's list is bounded anyway.
MAX_LISTED = 10_000
#: Every query parameter the submit route takes; ``label`` is the job's name, given at submit.
SUBMIT_PARAMETERS = ("skipChangeIdentifier", "dryRun", "wait", "callbackUrl", "label")


@jobs.before_request
def _authenticate() -> None:
    g.tenant = authenticate(services().tenants)


@jobs.post("/bulk")
@params.accepts(*SUBMIT_PARAMETERS)
def submit_bulk():
    """Accept a batch; 202 with the job, or with ``wait=`` 200 and the synchronous API's shape."""
    skip = params.boolean("skipChangeIdentifier", False)
    dry_run = params.boolean("dryRun", False)
    wait = params.number("wait", 0, minimum=0, maximum=MAX_WAIT_SECONDS)
    key = idempotency_key()
    label = params.text("label", max_length=MAX_LABEL)
    callback = request.args.get("callbackUrl") or None
    if callback is not None:
        problem = callback_problem(callback, g.tenant)
        if problem:
            raise ApiError(400, "invalid_callback", problem, field="callbackUrl")
    svc = services()
    # Admission (api/admission.py): a body of known length is estimated whole before it is read; one
    # streamed without a length is checked again every chunk of items as they are stored.
    length = request.content_length
    check_quotas(svc.store, g.tenant)
    svc.admission.check(body_bytes=length or 0)
    elements = request_elements(request, svc.settings.max_items_per_job)
    job_id = accept(svc.store, elements, tenant=g.tenant.id, skip_change_identifier=skip, dry_run=dry_run,
                    csv=is_csv(request), callback_url=callback, idempotency_key=key, label=label,
                    admit=None if length else (lambda stored: svc.admission.check(stored_items=stored)),
                    before_commit=lambda count: (check_quotas(svc.store, g.tenant, items=count),
                                                 svc.admission.check(stored_items=count)))
    location = url_for("jobs.get_job", job_id=job_id)
    if wait:
        job = _wait_for(job_id, wait)
        if job.get("finishedAt"):
            items = list(svc.store.iter_results(job_id))
            return jsonify(
                {"response": items, "totalCount": job["totalCount"], "failureCount": job["failureCount"]}
            ), 200, {"Location": location}
    return jsonify(_document(svc.store.get_job(job_id))), 202, {"Location": location}


@jobs.post("/jobs/<job_id>/run")
@params.accepts()
def run_dry_run(job_id: str):
    """Start the real job from a finished dry run's stored inputs: 202 with the new job. Asked again,
    the same job (200), so a retried request never applies a batch twice."""
    dry = _own_job(job_id)
    if not dry.get("dryRun") or dry["state"] != COMPLETED:
        what = "a dry run" if dry.get("dryRun") else "not a dry run"
        raise ApiError(409, "not_a_finished_dry_run",
                       f"job {job_id} is {what} in state {dry['state']}: only a COMPLETED dry run can be run",
                       field="jobId")
    svc = services()
    check_quotas(svc.store, g.tenant)
    run_id, started = run_dry_run_inputs(svc.store, job_id, tenant=g.tenant.id,
                                         skip_change_identifier=dry["skipChangeIdentifier"],
                                         admit=lambda stored: svc.admission.check(stored_items=stored),
                                         before_commit=lambda count: _admit_all(svc, count))
    location = url_for("jobs.get_job", job_id=run_id)
    return jsonify(_document(_own_job(run_id))), 202 if started else 200, {"Location": location}


def _admit_all(svc, count: int) -> None:
    check_quotas(svc.store, g.tenant, items=count)
    svc.admission.check(stored_items=count)


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ApiError(400, "invalid_header", "Idempotency-Key must be 1 to 255 printable characters",
                       field="Idempotency-Key")
    return key


@jobs.get("/jobs")
@params.accepts("state", "limit", "offset")
def list_jobs():
    state = request.args.get("state") or None
    if state is not None:
        state = params.choice("state", "", ("QUEUED", "RUNNING", "COMPLETED", "CANCELLED"))
    limit = params.integer("limit", 20, minimum=1, maximum=100)
    offset = params.integer("offset", 0, minimum=0, maximum=MAX_LISTED)
    found = services().store.list_jobs(g.tenant.id, state=state, limit=limit, skip=offset)
    return jsonify({"jobs": [_document(job) for job in found], "downstreamRates": {
        endpoint: {"perMinute": None if rate.per_minute is None else round(rate.per_minute, 1),
                   "limitPerMinute": rate.ceiling_per_minute, "found": rate.found, "throttled": rate.throttled,
                   "waitedSeconds": round(rate.waited_seconds, 1)}
        for endpoint, rate in _rates().items()}})


@jobs.get("/tenant")
@params.accepts()
def get_tenant():
    """The caller's tenant: its quotas, with use and limit."""
    return jsonify(tenant_view(services().store, g.tenant))


@jobs.get("/jobs/<job_id>")
def get_job(job_id: str):
    return jsonify(_document(_own_job(job_id)))


@jobs.delete("/jobs/<job_id>")
def cancel_job(job_id: str):
    _own_job(job_id)
    svc = services()
    cancel(svc.store, job_id)  # a job it ends at once has its callback scheduled by the end itself
    return jsonify(_document(_own_job(job_id)))


@jobs.get("/jobs/<job_id>/results")
@params.accepts("outcome", "format", "offset", "limit")
def job_results(job_id: str):
    job = _own_job(job_id)
    outcome = params.choice("outcome", "all", ("all", "failed", "succeeded"))
    fmt = params.choice("format", "json", ("json", "ndjson"))
    store = services().store
    if fmt == "ndjson":
        lines = (json.dumps(item, separators=(",", ":")) + "\n" for item in store.iter_results(job_id, outcome=outcome))
        return Response(stream_with_context(lines), mimetype="application/x-ndjson",
                        headers={"Content-Disposition": f'attachment; filename="{job_id}-{outcome}.ndjson"'})
    offset = params.integer("offset", 0, minimum=0, maximum=10_000_000)
    limit = params.integer("limit", 100, minimum=1, maximum=MAX_PAGE)
    return jsonify({
        "response": store.results(job_id, offset=offset, limit=limit, outcome=outcome),
        "totalCount": job["totalCount"],
        "failureCount": job["failureCount"],
        "offset": offset,
        "limit": limit,
    })


def _own_job(job_id: str) -> dict:
    """The job if it exists and belongs to the caller; otherwise 404, so ids of others leak nothing."""
    store = services().store
    if JOB_ID_RE.match(job_id) and store.job_tenant(job_id) == g.tenant.id:
        job = store.get_job(job_id)
        if job is not None:
            return job
    raise ApiError(404, "job_not_found", f"no job {job_id[:64]!r} for this token", field="jobId")


def _rates() -> dict[str, EndpointRate]:
    """The caller's downstream rates as the fleet learned them, read once per request."""
    if "rates" not in g:
        svc = services()
        g.rates = learned_rates(svc.store.redis, g.tenant.id, g.tenant.rate_limits, learning_of(svc.settings))
    return g.rates


def _document(job: dict) -> dict:
    return with_estimate(job, g.tenant, rates=_rates())


def _wait_for(job_id: str, seconds: float) -> dict:
    store = services().store
    deadline = time.monotonic() + seconds
    delay = 0.02
    while True:
        job = store.get_job(job_id) or {}
        if job.get("finishedAt") or time.monotonic() >= deadline:
            return job
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 0.25)


health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@health.get("/readyz")
def readyz():
    """Ready while the store answers; ``store`` says what it is and what is unsafe about it
    (worker/store/health.py): warnings, not a refusal, so a cautious operator's Redis still serves."""
    try:
        store = store_summary(services().store.redis)
    except redis.RedisError:
        raise ApiError(503, "not_ready", "Redis is not reachable", headers={"Retry-After": "5"})
    return jsonify({"status": "ready", "store": store})


@health.get("/openapi.json")
def openapi():
    svc = services()
    if svc.openapi is None:
        svc.openapi = build_spec()
    return jsonify(svc.openapi)


@health.get("/metrics")
def metrics():
    """The whole fleet's counts and gauges, read from Redis (worker/metrics.py). Without Redis there is
    nothing true to say: 503, which Prometheus records as a failed scrape, not as counters reset."""
    try:
        body = generate_latest(services().registry)
    except redis.RedisError:
        raise ApiError(503, "not_ready", "Redis is not reachable: the fleet's metrics live there")
    return Response(body, mimetype=CONTENT_TYPE_LATEST)


