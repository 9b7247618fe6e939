"""The OpenAPI document of the public API, built with apispec from marshmallow schemas.

The request schema of a customer is the one the worker validates with (worker/items/validation.py), so
the document cannot drift from what is enforced; the response schemas below describe what the
views and the job store produce, and the schemathesis test holds the service to them.
"""

from __future__ import annotations

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields
from marshmallow import validate as v

from worker.items.validation import CustomerSchema
from worker.paths import JOBS_PREFIX as JOBS
from worker.store.jobstore import CANCELLED, COMPLETED, QUEUED, RUNNING

STATES = [QUEUED, RUNNING, COMPLETED, CANCELLED]


class ErrorEntry(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    field = fields.String()


class ErrorBody(Schema):
    errors = fields.List(fields.Nested(ErrorEntry), required=True)


class Job(Schema):
    jobId = fields.String(required=True)
    label = fields.String(required=True, allow_none=True, metadata={"description": "the name given at submit"})
    state = fields.String(required=True, validate=v.OneOf(STATES))
    skipChangeIdentifier = fields.Boolean(required=True)
    totalCount = fields.Integer(required=True)
    processedCount = fields.Integer(required=True)
    successCount = fields.Integer(required=True)
    failureCount = fields.Integer(required=True)
    createdCount = fields.Integer(required=True)
    updatedCount = fields.Integer(required=True)
    cancelledCount = fields.Integer(required=True)
    createdAt = fields.String(required=True)
    startedAt = fields.String(required=True, allow_none=True)
    finishedAt = fields.String(required=True, allow_none=True)
    dryRun = fields.Boolean(required=True, metadata={"description": "a dry run: predictions, nothing written"})
    wouldCreateCount = fields.Integer(metadata={"description": "dry runs: items that would create a customer"})
    wouldUpdateCount = fields.Integer(metadata={"description": "dry runs: items that would update one"})
    runJobId = fields.String(allow_none=True, metadata={"description": "dry runs: the real job run from it"})
    dryRunOf = fields.String(metadata={"description": "a job run from a dry run: that dry run"})
    estimatedSecondsLeft = fields.Float(allow_none=True)
    estimatedCompletionAt = fields.String(allow_none=True)


class ItemError(Schema):
    status = fields.Boolean()
    code = fields.Integer(required=True)
    message = fields.String(required=True)
    field = fields.String()
    attempts = fields.Integer()
    lastStatus = fields.Integer(allow_none=True)
    row = fields.Integer(metadata={"description": "CSV submissions: the row of the file (the header is row 1)"})
    column = fields.String(metadata={"description": "CSV submissions: the column at fault"})


class Item(Schema):
    index = fields.Integer(required=True)
    action = fields.String(required=True, validate=v.OneOf(["CREATED", "UPDATED", "FAILED", "CANCELLED", "PENDING",
                                                             "WOULD_CREATE", "WOULD_UPDATE"]))
    entityId = fields.Integer(required=True, allow_none=True)
    result = fields.Dict(required=True, allow_none=True, metadata={"description": "the customer in lookup shape"})
    errors = fields.List(fields.Nested(ItemError), required=True)
    warnings = fields.List(fields.Dict(), required=True)
    input = fields.Raw(metadata={"description": "failed items only: the element as submitted"})
    changes = fields.Dict(metadata={"description": "dry runs: by field path, {old, new}: what the add would set or "
                                                   "the update would change"})
    identifierChanges = fields.Dict(metadata={"description": "dry runs: {add, remove}: the identifiers "
                                                             "changeIdentifier would add and remove, values masked"})
    customerOfItem = fields.Integer(metadata={"description": "dry runs: the update is of the customer this earlier "
                                                             "item would create"})


class ResultsPage(Schema):
    response = fields.List(fields.Nested(Item), required=True)
    totalCount = fields.Integer(required=True)
    failureCount = fields.Integer(required=True)
    offset = fields.Integer(required=True)
    limit = fields.Integer(required=True)


class SyncResponse(Schema):
    response = fields.List(fields.Nested(Item), required=True)
    totalCount = fields.Integer(required=True)
    failureCount = fields.Integer(required=True)


class Quota(Schema):
    quota = fields.String(required=True, validate=v.OneOf(["max_concurrent_jobs", "max_pending_items",
                                                           "max_items_per_day"]))
    used = fields.Integer(required=True)
    limit = fields.Integer(required=True, metadata={"description": "0: no limit"})
    counts = fields.String(required=True, metadata={"description": "what the use counts"})


class TenantView(Schema):
    tenant = fields.String(required=True)
    quotas = fields.List(fields.Nested(Quota), required=True)
class DownstreamRate(Schema):
    perMinute = fields.Float(required=True, allow_none=True,
                             metadata={"description": "calls a minute let through now; null: not limited"})
    limitPerMinute = fields.Float(required=True, allow_none=True,
                                  metadata={"description": "the configured ceiling (CAPILLARY_RATE_LIMITS)"})
    found = fields.Boolean(required=True, metadata={
        "description": "the rate is the configured limit or was found from the downstream's 429s, not a slow "
                       "start still growing"})
    throttled = fields.Integer(required=True, metadata={"description": "429 answers seen"})
    waitedSeconds = fields.Float(required=True, metadata={"description": "seconds calls waited for tokens"})


class JobList(Schema):
    jobs = fields.List(fields.Nested(Job), required=True)
    downstreamRates = fields.Dict(keys=fields.String(), values=fields.Nested(DownstreamRate), metadata={
        "description": "the caller's rate per downstream endpoint (lookup, add, update, changeIdentifier), as "
                       "the fleet learned it; the 429s and waits while the learned state lasts"})


def _errors(*statuses: int) -> dict:
    text = {400: "the request names what is wrong; an unknown query parameter is refused as unknown_parameter, "
                 "naming it (names are case-sensitive), so a misspelt option never changes what a job does",
            401: "no or wrong bearer token", 404: "no such job for this token",
            409: "Idempotency-Key reused with another body; for run: the job is not a COMPLETED dry run",
            429: "a quota of the tenant is used up (quota_exceeded); Retry-After says when to try again",
            413: "body or item count too large",
            415: "not JSON, NDJSON or CSV",
            503: "the job store cannot take it now: store_unavailable (unreachable, read-only, loading) or "
                 "store_full (past the admission watermark, or out of memory); Retry-After says when to try again"}
    return {str(s): {"description": text[s], "content": {"application/json": {"schema": "ErrorBody"}}}
            for s in statuses}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"in": "query", "name": name, "schema": schema, "description": description}


JOB_ID = {"in": "path", "name": "jobId", "required": True, "schema": {"type": "string"}}


def build_spec() -> dict:
    spec = APISpec(title="customer-upsert", version="1", openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()],
                   info={"description": "Asynchronous bulk customer upsert into a Capillary-style v2 API."})
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for name, schema in (("ErrorBody", ErrorBody), ("Job", Job), ("Item", Item), ("ResultsPage", ResultsPage),
                         ("SyncResponse", SyncResponse), ("JobList", JobList), ("TenantView", TenantView),
                         ("Customer", CustomerSchema)):
        spec.components.schema(name, schema=schema)
    job = {"content": {"application/json": {"schema": "Job"}}}
    spec.path(path=f"{JOBS}/bulk", operations={"post": {
        "summary": "Submit a batch of customers as one job",
        "security": [{"bearer": []}],
        "parameters": [
            _query("skipChangeIdentifier", {"type": "boolean"}, "leave identifiers as they are"),
            _query("dryRun", {"type": "boolean"},
                   "validate and look up only, write nothing: each item says WOULD_CREATE, WOULD_UPDATE or "
                   "FAILED, with the fields (changes) and identifiers (identifierChanges) it would change; "
                   "POST .../jobs/{jobId}/run applies it"),
            _query("wait", {"type": "number", "minimum": 0, "maximum": 60},
                   "seconds to wait; if the job ends in time, 200 with the synchronous shape"),
            _query("callbackUrl", {"type": "string"}, "POSTed the final job document, signed"),
            _query("label", {"type": "string", "maxLength": 200},
                   "a name for people, shown with the job (the command line sends the file's name)"),
            {"in": "header", "name": "Idempotency-Key", "schema": {"type": "string", "maxLength": 255}},
        ],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"type": "array", "minItems": 1, "items": {"$ref":
                                                                                     "#/components/schemas/Customer"}}},
            "application/x-ndjson": {"schema": {"type": "string"}},
            "text/csv": {"schema": {"type": "string", "description":
                         "a header row, then one customer a row; columns named by their JSON path: firstName, "
                         "lastName, source, accountId, identifiers.<type>, commChannels.<type>, "
                         "extendedFields.<name>, customFields.<name>; an empty cell is left out; UTF-8, optional "
                         "BOM, CRLF or LF, RFC 4180 quoting. An unknown column: 400 unknown_column naming it"}},
        }},
        "responses": {"202": {"description": "accepted; Location names the job", **job},
                      "200": {"description": "finished within wait=",
                              "content": {"application/json": {"schema": "SyncResponse"}}},
                      **_errors(400, 401, 409, 413, 415, 503)},
    }})
    spec.path(path=f"{JOBS}/jobs/{{jobId}}/run", operations={"post": {
        "summary": "Apply a finished dry run: the real job from its stored inputs, no upload again",
        "security": [{"bearer": []}], "parameters": [JOB_ID],
        "responses": {"202": {"description": "the real job, started; Location names it", **job},
                      "200": {"description": "run before: the job that run started", **job},
                      **_errors(400, 401, 404, 409, 429, 503)},
    }})
    spec.path(path=f"{JOBS}/jobs", operations={"get": {
        "summary": "The caller's recent jobs", "security": [{"bearer": []}],
        "parameters": [_query("state", {"type": "string", "enum": STATES}, "only jobs in this state"),
                       _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "at most this many"),
                       _query("offset", {"type": "integer", "minimum": 0, "maximum": 10000},
                              "skip this many (of the state, if given): the next page")],
        "responses": {"200": {"description": "jobs, newest first",
                              "content": {"application/json": {"schema": "JobList"}}}, **_errors(400, 401)},
    }})
    spec.path(path=f"{JOBS}/tenant", operations={"get": {
        "summary": "The caller's tenant: its quotas, with use and limit", "security": [{"bearer": []}],
        "responses": {"200": {"description": "the tenant", "content": {"application/json": {"schema": "TenantView"}}},
                      **_errors(400, 401)},
    }})
    spec.path(path=f"{JOBS}/jobs/{{jobId}}", operations={
        "get": {"summary": "The job document", "security": [{"bearer": []}], "parameters": [JOB_ID],
                "responses": {"200": {"description": "the job", **job}, **_errors(400, 401, 404, 503)}},
        "delete": {"summary": "Cancel: items not yet started end CANCELLED", "security": [{"bearer": []}],
                   "parameters": [JOB_ID],
                   "responses": {"200": {"description": "the job after the cancel", **job},
                                 **_errors(400, 401, 404)}},
    })
    spec.path(path=f"{JOBS}/jobs/{{jobId}}/results", operations={"get": {
        "summary": "Per-customer results in input order", "security": [{"bearer": []}],
        "parameters": [JOB_ID,
                       _query("offset", {"type": "integer", "minimum": 0}, "first index"),
                       _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size"),
                       _query("outcome", {"type": "string", "enum": ["all", "failed", "succeeded"]}, "filter"),
                       _query("format", {"type": "string", "enum": ["json", "ndjson"]}, "ndjson: every item")],
        "responses": {"200": {"description": "a page, or every item as NDJSON", "content": {
            "application/json": {"schema": "ResultsPage"}, "application/x-ndjson": {"schema": {"type": "string"}}}},
            **_errors(400, 401, 404)},
    }})
    plain = {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}}
    plain = {**plain, **_errors(400)}
    spec.path(path="/healthz", operations={"get": {"summary": "The process is up", "responses": plain}})
    spec.path(path="/readyz", operations={"get": {
        "summary": "Redis is reachable",
        "description": "``store`` reports Redis's version, memory in use and maxmemory, whether the append-only "
                       "file is on, its replicas, and ``warnings`` (reason and message) for what is unsafe for "
                       "accepted jobs: an eviction policy, no persistence, no maxmemory, a version older than 6.2.",
        "responses": {**plain, "503": {"description": "not ready",
                                       "content": {"application/json": {"schema": "ErrorBody"}}}}}})
    spec.path(path="/metrics", operations={"get": {
        "summary": "Prometheus metrics of the whole fleet",
        "description": "What every worker process did, read from Redis at each scrape: items by tenant and "
                       "outcome, downstream calls by endpoint and status with their durations, retries by reason, "
                       "rate-limit waits and 429s, jobs finished; and gauges: unfinished jobs by state, items "
                       "pending and in flight, live workers and their slots. Workers add their counts every 2 s. "
                       "Beside them, the answering web process's own process_* and python_info.",
        "responses": {
            "200": {"description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}},
            "503": {"description": "Redis is not reachable", "content": {"application/json": {"schema": "ErrorBody"}}},
            **_errors(400),
        }}})
    return spec.to_dict()

