"""The intake: what a client sees for good and bad requests, and what it costs Redis."""

from __future__ import annotations

import json
import tracemalloc

import pytest
import redis

from api.app import create_app
from tests.helpers import (
    JOBS,
    TOKEN,
    ApiClient,
    RedisServer,
    make_settings,
    ndjson_file,
    post_ndjson,
    stored_job_ids,
)
from worker.store import keys, packing


@pytest.fixture
def idle_app(tmp_path, simulator):
    """An app on a Redis of its own with no worker, so the job stays as intake left it."""
    server = RedisServer(tmp_path).start()
    app = create_app(make_settings(server.url, simulator.url))
    yield app, redis.Redis.from_url(server.url)
    server.stop()


def element(i: int) -> dict:
    return {"profiles": [{"identifiers": [{"type": "externalId", "value": f"E{i}"}], "source": "INSTORE"}]}


def test_a_ten_thousand_item_job_is_queued_in_a_few_redis_round_trips(idle_app):
    app, r = idle_app
    api = ApiClient(app)
    before = int(r.info("stats")["total_commands_processed"])

    response = api.submit([element(i) for i in range(10_000)])

    commands = int(r.info("stats")["total_commands_processed"]) - before
    assert response.status_code == 202
    job = response.get_json()
    assert (job["state"], job["totalCount"], job["processedCount"]) == ("QUEUED", 10_000, 0)
    assert response.headers["Location"].endswith(f"/jobs/{job['jobId']}")
    # Inputs go in chunks of 1,000 (one HSET and one EXPIRE each, plus the job's meta and a PERSIST at
    # the commit; the chain planner's HMGET and HSET of the chunk's identifiers), then the job and its place
    # in the scheduler, the admission's reads, and the reads that answer: far from one command per item.
    print(f"commands for 10,000 items: {commands}")
    assert commands < 100, commands
    # The intake publishes nothing: the workers' dispatcher takes the job's items a window at a time.
    assert r.llen("jobs") == 0 and r.llen("items") == 0
    assert r.zscore("cu:sched:jobs", job["jobId"]) is not None


def post_file(app, path):
    return post_ndjson(app, path, TOKEN, **{"Idempotency-Key": "k"})


def test_an_ndjson_file_is_stored_as_it_is_read_not_held_in_memory(idle_app, tmp_path):
    app, r = idle_app
    path = ndjson_file(tmp_path / "big.ndjson", 10_000)
    size = path.stat().st_size

    tracemalloc.start()
    try:
        response = post_file(app, path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert response.status_code == 202 and response.get_json()["totalCount"] == 10_000
    # Parsed whole, these 3.5 MB take about 30 MB of Python objects (the JSON array's path); streamed,
    # one chunk of 1,000 lines and a 16-byte digest per identifier are all the intake holds.
    print(f"NDJSON intake peak: {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file")
    assert peak < 1.5 * size, (peak, size)
    # Stored packed, a block of items to a field (worker/store/packing.py), and read back whole.
    job_id, fields = response.get_json()["jobId"], packing.input_fields([9999])
    values = [v.decode() if v is not None else None for v in r.hmget(keys.inputs(job_id, 9999), fields)]
    stored, _memo, _successor = packing.read_inputs([9999], values)[9999]
    assert json.loads(stored)["profiles"][0]["identifiers"][0]["value"] == "X-9999"


def test_a_bad_line_late_in_an_ndjson_file_leaves_nothing_behind(idle_app, tmp_path):
    app, r = idle_app

    response = post_file(app, ndjson_file(tmp_path / "bad.ndjson", 3_000, bad_line=2_501))

    assert response.status_code == 400 and response.get_json()["errors"][0]["field"] == "line 2501"
    assert not stored_job_ids(r) and r.llen("jobs") == 0  # the 2,500 lines stored before it are gone
    assert not r.keys("cu:idem:*")  # and the Idempotency-Key is free for the corrected file


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"", 400, "empty"),
        (b"{not json", 400, "not valid JSON"),
        (b'{"profiles": []}', 400, "JSON array"),
        (b"[]", 400, "empty"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "nests"),
    ],
)
def test_a_malformed_body_is_a_400_naming_the_problem_and_queues_nothing(idle_app, body, status, message):
    app, r = idle_app
    client = app.test_client()

    response = client.post(f"{JOBS}/bulk", data=body, content_type="application/json",
                           headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == status
    error = response.get_json()["errors"][0]
    assert message in error["message"] and error["field"] == "body"
    assert r.llen("jobs") == 0


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}])
def test_requests_without_the_token_get_401(app, headers):
    response = app.test_client().get(f"{JOBS}/jobs", headers=headers)

    assert response.status_code == 401
    assert response.get_json()["errors"][0]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("query", "field"),
    [({"skipChangeIdentifier": "maybe"}, "skipChangeIdentifier"), ({"wait": "61"}, "wait"), ({"wait": "x"}, "wait"),
     ({"label": "x" * 201}, "label"), ({"label": "two\nlines"}, "label")],
)
def test_bad_query_parameters_name_the_parameter(app, query, field):
    response = ApiClient(app).submit([element(1)], **query)

    assert response.status_code == 400
    assert response.get_json()["errors"][0]["field"] == field


def test_a_label_given_at_submit_names_the_job_in_its_document_and_the_list_which_pages(idle_app):
    app, _store = idle_app
    api = ApiClient(app)
    named = api.submit([element(1)], label="customers <march>.ndjson").get_json()
    unnamed = [api.submit([element(i)]).get_json()["jobId"] for i in range(24)]
    longest = api.submit([element(2)], label="é" * 200)

    first = api.get("/jobs", limit=20).get_json()["jobs"]
    second = api.get("/jobs", limit=20, offset=20).get_json()["jobs"]

    assert named["label"] == "customers <march>.ndjson"
    assert api.get(f"/jobs/{named['jobId']}").get_json()["label"] == "customers <march>.ndjson"
    assert longest.status_code == 202 and longest.get_json()["label"] == "é" * 200
    listed = [job["jobId"] for job in first + second]
    assert listed == [longest.get_json()["jobId"], *reversed(unnamed), named["jobId"]]  # newest first, none twice
    assert [job["label"] for job in second][-1] == "customers <march>.ndjson" and first[1]["label"] is None
    assert api.get("/jobs", offset=-1).status_code == 400


def test_the_tenant_route_shows_each_quota_with_use_and_limit(idle_app):
    app, _store = idle_app
    api = ApiClient(app)
    for size in (1, 3):
        assert api.submit([element(i) for i in range(size)]).status_code == 202  # no worker: they stay pending

    tenant = api.get("/tenant").get_json()
    anonymous = app.test_client().get(f"{JOBS}/tenant")

    assert tenant["tenant"] == "default"
    assert [(q["quota"], q["used"], q["limit"]) for q in tenant["quotas"]] == [
        ("max_concurrent_jobs", 2, 50), ("max_pending_items", 4, 1_000_000), ("max_items_per_day", 4, 20_000_000)]
    assert anonymous.status_code == 401


def test_the_root_leads_to_the_dashboard_and_every_answer_forbids_sniffing_and_loading(app):
    api = ApiClient(app)
    client = app.test_client()
    root = client.get("/")
    answers = {"jobs": api.get("/jobs"), "401": client.get(f"{JOBS}/jobs"), "404": client.get("/nowhere"),
               "400": api.get("/jobs", limit="x"), "metrics": client.get("/metrics"),
               "openapi": client.get("/openapi.json"), "readyz": client.get("/readyz")}
    pages = {"ui": client.get("/ui/"), "docs": client.get("/docs")}

    assert root.status_code == 302 and root.headers["Location"] in ("ui/", "http://localhost/ui/")
    assert client.get("/", follow_redirects=True).status_code == 200
    for name, response in answers.items():
        assert response.headers["X-Content-Type-Options"] == "nosniff", name
        assert response.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'", name
    for name, response in pages.items():  # the pages keep their own policy, which lets them run their scripts
        assert response.headers["X-Content-Type-Options"] == "nosniff", name
        assert "script-src 'self'" in response.headers["Content-Security-Policy"], name
@pytest.mark.parametrize(("query", "hint"), [({"dryrun": "true"}, "dryRun"),
                                             ({"skipchangeidentifier": "true"}, "skipChangeIdentifier"),
                                             ({"skipChangeIdentifier": "true", "callback": "x"}, None)])
def test_an_unknown_query_parameter_is_a_400_naming_it_and_queues_nothing(idle_app, query, hint):
    app, r = idle_app
    unknown = next(name for name in query if name not in ("skipChangeIdentifier",))

    response = ApiClient(app).submit([element(1)], **query)

    assert response.status_code == 400
    error = response.get_json()["errors"][0]
    assert (error["code"], error["field"]) == ("unknown_parameter", unknown)
    assert repr(unknown) in error["message"]
    if hint:
        assert f"did you mean {hint!r}" in error["message"]
    assert not stored_job_ids(r) and not r.zcard("cu:sched:jobs")


@pytest.mark.parametrize(("path", "query"), [("/jobs", {"limit": "5", "stat": "QUEUED"}),
                                             ("/jobs/" + "0" * 32, {"verbose": "1"}),
                                             ("/jobs/" + "0" * 32 + "/results", {"outcomes": "failed"})])
def test_every_route_refuses_an_unknown_query_parameter(app, path, query):
    response = ApiClient(app).get(path, **query)

    assert response.status_code == 400
    assert response.get_json()["errors"][0]["code"] == "unknown_parameter"
    for route in ("/healthz", "/readyz", "/openapi.json", "/ui/", "/metrics"):
        assert app.test_client().get(route + "?x=1").status_code == 400, route
        assert app.test_client().get(route).status_code == 200, route


def test_unknown_or_malformed_job_ids_are_404(app):
    api = ApiClient(app)

    for job_id in ("0" * 32, "../../etc/passwd", "%2e%2e", "x" * 500):
        response = api.get(f"/jobs/{job_id}")
        assert response.status_code == 404, job_id
        assert response.get_json()["errors"][0]["code"] in ("job_not_found", "not_found")


def test_health_and_readiness(app):
    client = app.test_client()

    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz").get_json()
    assert ready["status"] == "ready" and ready["store"]["version"]
    # The suite's Redis keeps nothing on disk and has no maxmemory: it is told so.
    assert {w["reason"] for w in ready["store"]["warnings"]} == {"no_persistence", "no_maxmemory"}
    assert client.get("/metrics").status_code == 200


def test_bodies_and_batches_over_the_limits_are_413_and_queue_nothing(tmp_path, simulator):
    server = RedisServer(tmp_path).start()
    try:
        app = create_app(make_settings(server.url, simulator.url, max_body_bytes=2_000, max_items_per_job=5))
        api = ApiClient(app)
        r = redis.Redis.from_url(server.url)

        too_big = api.submit([element(i) for i in range(40)])  # about 3 KB
        too_many = api.submit([element(i) for i in range(6)])
        ndjson = app.test_client().post(
            f"{JOBS}/bulk", data=b"\n".join(b'{"profiles":[]}' for _ in range(6)),
            content_type="application/x-ndjson", headers={"Authorization": f"Bearer {TOKEN}"},
        )

        assert too_big.status_code == 413 and "MAX_BODY_BYTES" in too_big.get_json()["errors"][0]["message"]
        assert too_many.status_code == 413 and "at most 5" in too_many.get_json()["errors"][0]["message"]
        assert ndjson.status_code == 413
        assert r.llen("jobs") == 0 and not stored_job_ids(r)
    finally:
        server.stop()
